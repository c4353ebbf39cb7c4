"""Segmentation, lesion-detection and classification metrics, and paired statistical tests.

Used by `livertumorai evaluate PRED_DIR GT_DIR` (through `evaluate_dirs`) and by
`training/` (validation, held-out evaluation, ablations). numpy/scipy/SimpleITK only at
import time; MONAI (and therefore torch) is imported inside `surface_distances` because
this module is imported by the CLI, which must stay cheap.

Conventions (documented here once, relied on by the tests):

* Arrays are SimpleITK's numpy order (z, y, x); ``spacing`` is given in the same order,
  in mm (``spacing_zyx(image)`` converts from SimpleITK's (x, y, z)).
* Classes: "liver" is label >= 1 (liver parenchyma *including* tumour, as in LiTS),
  "tumour" is label == 2.
* Empty masks (per class, per case):
  - both empty: perfect agreement -> Dice/IoU/precision/recall/specificity 1, VOE/RVD 0,
    HD95/ASSD 0;
  - exactly one empty: overlap ratios whose denominator is 0 count as a failure (0,
    like scikit-learn's ``zero_division=0``), RVD is NaN when the truth is empty (it is
    relative to the truth volume) and -1 when the prediction is empty; HD95/ASSD are NaN
    (there is no surface to measure to). Summaries use NaN-aware means and report how
    many values entered each mean (``n``), so such cases are visible, never silently 0.
* Surface distances follow MONAI (`get_mask_edges` + `get_surface_distance`, Euclidean,
  with spacing): HD95 = max of the two directed 95th percentiles; ASSD = mean of both
  directed distance sets pooled.
* Lesions: instances are 26-connected components when no instance map is given. A truth
  lesion is *detected* when a predicted lesion overlaps it with Dice >= 0.1 (one-to-one,
  greedy by Dice). Size = equivalent-sphere diameter (6V/pi)^(1/3) in mm. Detection rate
  counts truth lesions >= 10 mm; "small" tumours are < 20 mm, "large" >= 20 mm (paper
  004 splits small vs large without a number; 20 mm is the common clinical cut-off, the
  size below which paper 001 notes lesions are "frequently missed").
* Classification: class 1 = malignant (positive). AUC is the Mann-Whitney estimate (ties
  count 1/2; NaN when only one class is present); ECE is the top-label expected
  calibration error with 10 equal-width bins (Guo et al. 2017).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

# both also imported from here by training/ and the tests
from .geometry import equivalent_diameter_mm, spacing_zyx

DETECTION_MIN_DICE = 0.1
DETECTION_MIN_DIAMETER_MM = 10.0
SMALL_TUMOUR_DIAMETER_MM = 20.0
CLASSES: Dict[str, Tuple[int, ...]] = {"liver": (1, 2), "tumour": (2,)}

Spacing = Sequence[float]


# --------------------------------------------------------------------------- helpers
def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN/inf: turn them into null so reports stay valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating,)):
        return _nan_to_none(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


# ----------------------------------------------------------------- surface distances
def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) pred->truth and truth->pred, via MONAI.

    Both masks must be non-empty (callers handle the empty conventions).
    """
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    edges_pred, edges_gt = get_mask_edges(
        np.asarray(pred, bool), np.asarray(truth, bool), crop=True
    )
    sp = [float(s) for s in spacing]
    d_pg = np.asarray(get_surface_distance(edges_pred, edges_gt, "euclidean", spacing=sp), dtype=float)
    d_gp = np.asarray(get_surface_distance(edges_gt, edges_pred, "euclidean", spacing=sp), dtype=float)
    return d_pg, d_gp


def hd95_assd(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> Tuple[float, float]:
    """(HD95, ASSD) in mm with the empty-mask convention of this module."""
    p_any, t_any = bool(np.any(pred)), bool(np.any(truth))
    if not p_any and not t_any:
        return 0.0, 0.0
    if not (p_any and t_any):
        return math.nan, math.nan
    d_pg, d_gp = surface_distances(pred, truth, spacing)
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    assd = float(np.concatenate([d_pg, d_gp]).mean())
    return hd95, assd


# ------------------------------------------------------------- segmentation metrics
def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), *,
                   distances: bool = True) -> Dict[str, float]:
    """Dice, IoU, precision, recall, specificity, VOE, RVD (+ HD95, ASSD in mm) of two masks."""
    p = np.asarray(pred, bool)
    t = np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs truth {t.shape}")
    tp = float(np.count_nonzero(p & t))
    np_, nt = float(np.count_nonzero(p)), float(np.count_nonzero(t))
    fp, fn = np_ - tp, nt - tp
    tn = float(p.size) - tp - fp - fn
    both_empty = np_ == 0 and nt == 0
    dice = _ratio(2 * tp, np_ + nt, both_empty)
    iou = _ratio(tp, tp + fp + fn, both_empty)
    out = {
        "dice": dice,
        "iou": iou,
        "precision": _ratio(tp, np_, both_empty),
        "recall": _ratio(tp, nt, both_empty),
        "specificity": _ratio(tn, tn + fp, tn + fp == 0),
        "voe": 1.0 - iou,
        "rvd": (np_ - nt) / nt if nt > 0 else (0.0 if both_empty else math.nan),
        "volume_pred_ml": np_ * float(np.prod(spacing)) / 1000.0,
        "volume_truth_ml": nt * float(np.prod(spacing)) / 1000.0,
    }
    if distances:
        out["hd95"], out["assd"] = hd95_assd(p, t, spacing)
    return out


