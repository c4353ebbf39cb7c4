"""An MRI that covers only half of the liver: how `segment` fares (inference/mri_coverage.py).

Takes phantom case folders (ct, mri, label, lesions, truth.json; e.g. the independent phantoms
`heldout_eval.py --generator independent` makes), cuts each MRI to the slices over the upper
(or lower) half of the liver in the MRI's own slice index, runs `segment`, and scores the result:

    python benchmarks/partial_mri.py GT_DIR -o OUT --cases 2,5,8,12,14,15 [--half lower]
        [--model fusion] [--no-fallback]

`--no-fallback` names a CT-only model that does not exist, so the fusion model segments outside
the MRI too (what `segment` did before the fallback). Not in CI: about 10 s a case on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def cut_mri(source: Path, target: Path, half: str) -> tuple[int, int]:
    """Write the MRI of `source` cut to the slices over one half of the liver into `target`."""
    label = sitk.ReadImage(str(source / "label.nii.gz"))
    mri = sitk.ReadImage(str(source / "mri.nii.gz"))
    liver = np.argwhere(sitk.GetArrayFromImage(label) > 0)[::50]
    ks = [mri.TransformPhysicalPointToContinuousIndex(label.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]))[2]
          for p in liver]
    middle = int(0.5 * (min(ks) + max(ks)))
    start, stop = (max(middle, 0), mri.GetSize()[2]) if half == "upper" else (0, min(middle + 1, mri.GetSize()[2]))
    sitk.WriteImage(mri[:, :, start:stop], str(target / "mri.nii.gz"))
    return start, stop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gt", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--cases", default="2,5,8,12,14,15")
    parser.add_argument("--half", choices=["upper", "lower"], default="upper")
    parser.add_argument("--model", default="fusion")
    parser.add_argument("--no-fallback", action="store_true")
    args = parser.parse_args(argv)

    import LiverTumorAILib.inference.mri_coverage as coverage
    from LiverTumorAILib.evaluation import evaluate_dirs
    from LiverTumorAILib.pipeline import run_segment

    if args.no_fallback:
        coverage.CT_FALLBACK_MODEL = "no-such-model"
    gt_root = args.output / "gt"
    for name in (f"case_{int(c):03d}" for c in args.cases.split(",")):
        case = gt_root / name
        case.mkdir(parents=True, exist_ok=True)
        for f in ("ct.nii.gz", "label.nii.gz", "lesions.nii.gz", "truth.json"):
            if not (case / f).exists():
                os.symlink((args.gt / name / f).resolve(), case / f)
        if not (case / "mri.nii.gz").exists():
            print(name, "MRI slices kept", cut_mri(args.gt / name, case, args.half), flush=True)
        out = args.output / args.model / name
        if not (out / "report.json").exists():
            run_segment(case / "ct.nii.gz", out, mri_path=case / "mri.nii.gz", model=args.model)
    evaluation = evaluate_dirs(args.output / args.model, gt_root)
    rows = []
    for c in evaluation["cases"]:
        report = json.loads((args.output / args.model / c["case"] / "report.json").read_text())
        rows.append({"case": c["case"], "liver_dice": round(c["segmentation"]["liver"]["dice"], 3),
                     "tumour_dice": round(c["segmentation"]["tumour"]["dice"], 3),
                     "lesions_found": sum(m["detected"] for m in c["lesions"]), "lesions": len(c["lesions"]),
                     "false_positives": c["detection"]["false_positives"], "mri_coverage": report.get("mri_coverage")})
        print(json.dumps(rows[-1]))
    summary = {"half": args.half, "model": args.model, "fallback": not args.no_fallback, "cases": rows,
               "classification": evaluation["summary"]["lesion_classification"]}
    (args.output / f"summary_{args.model}.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
