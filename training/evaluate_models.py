"""Evaluate saved weights on held-out cases and write the HTML report (plots + paired tests).

    python -m training.evaluate_models --data SRC --weights W1 [W2 ...] --out REPORT_DIR
        [--baseline NAME] [--split-seed S] [--all-cases]

Segmentation weights are run on each test case on its model grid (the grid the trainer
prepared, through the cache), and scored with `LiverTumorAILib.evaluation`: per-class
Dice/IoU/precision/recall/VOE/RVD/HD95/ASSD (mm), lesion detection, small vs large.
Every model is compared with the baseline (default: the first weights given, e.g. the
2D U-Net) by paired t-test and Wilcoxon on per-case tumour Dice (paper 001: paired t-tests
on the hold-out set, p < 0.05). Classification weights are scored per lesion (ROC, PR,
confusion matrix, ECE).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from LiverTumorAILib import evaluation as E


def predict_prepared(model: Any, manifest: Mapping[str, Any], case: Any, device: str = "cpu") -> np.ndarray:
    """Label map (z, y, x) of one prepared case (seg_trainer.PreparedCase) with a 2.5D model."""
    import torch

    from LiverTumorAILib.inference.slab import predict_volume
    from LiverTumorAILib.preprocess import DEFAULT_WINDOW_HU, normalize_ct

    cfg = manifest.get("config", {})
    window = manifest.get("preprocessing", {}).get("window_hu", DEFAULT_WINDOW_HU)
    ct = normalize_ct(case.ct_hu.astype(np.float32), window)
    mri_off = cfg.get("mri_offsets", []) if case.mri is not None else []
    pred = predict_volume(model, ct, ct_offsets=cfg["ct_offsets"],
                          mri=None if not mri_off else case.mri.astype(np.float32), mri_offsets=mri_off,
                          device=torch.device(device), keep_attention=False, batch_size=8)
    return np.argmax(pred.probabilities, axis=0).astype(np.uint8)


def segmentation_case_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, Any]:
    seg = E.segmentation_metrics(pred, truth, spacing_zyx)
    matches, fps = E.match_lesions(E.lesion_instances(pred == 2), E.lesion_instances(truth == 2), spacing_zyx)
    return {"segmentation": seg, "detection": E.detection_metrics(matches, fps)}


def evaluate_segmentation(weights: Mapping[str, Path], cases: Any, *, device: str = "cpu",
                          log: Callable[[str], None] = print) -> Dict[str, List[Dict[str, Any]]]:
    """{model name: [per-case metrics]}.

    CASES: prepared cases (seg_trainer.PreparedCase) on the models' grid, or a callable
    spacing_mm -> prepared cases, so models trained at different spacings are each run
    on their own grid (the cache makes the second preparation cheap).
    """
    from LiverTumorAILib.weights import load_weights

    out: Dict[str, List[Dict[str, Any]]] = {}
    for name, folder in weights.items():
        model, manifest = load_weights(folder, device=device)
        model.eval()
        spacing = manifest.get("preprocessing", {}).get("spacing_mm", [1.0, 1.0, 2.5])
        sx, sy, sz = spacing
        rows = []
        for case in (cases(spacing) if callable(cases) else cases):
            pred = predict_prepared(model, manifest, case, device)
            rows.append({"case": case.case_id, **segmentation_case_metrics(pred, case.label, (sz, sy, sx))})
            log(f"{name} {case.case_id}: tumour Dice {rows[-1]['segmentation']['tumour']['dice']:.3f}")
        out[name] = rows
    return out


def _col(rows: Sequence[Mapping[str, Any]], cls: str, metric: str) -> List[float]:
    return [r["segmentation"][cls][metric] for r in rows]


def summarize_segmentation(results: Mapping[str, Sequence[Mapping[str, Any]]], baseline: Optional[str] = None
                           ) -> Dict[str, Any]:
    """Mean/std per model and metric; paired tests of every model vs the baseline (tumour & liver Dice)."""
    summary: Dict[str, Any] = {}
    for name, rows in results.items():
        s: Dict[str, Any] = {}
        for cls in E.CLASSES:
            for m in ("dice", "iou", "precision", "recall", "voe", "rvd", "hd95", "assd"):
                s[f"{cls}_{m}"] = E.summarize(_col(rows, cls, m))
        for m in ("detection_rate", "false_positives", "lesion_dice_small", "lesion_dice_large"):
            s[m] = E.summarize(r["detection"][m] for r in rows)
        summary[name] = s
    tests: Dict[str, Any] = {}
    base = baseline or next(iter(results), None)
    if base in results:
        for name, rows in results.items():
            if name == base:
                continue
            tests[f"{name} vs {base}"] = {
                f"{cls}_dice": E.paired_tests(_col(rows, cls, "dice"), _col(results[base], cls, "dice"))
                for cls in E.CLASSES
            }
    return {"models": summary, "paired_tests": tests, "baseline": base}


def write_segmentation_report(results: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: Path, *,
                              baseline: Optional[str] = None, history: Optional[Sequence[Mapping[str, Any]]] = None,
                              note: Optional[str] = None, title: str = "Segmentation evaluation") -> Path:
    from training import reports

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summ = summarize_segmentation(results, baseline)
    (out_dir / "metrics.json").write_text(json.dumps(E._nan_to_none({"cases": results, **summ}), indent=1))
    sections = []
    if history:
        sections.append({"title": "Training", "images": [reports.plot_loss_curves(history, out_dir / "loss.png")]})
    imgs = [reports.plot_histogram({n: _col(r, "tumour", "dice") for n, r in results.items()},
                                   out_dir / "dice_tumour_hist.png", xlabel="Dice (tumour)"),
            reports.plot_histogram({n: _col(r, "liver", "dice") for n, r in results.items()},
                                   out_dir / "dice_liver_hist.png", xlabel="Dice (liver)")]
    flat = [{"model": n, **{k: v["mean"] for k, v in s.items()}} for n, s in summ["models"].items()]
    sections.append({"title": "Summary (mean over cases)", "tables": [flat], "images": imgs})
    if summ["paired_tests"]:
        rows = [{"comparison": k, "metric": m, **v} for k, d in summ["paired_tests"].items() for m, v in d.items()]
        sections.append({"title": f"Paired tests vs {summ['baseline']} (t-test, Wilcoxon)", "tables": [rows]})
    for name, rows in results.items():
        per_case = [{"case": r["case"], **{f"{c}_{m}": r["segmentation"][c][m] for c in E.CLASSES
                                           for m in ("dice", "hd95", "assd")},
                     "detection_rate": r["detection"]["detection_rate"], "fp": r["detection"]["false_positives"]}
                    for r in rows]
        sections.append({"title": f"Per case: {name}", "tables": [per_case]})
    return reports.write_html_report(out_dir, title, sections, note=note)


def write_classification_report(y_true: Sequence[int], probs: Mapping[str, Sequence[float]], out_dir: Path, *,
                                diameters: Optional[Sequence[float]] = None,
                                history: Optional[Sequence[Mapping[str, Any]]] = None, note: Optional[str] = None,
                                baseline: Optional[str] = None) -> Path:
    """Lesion-level report: metrics table, ROC, PR, confusion matrix; paired test on per-lesion correctness."""
    from training import reports

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true, int)
    metrics = {n: E.classification_metrics(y, p) for n, p in probs.items()}
    if diameters is not None:
        big = np.asarray(diameters, float) >= E.DETECTION_MIN_DIAMETER_MM
        if big.any():
            for n, p in probs.items():
                metrics[f"{n} (>= 10 mm)"] = E.classification_metrics(y[big], np.asarray(p)[big])
    curves = {n: (y, np.asarray(p)) for n, p in probs.items()}
    first = next(iter(probs))
    imgs = [reports.plot_roc(curves, out_dir / "roc.png"), reports.plot_pr(curves, out_dir / "pr.png"),
            reports.plot_confusion(y, (np.asarray(probs[first]) >= 0.5).astype(int), out_dir / "confusion.png")]
    sections = []
    if history:
        hist = [{"epoch": h.get("epoch", i), **{k: v for k, v in h.items() if isinstance(v, (int, float))}}
                for i, h in enumerate(history)]
        sections.append({"title": "Training", "images": [reports.plot_loss_curves(hist, out_dir / "loss.png")]})
    sections.append({"title": "Lesion classification", "tables": [[{"model": n, **m} for n, m in metrics.items()]],
                     "images": imgs})
    tests = {}
    base = baseline or first
    for n, p in probs.items():
        if n != base:
            correct = lambda q: ((np.asarray(q) >= 0.5).astype(int) == y).astype(float)  # noqa: E731
            tests[f"{n} vs {base}"] = E.paired_tests(correct(p), correct(probs[base]))
    if tests:
        sections.append({"title": "Paired tests (per-lesion correctness)", "tables": [tests]})
    (out_dir / "metrics.json").write_text(json.dumps(E._nan_to_none({"metrics": metrics, "paired_tests": tests}),
                                                     indent=1))
    return reports.write_html_report(out_dir, "Classification evaluation", sections, note=note)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from training.cache import prepare_segmentation_cases
    from training.datasets import load_dataset
    from training.splits import train_val_test_split

    ap = argparse.ArgumentParser(description="Evaluate segmentation weights on held-out cases (HTML report).")
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default=None)
    ap.add_argument("--weights", nargs="+", required=True, type=Path, help="weights folders (first = baseline)")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--all-cases", action="store_true", help="evaluate every case, not only the 20%% test split")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from LiverTumorAILib.weights import verify_manifest

    manifests = {Path(w): verify_manifest(w) for w in args.weights}
    names = {}
    for w, m in manifests.items():
        names[m.get("name", w.name) if m.get("name") not in names else f"{m.get('name')}@{w}"] = w
    cases = load_dataset(args.data, fmt=args.format, seed=args.split_seed)
    test = cases if args.all_cases else train_val_test_split(cases, seed=args.split_seed).test
    def prepared(spacing: Sequence[float]) -> List[Any]:
        return prepare_segmentation_cases(test, spacing=spacing, cache_dir=args.cache)

    results = evaluate_segmentation(names, prepared, device=args.device)
    path = write_segmentation_report(results, args.out, baseline=args.baseline)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
