"""Tune a segmentation model's lesion filters (confidence, thickness) on validation cases; store them in its manifest.

    python -m training.tune_postprocess dual-stream --cache work_tmp/demo_cache [--weights DIR] [--write]

Why: after the argmax a 2.5D model leaves small, uncertain tumour blobs in vessels and at the
liver edge (1.4-2.1 false positives per held-out phantom with the demo weights). A tumour
component whose *peak* tumour probability stays below ``min_tumour_peak`` is returned to liver by
the engine (``postprocess.drop_uncertain_lesions``). Peak, not mean: a real lesion has a confident
core even when its rim is uncertain, and the peak does not depend on the component's size.

The same run tunes ``min_lesion_thickness_mm`` (``postprocess.drop_thin_lesions``): a slice-wise
network also leaves *confident* blobs on a single slice (on the validation phantoms: half of
tam-unet's false positives, a third of the fusion model's), which no peak threshold removes.

Rule: among the (threshold, thickness) pairs on a grid (0.50-0.99; 0, 3, 4, 6 mm) that keep every
validation lesion >= 10 mm the model finds with both filters off (the detection target is about
lesions >= 10 mm), take the one with the *lowest* threshold, then the lowest thickness, whose
false positives per case are within ``FP_TOLERANCE`` (0.2) of the best of them. Why not
simply the highest loss-free value: the validation set is small, and the edge of what it
tolerates overfits - with 0.99 the fusion model lost two 10-12 mm metastases of the demo case
that 0.90 keeps, for 0.2 more false positives per validation case. A missed cancer costs more
than a blob the reader deletes. The cases are the make_demo_weights cache (``seg/val/*.npz``, on the
model grid; validation seeds, never the held-out benchmark cases). The chosen value, the grid and
the counts are written to ``manifest["postprocess"]`` with ``--write`` (the weights file and its
sha256 are untouched).

With ``--after-hu-checks`` the components are counted after the engine's other lesion checks
(postprocess.py with the CT's HU: lesions in another tissue, without contrast, vessel-shaped), as
``segment`` runs by default, so the filters only have to remove what those checks leave. Not the
default, because measured: for tam-unet demo-0.4 it lifted the peak filter (0.85 -> 0), which
found one more lesion on each held-out set of 16 but doubled the false positives on the
project's (0.31 -> 0.62 per case) and left three more false lesions on the real CHAOS CT; for
dual-stream demo-0.4 it chose about what the default does (0.8 against 0.85). The validation
cache's MRI is z-scored, not the signal the contrast check reads, so that check sees the CT alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
THICKNESSES_MM = (0.0, 3.0, 4.0, 6.0)
MIN_DIAMETER_MM = 10.0
FP_TOLERANCE = 0.2


@dataclass
class CaseComponents:
    """Predicted tumour components (peak probability, overlapped truth ids, thickness in mm) and truth
    lesions of one case."""

    case: str
    predicted: list[tuple[float, set[int], float]] = field(default_factory=list)
    truth_diameters: dict[int, float] = field(default_factory=dict)


def case_components(case: str, label: np.ndarray, tumour_prob: np.ndarray, truth: np.ndarray,
                    spacing_zyx: Sequence[float]) -> CaseComponents:
    """Components of a cleaned label map (2 = tumour) against a truth label map (2 = tumour)."""
    from LiverTumorAILib.evaluation import equivalent_diameter_mm, lesion_instances
    from LiverTumorAILib.postprocess import component_peaks, component_thickness_mm

    out = CaseComponents(case)
    truth_ids = lesion_instances(truth == 2)
    for k, size in enumerate(np.bincount(truth_ids.ravel())[1:], start=1):
        out.truth_diameters[k] = equivalent_diameter_mm(size, spacing_zyx)
    comps = lesion_instances(label == 2)  # 26-connected, as the engine's filter
    peaks = component_peaks(comps, int(comps.max()), tumour_prob)
    thickness = component_thickness_mm(comps, spacing_zyx)
    for k, (peak, mm) in enumerate(zip(peaks, thickness), start=1):
        hit = truth_ids[comps == k]
        out.predicted.append((float(peak), {int(t) for t in np.unique(hit[hit > 0])}, float(mm)))
    return out


def score(cases: Iterable[CaseComponents], threshold: float, min_thickness_mm: float = 0.0) -> dict:
    """Lesions >= 10 mm found, all lesions found and false-positive components with both filters."""
    found_big = found_all = false_pos = n_big = 0
    cases = list(cases)
    for c in cases:
        kept = [hits for peak, hits, mm in c.predicted if peak >= threshold and mm >= min_thickness_mm]
        false_pos += sum(1 for hits in kept if not hits)
        found = set().union(*kept) if kept else set()
        found_all += len(found)
        big = {k for k, d in c.truth_diameters.items() if d >= MIN_DIAMETER_MM}
        n_big += len(big)
        found_big += len(found & big)
    n = max(len(cases), 1)
    return {"threshold": threshold, "min_thickness_mm": min_thickness_mm, "found_ge_10mm": found_big,
            "lesions_ge_10mm": n_big, "found_all": found_all, "false_positives": false_pos,
            "fp_per_case": round(false_pos / n, 3)}


def choose_filters(cases: Sequence[CaseComponents], grid: Sequence[float] = THRESHOLDS,
                   thicknesses: Sequence[float] = THICKNESSES_MM,
                   fp_tolerance: float = FP_TOLERANCE) -> tuple[float, float, list[dict]]:
    """(threshold, thickness, table): the loss-free pair with the lowest threshold, then thickness,
    within `fp_tolerance` FP/case of the best loss-free pair ((0, 0) when none is loss-free)."""
    table = [score(cases, t, mm) for mm in sorted({0.0, *thicknesses}) for t in (0.0, *grid)]
    base = table[0]  # both filters off
    ok = [row for row in table if row["found_ge_10mm"] >= base["found_ge_10mm"]]
    best = min(row["fp_per_case"] for row in ok)
    chosen = min((row for row in ok if row["fp_per_case"] <= best + fp_tolerance + 1e-9),
                 key=lambda row: (row["threshold"], row["min_thickness_mm"]))
    return chosen["threshold"], chosen["min_thickness_mm"], table


def checked_components(case: str, probabilities: np.ndarray, ct_hu: np.ndarray, truth: np.ndarray,
                       spacing_zyx: Sequence[float], hu_checks: bool = False) -> CaseComponents:
    """The components of one case's (3, z, y, x) `probabilities` as the engine leaves them with both
    tuned filters off: argmax, clean-up, and the HU checks on `ct_hu` when `hu_checks` is True."""
    from LiverTumorAILib.postprocess import PostprocessConfig, clean_label_map

    label = clean_label_map(np.argmax(probabilities, axis=0).astype(np.uint8), spacing_zyx, PostprocessConfig(),
                            ct_hu=ct_hu.astype(np.float32) if hu_checks else None)
    return case_components(case, label, probabilities[2], truth, spacing_zyx)


def components_from_cache(model_name: str, cache: Path, weights_dir: Path | None,
                          hu_checks: bool = False) -> tuple[list[CaseComponents], dict]:
    """Run the model over the cached validation cases (model grid) and collect their components,
    after the engine's HU checks when `hu_checks` is True."""
    import torch

    from LiverTumorAILib.inference.engine import load_model
    from LiverTumorAILib.inference.slab import predict_volume
    from LiverTumorAILib.preprocess import DEFAULT_SPACING_MM, DEFAULT_WINDOW_HU, normalize_ct
    from training.seg_trainer import load_prepared

    loaded = load_model(model_name, weights_dir, torch.device("cpu"))
    config = loaded.manifest.get("config", {})
    prep = loaded.manifest.get("preprocessing", {})
    spacing_zyx = tuple(reversed([float(s) for s in prep.get("spacing_mm", DEFAULT_SPACING_MM)]))
    mri_offsets = list(config.get("mri_offsets", []) or [])
    prepared = load_prepared(cache / "seg" / "val")
    if not prepared:
        raise SystemExit(f"no validation cases in {cache / 'seg' / 'val'}; run make_demo_weights prepare first")
    cases = []
    for case in prepared:
        ct = normalize_ct(case.ct_hu.astype(np.float32), prep.get("window_hu", DEFAULT_WINDOW_HU))
        mri = case.mri.astype(np.float32) if mri_offsets and case.mri is not None else None
        pred = predict_volume(loaded.model, ct, ct_offsets=config.get("ct_offsets", [0]), mri=mri,
                              mri_offsets=mri_offsets, keep_attention=False)
        cases.append(checked_components(case.case_id, pred.probabilities, case.ct_hu, case.label, spacing_zyx,
                                        hu_checks))
        print(f"{case.case_id}: {len(cases[-1].predicted)} tumour components", flush=True)
    return cases, loaded.manifest


