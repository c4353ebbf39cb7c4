"""Metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib import evaluation as E
from LiverTumorAILib.errors import InputError


def _cube(shape, z0, y0, x0, n):
    m = np.zeros(shape, bool)
    m[z0 : z0 + n, y0 : y0 + n, x0 : x0 + n] = True
    return m


def test_overlap_metrics_by_hand() -> None:
    truth = np.zeros((1, 4, 5), bool)
    pred = np.zeros_like(truth)
    truth[0, 0, :4] = True  # 4 voxels
    pred[0, 0, 2:5] = True  # 3 voxels, 2 shared
    m = E.binary_metrics(pred, truth, (1.0, 1.0, 1.0), distances=False)
    assert m["dice"] == pytest.approx(2 * 2 / 7)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["voe"] == pytest.approx(3 / 5)
    assert m["rvd"] == pytest.approx((3 - 4) / 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(15 / 16)  # 20 voxels, 16 negatives, 1 FP


def test_empty_mask_conventions() -> None:
    z = np.zeros((3, 3, 3), bool)
    one = z.copy()
    one[1, 1, 1] = True
    both = E.binary_metrics(z, z, (1, 1, 1))
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and both["voe"] == 0.0 and both["rvd"] == 0.0
    assert both["hd95"] == 0.0 and both["assd"] == 0.0
    miss = E.binary_metrics(z, one, (1, 1, 1))  # prediction empty
    assert miss["dice"] == 0.0 and miss["recall"] == 0.0 and miss["precision"] == 0.0
    assert miss["rvd"] == -1.0 and math.isnan(miss["hd95"]) and math.isnan(miss["assd"])
    fp = E.binary_metrics(one, z, (1, 1, 1))  # truth empty
    assert fp["dice"] == 0.0 and math.isnan(fp["rvd"]) and math.isnan(fp["hd95"])


def test_hd95_offset_cubes_anisotropic_spacing() -> None:
    spacing = (2.5, 1.0, 0.8)  # (z, y, x) mm
    shape = (16, 16, 16)
    a = _cube(shape, 4, 4, 4, 6)
    # Offset by 2 slices along z: the far faces are 2 * 2.5 = 5 mm apart, and a face is
    # > 5 % of each surface, so HD95 (and the max) is exactly 5 mm.
    b = _cube(shape, 6, 4, 4, 6)
    hd95, assd = E.hd95_assd(a, b, spacing)
    assert hd95 == pytest.approx(5.0, abs=1e-4)
    assert 0 < assd < 5.0
    # Offset by 3 columns along x (0.8 mm): 2.4 mm, i.e. spacing is used per axis, in (z, y, x) order.
    c = _cube(shape, 4, 4, 7, 6)
    assert E.hd95_assd(a, c, spacing)[0] == pytest.approx(2.4, abs=1e-4)
    # Single voxels: every distance is the same, sqrt((2 * 2.5)^2 + (3 * 0.8)^2).
    p = np.zeros(shape, bool)
    q = np.zeros(shape, bool)
    p[2, 2, 2] = True
    q[4, 2, 5] = True
    hd, sd = E.hd95_assd(p, q, spacing)
    assert hd == pytest.approx(math.hypot(5.0, 2.4), abs=1e-4) and sd == pytest.approx(math.hypot(5.0, 2.4), abs=1e-4)


def test_segmentation_metrics_classes() -> None:
    t = np.zeros((4, 8, 8), np.uint8)
    t[1:3, 2:6, 2:6] = 1
    t[1:3, 3:5, 3:5] = 2
    p = t.copy()
    p[p == 2] = 1  # tumour called liver: liver perfect (label >= 1), tumour missed
    m = E.segmentation_metrics(p, t, (1, 1, 1))
    assert m["liver"]["dice"] == 1.0 and m["tumour"]["dice"] == 0.0


def test_lesion_matching_detection_and_fp() -> None:
    spacing = (2.0, 1.0, 1.0)
    shape = (20, 64, 64)
    truth = np.zeros(shape, np.uint16)
    truth[2:8, 4:16, 4:16] = 1  # 12x12x6 voxels = 1728 mm3 -> 14.9 mm (>= 10, small)
    truth[10:12, 40:44, 40:44] = 2  # 4x4x2 = 64 mm3 -> 5 mm (< 10: not counted in the rate)
    truth[2:12, 30:50, 2:22] = 3  # 8000 mm3 -> 24.8 mm (large)
    pred = np.zeros(shape, np.uint16)
    pred[2:8, 4:16, 4:16] = 5  # exact lesion 1
    pred[2:12, 30:50, 2:21] = 7  # lesion 3 minus one column
    pred[15:17, 2:4, 50:52] = 9  # false positive
    matches, fps = E.match_lesions(pred, truth, spacing)
    by = {m.truth_id: m for m in matches}
    assert by[1].pred_id == 5 and by[1].dice == 1.0
    assert by[2].pred_id is None and by[2].dice == 0.0
    assert by[3].pred_id == 7 and by[3].dice == pytest.approx(2 * 19 / 39)
    assert fps == [9]
    assert by[1].diameter_mm == pytest.approx((6 * 1728 / math.pi) ** (1 / 3))
    d = E.detection_metrics(matches, fps)
    assert d["n_truth_lesions_ge_min"] == 2 and d["detection_rate"] == 1.0
    assert d["false_positives"] == 1
    assert d["lesion_dice_small"] == pytest.approx(0.5)  # lesions 1 (1.0) and 2 (missed, 0.0)
    assert d["lesion_dice_large"] == pytest.approx(2 * 19 / 39)


def test_one_blob_over_two_lesions_counts_once_and_weak_overlap_is_a_miss() -> None:
    truth = np.zeros((4, 20, 20), np.uint16)
    truth[:, 2:8, 2:8] = 1
    truth[:, 2:8, 10:16] = 2
    pred = np.zeros_like(truth)
    pred[:, 2:8, 2:16] = 1
    matches, fps = E.match_lesions(pred, truth, (1, 1, 1))
    assert sum(m.detected for m in matches) == 1 and fps == []
    weak = np.zeros_like(truth)
    weak[0, 2, 2] = 1  # Dice 2/(144+1) < 0.1
    matches, fps = E.match_lesions(weak, truth, (1, 1, 1))
    assert not any(m.detected for m in matches) and fps == [1]


def test_auc_ece_and_classification_by_hand() -> None:
    assert E.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert E.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    assert math.isnan(E.roc_auc([1, 1], [0.2, 0.3]))
    # conf .9,.8,.6,.55, all correct: bins (.5,.6]: 2 x |1-.575|, (.7,.8]: .2, (.8,.9]: .1
    assert E.expected_calibration_error([1, 0, 1, 1], [0.9, 0.2, 0.6, 0.55]) == pytest.approx(
        0.5 * 0.425 + 0.25 * 0.2 + 0.25 * 0.1)
    m = E.classification_metrics([1, 1, 0, 0, 1], [0.9, 0.3, 0.6, 0.1, 0.7])
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["ppv"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    fpr, tpr, _ = E.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(0.75)


def test_paired_tests() -> None:
    a = [0.85, 0.82, 0.88, 0.80, 0.86, 0.84]
    b = [0.81, 0.80, 0.83, 0.79, 0.82, 0.80]
    r = E.paired_tests(a, b)
    from scipy import stats

    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    same = E.paired_tests(a, a)
    assert same["p_ttest"] == 1.0 and same["p_wilcoxon"] == 1.0
    assert E.paired_tests([1.0, float("nan"), 2.0], [0.5, 1.0, 1.0])["n"] == 2


def _write(arr, path, spacing=(1.0, 1.0, 2.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _case(gt_root: Path, pred_root: Path, name: str, shift: int) -> None:
    shape = (20, 64, 64)
    lab = np.zeros(shape, np.uint8)
    lab[1:18, 2:60, 2:60] = 1
    les = np.zeros(shape, np.uint16)
    les[2:8, 4:16, 4:16] = 1
    les[2:12, 30:50, 20:40] = 2
    lab[les > 0] = 2
    _write(lab, gt_root / name / "label.nii.gz")
    _write(les, gt_root / name / "lesions.nii.gz")
    (gt_root / name / "truth.json").write_text(json.dumps(
        {"lesions": [{"id": 1, "class": "malignant"}, {"id": 2, "class": "benign"}]}))
    ples = np.roll(les, shift, axis=2)
    ples[15:17, 50:54, 50:54] = 3  # FP
    plab = lab.copy()
    plab[plab == 2] = 1
    plab[ples > 0] = 2
    _write(plab, pred_root / name / "segmentation.nii.gz")
    _write(ples, pred_root / name / "lesions.nii.gz")
    (pred_root / name / "report.json").write_text(json.dumps({"lesions": [
        {"id": 1, "malignancy_probability": 0.8}, {"id": 2, "malignancy_probability": 0.3},
        {"id": 3, "malignancy_probability": 0.5}]}))


def test_evaluate_dirs_phantom_layout(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _case(gt, pred, "case_000", 0)
    _case(gt, pred, "case_001", 2)
    _write(np.zeros((20, 64, 64), np.uint8), gt / "case_002" / "label.nii.gz")  # no prediction
    res = E.evaluate_dirs(pred, gt)
    json.dumps(res, allow_nan=False)  # valid JSON, NaN -> null
    assert [c["case"] for c in res["cases"]] == ["case_000", "case_001"]
    assert res["missing"] == ["case_002"]
    c0 = res["cases"][0]
    tumour = 6 * 12 * 12 + 10 * 20 * 20
    assert c0["segmentation"]["tumour"]["dice"] == pytest.approx(2 * tumour / (2 * tumour + 32))  # 32-voxel FP
    assert c0["detection"]["false_positives"] == 1 and c0["detection"]["detection_rate"] == 1.0
    s = res["summary"]
    assert s["n_cases"] == 2 and s["liver_dice"]["mean"] == pytest.approx(1.0)
    assert s["tumour_dice"]["n"] == 2 and s["tumour_dice"]["std"] > 0
    assert s["false_positives_per_case"] == 1.0
    lc = s["lesion_classification"]
    assert lc["n"] == 4 and lc["auc"] == pytest.approx(1.0)
    # a single case folder on each side is matched as is
    one = E.evaluate_dirs(pred / "case_001", gt / "case_001")
    assert one["summary"]["n_cases"] == 1


def test_evaluate_dirs_errors(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _case(gt, pred, "case_000", 0)
    with pytest.raises(InputError, match="no segmentation.nii.gz"):
        E.evaluate_dirs(tmp_path / "gt", tmp_path / "gt")
    _write(np.zeros((10, 64, 64), np.uint8), pred / "case_000" / "segmentation.nii.gz")
    with pytest.raises(InputError, match="case_000.*grid"):
        E.evaluate_dirs(pred, gt)
