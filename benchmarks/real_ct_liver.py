"""Liver Dice of the CT-only models on the real CT scans in ../shared/data/real.

    python benchmarks/real_ct_liver.py -o work/real_ct [--models dual-stream,tam-unet] [--data DIR]

The demo weights never saw a real scan, so this is the plainest check of how far phantom
training carries:
  * CHAOS CT (contrast CT, 512 x 512 x 78, liver to kidneys): scored against its manual liver
    mask (CC BY-SA 4.0);
  * the TotalSegmentator example CT (3 mm, chest base to pelvis): its `example_seg.nii.gz` covers
    only the 30 lowest slices and puts "liver" in the pelvis, so it does not belong to this scan
    and is not used; the predicted liver's volume and head-foot extent are reported instead (an
    adult liver spans about 15-25 cm).
Neither has lesion labels, so only the liver (label >= 1 of `segment`'s map) is measured. Each scan
goes through `run_segment`, the function behind `livertumorai segment`. All figures are measured
by this run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
#: (name, CT path, liver reference path or None, label value of the liver in the reference)
SCANS = [
    ("chaos_ct", "chaos/ct/ct.nii.gz", "chaos/ct/liver_mask.nii.gz", 1),
    ("totalsegmentator_ct", "totalsegmentator/example_ct.nii.gz", None, 0),
]


def reference_on_ct_grid(reference: sitk.Image, ct: sitk.Image, liver_value: int) -> np.ndarray:
    """The reference's liver on the CT grid (nearest neighbour, in physical space)."""
    from LiverTumorAILib.geometry import resample_like

    liver = sitk.Cast(reference == liver_value, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resample_like(liver, ct, label=True)) > 0


def head_foot_extent_mm(mask: np.ndarray, ct: sitk.Image) -> float:
    """Head-foot (LPS z) extent of `mask`'s voxel centres, in mm, for any direction matrix."""
    z, y, x = np.nonzero(mask)
    if not len(z):
        return 0.0
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    index = np.stack([x, y, z], axis=1) * np.asarray(ct.GetSpacing())
    lps_z = index @ direction[2]
    return float(lps_z.max() - lps_z.min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--models", default="dual-stream,tam-unet")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args(argv)

    from LiverTumorAILib.evaluation import binary_metrics
    from LiverTumorAILib.pipeline import run_segment

    summary: dict = {"data": str(args.data), "scans": {}}
    for name, ct_rel, ref_rel, liver_value in SCANS:
        ct_path, ref_path = args.data / ct_rel, (args.data / ref_rel if ref_rel else None)
        if not ct_path.exists() or (ref_path is not None and not ref_path.exists()):
            print(f"{name}: not found under {args.data}; skipped", flush=True)
            continue
        ct = sitk.ReadImage(str(ct_path))
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
        reference = reference_on_ct_grid(sitk.ReadImage(str(ref_path)), ct, liver_value) if ref_path else None
        entry: dict = {"reference": ref_rel, "models": {}}
        if reference is not None:
            entry["liver_ml_reference"] = round(float(reference.sum()) * voxel_ml, 1)
            entry["liver_head_foot_mm_reference"] = round(head_foot_extent_mm(reference, ct), 1)
        for model in [m for m in args.models.split(",") if m]:
            out = args.output / name / model
            t0 = time.perf_counter()
            if not (out / "segmentation.nii.gz").exists():
                run_segment(ct_path, out, model=model, device=args.device, weights_dir=args.weights)
            liver = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nii.gz"))) >= 1
            result = {"liver_ml": round(float(liver.sum()) * voxel_ml, 1),
                      "liver_head_foot_mm": round(head_foot_extent_mm(liver, ct), 1)}
            if reference is not None:
                result.update({
                    "liver_dice": round(binary_metrics(liver, reference, distances=False)["dice"], 4),
                    "outside_reference_ml": round(float((liver & ~reference).sum()) * voxel_ml, 1),
                    "reference_missed_ml": round(float((reference & ~liver).sum()) * voxel_ml, 1),
                })
            result["seconds"] = round(time.perf_counter() - t0, 1)
            entry["models"][model] = result
            print(name, model, json.dumps(entry["models"][model]), flush=True)
        summary["scans"][name] = entry
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