def write_filters(weights_folder: Path, threshold: float, thickness_mm: float, table: list[dict], n_cases: int,
                  hu_checks: bool = False) -> None:
    """Record both filters in the model's manifest (atomically); the weights file is not touched."""
    from LiverTumorAILib.io.atomic import write_text_atomic

    path = weights_folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["postprocess"] = {
        "min_tumour_peak": threshold,
        "min_lesion_thickness_mm": thickness_mm,
        "tuned_on": f"{n_cases} validation phantoms (make_demo_weights cache, validation seeds)",
        "counted_after": "the HU checks (CT alone)" if hu_checks else "the network's drawing (HU checks off)",
        "rule": ("lowest threshold, then thickness, keeping every validation lesion >= 10 mm found with both "
                 f"filters off and within {FP_TOLERANCE} FP/case of the best such pair"),
        "table": table,
    }
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--cache", type=Path, default=Path("work_tmp/demo_cache"))
    parser.add_argument("--weights", type=Path, default=None, help="weights root (default: the bundled Resources/Models)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="store the chosen threshold in the model's manifest")
    parser.add_argument("--after-hu-checks", action="store_true",
                        help="count the components after the engine's HU checks (default: as the network drew them)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cases, _ = components_from_cache(args.model, args.cache, args.weights, hu_checks=args.after_hu_checks)
    threshold, thickness, table = choose_filters(cases)
    for row in table:
        print(json.dumps(row))
    print(f"{args.model}: min_tumour_peak = {threshold}, min_lesion_thickness_mm = {thickness}")
    if args.write:
        from LiverTumorAILib.weights import find_weights

        write_filters(find_weights(args.model, args.weights), threshold, thickness, table, len(cases),
                      hu_checks=args.after_hu_checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