def segmentation_metrics(pred_label: np.ndarray, truth_label: np.ndarray, spacing: Spacing, *,
                         classes: Mapping[str, Sequence[int]] = CLASSES,
                         distances: bool = True) -> Dict[str, Dict[str, float]]:
    """Per-class `binary_metrics` of two label maps (0 bg, 1 liver, 2 tumour)."""
    return {
        name: binary_metrics(np.isin(pred_label, list(vals)), np.isin(truth_label, list(vals)), spacing,
                             distances=distances)
        for name, vals in classes.items()
    }


# ----------------------------------------------------------------- lesion detection
def lesion_instances(mask: np.ndarray) -> np.ndarray:
    """26-connected components of a binary tumour mask (uint16 instance map)."""
    from scipy import ndimage

    inst, _ = ndimage.label(np.asarray(mask, bool), structure=np.ones((3,) * np.ndim(mask), bool))
    return inst.astype(np.uint16)


@dataclass
class LesionMatch:
    """One truth lesion and what the prediction did with it."""

    truth_id: int
    pred_id: Optional[int]
    dice: float
    diameter_mm: float
    volume_ml: float

    @property
    def detected(self) -> bool:
        return self.pred_id is not None


def match_lesions(pred_inst: np.ndarray, truth_inst: np.ndarray, spacing: Spacing, *,
                  min_dice: float = DETECTION_MIN_DICE) -> Tuple[List[LesionMatch], List[int]]:
    """Greedy one-to-one matching of predicted to truth lesions by Dice (>= min_dice).

    Returns (one LesionMatch per truth lesion, ids of unmatched predicted lesions = false
    positives). One-to-one so that one huge predicted blob covering three lesions counts
    as one detection, not three.
    """
    p = np.asarray(pred_inst).astype(np.int64).ravel()
    t = np.asarray(truth_inst).astype(np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError("instance maps differ in shape")
    p_ids = [int(i) for i in np.unique(p) if i != 0]
    t_ids = [int(i) for i in np.unique(t) if i != 0]
    p_size = {i: int(c) for i, c in zip(*np.unique(p[p > 0], return_counts=True))}
    t_size = {i: int(c) for i, c in zip(*np.unique(t[t > 0], return_counts=True))}
    both = (p > 0) & (t > 0)
    pairs: List[Tuple[float, int, int]] = []
    if both.any():
        keys, counts = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
        for (ti, pi), c in zip(keys.T, counts):
            d = 2.0 * c / (t_size[int(ti)] + p_size[int(pi)])
            if d >= min_dice:
                pairs.append((d, int(ti), int(pi)))
    pairs.sort(reverse=True)
    t_to_p: Dict[int, Tuple[int, float]] = {}
    used_p: set = set()
    for d, ti, pi in pairs:
        if ti in t_to_p or pi in used_p:
            continue
        t_to_p[ti] = (pi, d)
        used_p.add(pi)
    vox_ml = float(np.prod(spacing)) / 1000.0
    matches = [
        LesionMatch(
            truth_id=ti,
            pred_id=t_to_p[ti][0] if ti in t_to_p else None,
            dice=t_to_p[ti][1] if ti in t_to_p else 0.0,
            diameter_mm=equivalent_diameter_mm(t_size[ti], spacing),
            volume_ml=t_size[ti] * vox_ml,
        )
        for ti in t_ids
    ]
    return matches, [pi for pi in p_ids if pi not in used_p]


def detection_metrics(matches: Sequence[LesionMatch], false_positives: Sequence[int], *,
                      min_diameter_mm: float = DETECTION_MIN_DIAMETER_MM,
                      small_mm: float = SMALL_TUMOUR_DIAMETER_MM) -> Dict[str, float]:
    """Detection rate (truth lesions >= min_diameter_mm), FP count, per-lesion Dice by size."""
    big = [m for m in matches if m.diameter_mm >= min_diameter_mm]
    small = [m for m in matches if m.diameter_mm < small_mm]
    large = [m for m in matches if m.diameter_mm >= small_mm]

    def mean(vals: List[float]) -> float:
        return float(np.mean(vals)) if vals else math.nan

    return {
        "n_truth_lesions": len(matches),
        "n_truth_lesions_ge_min": len(big),
        "n_detected_ge_min": sum(m.detected for m in big),
        "detection_rate": mean([float(m.detected) for m in big]),
        "false_positives": len(false_positives),
        "lesion_dice": mean([m.dice for m in matches]),
        "lesion_dice_small": mean([m.dice for m in small]),
        "lesion_dice_large": mean([m.dice for m in large]),
        "detection_rate_small": mean([float(m.detected) for m in small if m.diameter_mm >= min_diameter_mm]),
        "detection_rate_large": mean([float(m.detected) for m in large]),
    }


# ------------------------------------------------------------- classification metrics
def roc_auc(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); NaN with one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y_true, int)
    s = np.asarray(y_score, float)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: Sequence[int], y_score: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending, starting at (0, 0)."""
    y = np.asarray(y_true, int)
    s = np.asarray(y_score, float)
    thr = np.unique(s)[::-1]
    n_pos, n_neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    tpr = np.array([0.0] + [float(((s >= t) & (y == 1)).sum()) / n_pos for t in thr])
    fpr = np.array([0.0] + [float(((s >= t) & (y == 0)).sum()) / n_neg for t in thr])
    return fpr, tpr, np.concatenate([[np.inf], thr])


def pr_curve(y_true: Sequence[int], y_score: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over descending thresholds."""
    y = np.asarray(y_true, int)
    s = np.asarray(y_score, float)
    n_pos = max(int((y == 1).sum()), 1)
    rec, prec = [], []
    for t in np.unique(s)[::-1]:
        sel = s >= t
        tp = float((sel & (y == 1)).sum())
        rec.append(tp / n_pos)
        prec.append(tp / max(int(sel.sum()), 1))
    return np.array(rec), np.array(prec)


def expected_calibration_error(y_true: Sequence[int], y_prob: Sequence[float], n_bins: int = 10) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - confidence| weighted by bin size."""
    y = np.asarray(y_true, int)
    p = np.asarray(y_prob, float)
    if y.size == 0:
        return math.nan
    pred = (p >= 0.5).astype(int)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; conf is >= 0.5 so the lower bins stay empty.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_metrics(y_true: Sequence[int], y_prob: Sequence[float], threshold: float = 0.5,
                           n_bins: int = 10) -> Dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, AUC, ECE for malignant (=1) vs benign."""
    y = np.asarray(y_true, int)
    p = np.asarray(y_prob, float)
    if y.shape != p.shape:
        raise ValueError("y_true and y_prob differ in length")
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def div(a: float, b: float) -> float:
        return a / b if b else math.nan

    sens, ppv = div(tp, tp + fn), div(tp, tp + fp)
    f1 = div(2 * tp, 2 * tp + fp + fn)
    return {
        "n": int(y.size), "n_positive": int((y == 1).sum()),
        "accuracy": div(tp + tn, y.size), "sensitivity": sens, "specificity": div(tn, tn + fp),
        "ppv": ppv, "npv": div(tn, tn + fn), "f1": f1,
        "auc": roc_auc(y, p), "ece": expected_calibration_error(y, p, n_bins),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


# --------------------------------------------------------------------- paired tests
def paired_tests(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Paired t-test (paper 001) and Wilcoxon signed-rank test of per-case metrics a vs b.

    Pairs with a NaN on either side are dropped (and counted in ``n``). With identical
    samples both p-values are 1.0 (scipy would return NaN / raise).
    """
    from scipy import stats

    x = np.asarray(a, float)
    y = np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    out = {"n": int(x.size), "mean_a": _mean(x), "mean_b": _mean(y), "mean_diff": _mean(d),
           "t": math.nan, "p_ttest": math.nan, "w": math.nan, "p_wilcoxon": math.nan}
    if x.size < 2:
        return out
    if np.allclose(d, 0):
        out.update(t=0.0, p_ttest=1.0, w=0.0, p_wilcoxon=1.0)
        return out
    t = stats.ttest_rel(x, y)
    out.update(t=float(t.statistic), p_ttest=float(t.pvalue))
    w = stats.wilcoxon(x, y)
    out.update(w=float(w.statistic), p_wilcoxon=float(w.pvalue))
    return out


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if np.size(v) else math.nan


def summarize(values: Iterable[float]) -> Dict[str, float]:
    """NaN-aware mean, std (ddof=1), median and n (number of finite values)."""
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "n": int(v.size)}


# -------------------------------------------------------------------- directories
SEG_FILE, LESIONS_FILE, REPORT_FILE = "segmentation.nii.gz", "lesions.nii.gz", "report.json"
GT_LABEL, GT_LESIONS, GT_TRUTH = "label.nii.gz", "lesions.nii.gz", "truth.json"


def _case_dirs(root: Path, marker: str) -> Dict[str, Path]:
    """{case name: folder}: ROOT itself when it holds MARKER, else its sub-folders that do."""
    if (root / marker).is_file():
        return {root.name: root}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / marker).is_file()}


def _read(path: Path, case: str) -> Any:
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{case}: {path}: cannot read image ({str(exc).strip().splitlines()[-1]})") from exc


def _read_json(path: Path, case: str) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{case}: {path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{case}: {path}: expected a JSON object, found {type(doc).__name__}")
    return doc


def _lesion_entries(doc: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    les = doc.get("lesions", [])
    entries = list(les.values()) if isinstance(les, dict) else list(les) if isinstance(les, list) else []
    return [e for e in entries if isinstance(e, Mapping)]  # malformed entries are ignored, never a crash


def _lesion_key(entry: Mapping[str, Any]) -> Optional[int]:
    for k in ("id", "label", "instance", "lesion_id"):
        if k in entry:
            try:
                return int(entry[k])
            except (TypeError, ValueError):
                return None
    return None


def truth_classes(doc: Mapping[str, Any]) -> Dict[int, int]:
    """{lesion instance id: 1 malignant / 0 benign} from a truth.json (phantom layout)."""
    out: Dict[int, int] = {}
    for i, e in enumerate(_lesion_entries(doc), start=1):
        key = _lesion_key(e) or i
        cls = e.get("class", e.get("type", e.get("malignant")))
        if isinstance(cls, bool):
            out[key] = int(cls)
        elif isinstance(cls, str) and cls.lower() in ("malignant", "benign"):
            out[key] = int(cls.lower() == "malignant")
    return out


def predicted_probabilities(doc: Mapping[str, Any]) -> Dict[int, float]:
    """{lesion id: malignancy_probability} from a `livertumorai segment` report.json."""
    out: Dict[int, float] = {}
    for i, e in enumerate(_lesion_entries(doc), start=1):
        p = e.get("malignancy_probability")
        if isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p):
            out[_lesion_key(e) or i] = float(p)
    return out


def evaluate_case(pred_dir: Path, gt_dir: Path, case: str = "") -> Dict[str, Any]:
    """All metrics of one predicted case folder against one truth case folder."""
    import SimpleITK as sitk

    case = case or gt_dir.name
    pred_img = _read(pred_dir / SEG_FILE, case)
    gt_img = _read(gt_dir / GT_LABEL, case)
    if pred_img.GetSize() != gt_img.GetSize() or not np.allclose(pred_img.GetSpacing(), gt_img.GetSpacing(),
                                                                   rtol=1e-3, atol=1e-4):
        raise InputError(
            f"{case}: {pred_dir / SEG_FILE} grid {pred_img.GetSize()} @ {pred_img.GetSpacing()} differs from "
            f"{gt_dir / GT_LABEL} {gt_img.GetSize()} @ {gt_img.GetSpacing()}; predictions must be on the CT grid"
        )
    spacing = spacing_zyx(gt_img)
    pred = sitk.GetArrayFromImage(pred_img)
    gt = sitk.GetArrayFromImage(gt_img)
    seg = segmentation_metrics(pred, gt, spacing)

    p_les_path, t_les_path = pred_dir / LESIONS_FILE, gt_dir / GT_LESIONS
    p_inst = sitk.GetArrayFromImage(_read(p_les_path, case)) if p_les_path.is_file() else lesion_instances(pred == 2)
    t_inst = sitk.GetArrayFromImage(_read(t_les_path, case)) if t_les_path.is_file() else lesion_instances(gt == 2)
    if p_inst.shape != pred.shape or t_inst.shape != gt.shape:
        raise InputError(f"{case}: lesion instance map does not match the segmentation grid")
    matches, fps = match_lesions(p_inst, t_inst, spacing)
    det = detection_metrics(matches, fps)

    probs = predicted_probabilities(_read_json(pred_dir / REPORT_FILE, case))
    classes = truth_classes(_read_json(gt_dir / GT_TRUTH, case))
    lesions = []
    for m in matches:
        rec = asdict(m)
        rec["detected"] = m.detected
        rec["truth_class"] = classes.get(m.truth_id)
        rec["malignancy_probability"] = probs.get(m.pred_id) if m.pred_id is not None else None
        lesions.append(rec)
    return {"case": case, "segmentation": seg, "detection": det, "lesions": lesions,
            "false_positive_ids": fps}


def evaluate_dirs(pred_dir: Union[str, Path], gt_dir: Union[str, Path]) -> Dict[str, Any]:
    """Evaluate `livertumorai segment` outputs against phantom-layout truth.

    PRED_DIR is one case folder (holding segmentation.nii.gz) or a folder of them; GT_DIR
    is one `case_XXX/` folder (label.nii.gz, lesions.nii.gz, truth.json) or a folder of
    them. Cases are matched by folder name (a single case on both sides is matched as is).
    Truth cases without a prediction are listed under ``missing`` (and make no metrics);
    no match at all is an InputError. Returns JSON-ready dict: ``cases`` (per-case
    metrics), ``summary`` (mean/std/median/n of each per-case metric, pooled lesion
    detection and lesion-level classification metrics of report malignancy_probability
    vs truth class for matched lesions >= 10 mm), ``conventions``. NaN becomes null.
    """
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    for p, what in ((pred_root, "prediction"), (gt_root, "ground-truth")):
        if not p.is_dir():
            raise InputError(f"{p}: {what} folder not found")
    preds = _case_dirs(pred_root, SEG_FILE)
    gts = _case_dirs(gt_root, GT_LABEL)
    if not preds:
        raise InputError(f"{pred_root}: no {SEG_FILE} found (expected a case folder or a folder of them)")
    if not gts:
        raise InputError(f"{gt_root}: no {GT_LABEL} found (expected case_XXX/{GT_LABEL} folders)")
    if len(preds) == 1 and len(gts) == 1:
        pairs = [(next(iter(gts)), next(iter(preds.values())), next(iter(gts.values())))]
    else:
        pairs = [(name, preds[name], gts[name]) for name in gts if name in preds]
    if not pairs:
        raise InputError(f"no case folder names in common between {pred_root} and {gt_root}")
    matched = {n for n, _, _ in pairs}
    cases = [evaluate_case(p, g, n) for n, p, g in pairs]

    summary: Dict[str, Any] = {"n_cases": len(cases)}
    for cls in CLASSES:
        for metric in cases[0]["segmentation"][cls]:
            summary[f"{cls}_{metric}"] = summarize(c["segmentation"][cls][metric] for c in cases)
    for metric in ("detection_rate", "false_positives", "lesion_dice", "lesion_dice_small", "lesion_dice_large"):
        summary[metric] = summarize(c["detection"][metric] for c in cases)
    all_les = [lz for c in cases for lz in c["lesions"]]
    big = [lz for lz in all_les if lz["diameter_mm"] >= DETECTION_MIN_DIAMETER_MM]
    summary["pooled_detection_rate"] = (sum(lz["detected"] for lz in big) / len(big)) if big else math.nan
    summary["pooled_lesions_ge_10mm"] = len(big)
    summary["false_positives_per_case"] = float(np.mean([len(c["false_positive_ids"]) for c in cases]))
    cls_pairs = [(lz["truth_class"], lz["malignancy_probability"]) for lz in big
                 if lz["detected"] and lz["truth_class"] is not None and lz["malignancy_probability"] is not None]
    summary["lesion_classification"] = (
        classification_metrics([c for c, _ in cls_pairs], [p for _, p in cls_pairs]) if cls_pairs
        else {"n": 0, "auc": math.nan}
    )
    result = {
        "pred_dir": str(pred_root), "gt_dir": str(gt_root),
        "cases": cases, "summary": summary,
        "missing": sorted(n for n in gts if n not in matched) if len(gts) > 1 else [],
        "unmatched_predictions": sorted(n for n in preds if n not in matched) if len(preds) > 1 else [],
        "conventions": {
            "liver": "label >= 1", "tumour": "label == 2",
            "detection": f"one-to-one greedy, Dice >= {DETECTION_MIN_DICE}",
            "detection_rate_min_diameter_mm": DETECTION_MIN_DIAMETER_MM,
            "small_tumour_diameter_mm": SMALL_TUMOUR_DIAMETER_MM, "diameter": "equivalent sphere",
            "empty_masks": "both empty -> perfect; one empty -> overlap 0, HD95/ASSD null",
        },
    }
    return _nan_to_none(result)
