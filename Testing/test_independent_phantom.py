"""The independent benchmark phantom (benchmarks/independent_phantom.py): its cases must be
self-consistent, or the generalisation figures measured on them mean nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from independent_phantom import FIRST_SEED, make_case  # noqa: E402


def test_case_truth_is_consistent_and_the_mri_lies_on_its_own_grid(tmp_path: Path) -> None:
    truth = make_case(FIRST_SEED + 2, tmp_path / "case", spacing_mm=(3.0, 3.0, 6.0))
    read = {name: sitk.ReadImage(str(tmp_path / "case" / f"{name}.nii.gz")) for name in ("ct", "label", "lesions", "mri")}
    ct, label, lesions = (sitk.GetArrayFromImage(read[n]) for n in ("ct", "label", "lesions"))
    assert ct.shape == label.shape == lesions.shape
    assert read["label"].GetDirection() == read["ct"].GetDirection() and read["label"].GetOrigin() == read["ct"].GetOrigin()
    assert np.array_equal(label == 2, lesions > 0)
    assert (label >= 1).sum() * 3 * 3 * 6 / 1000 > 500  # an adult liver, in ml
    ids = sorted(int(i) for i in np.unique(lesions) if i)
    assert ids == [lesion["id"] for lesion in truth["lesions"]] and len(ids) == 3
    assert json.loads((tmp_path / "case" / "truth.json").read_text()) == truth
    # lesions are darker (cyst, hcc) or brighter than the liver around them, by their kind
    liver_hu = np.median(ct[label == 1])
    for lesion in truth["lesions"]:
        contrast = np.median(ct[lesions == lesion["id"]]) - liver_hu
        assert (contrast > 15) if lesion["type"] == "haemangioma" else (contrast < -15)
    assert read["mri"].GetSpacing() != read["ct"].GetSpacing() and read["mri"].GetDirection() != read["ct"].GetDirection()
    # the MRI shows the same anatomy: resampled onto the CT grid, a cyst is brighter than the liver (T2)
    mri_on_ct = sitk.GetArrayFromImage(sitk.Resample(read["mri"], read["ct"], sitk.Transform(), sitk.sitkLinear, 0.0))
    cyst = next(lesion["id"] for lesion in truth["lesions"] if lesion["type"] == "cyst")
    assert np.median(mri_on_ct[lesions == cyst]) > 2 * np.median(mri_on_ct[label == 1])


def test_a_seed_always_gives_the_same_case(tmp_path: Path) -> None:
    a = make_case(FIRST_SEED, tmp_path / "a", spacing_mm=(4.0, 4.0, 8.0))
    b = make_case(FIRST_SEED, tmp_path / "b", spacing_mm=(4.0, 4.0, 8.0))
    assert a == b
    ct_a, ct_b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f / "ct.nii.gz"))) for f in ("a", "b"))
    assert np.array_equal(ct_a, ct_b)


def test_a_t1_draw_differs_from_its_t2_draw_only_in_the_mri_where_every_lesion_is_dark(tmp_path: Path) -> None:
    t2 = make_case(FIRST_SEED + 2, tmp_path / "t2", spacing_mm=(3.0, 3.0, 6.0))
    t1 = make_case(FIRST_SEED + 2, tmp_path / "t1", spacing_mm=(3.0, 3.0, 6.0), mri_sequence="t1")
    assert {**t2, "mri_sequence": "t1"} == t1
    for name in ("ct", "label", "lesions"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f / f"{name}.nii.gz"))) for f in ("t1", "t2"))
        assert np.array_equal(a, b)
    ct = sitk.ReadImage(str(tmp_path / "t1" / "ct.nii.gz"))
    label, lesions = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t1" / f"{n}.nii.gz"))) for n in ("label", "lesions"))
    mri = sitk.ReadImage(str(tmp_path / "t1" / "mri.nii.gz"))
    mri_on_ct = sitk.GetArrayFromImage(sitk.Resample(mri, ct, sitk.Transform(), sitk.sitkLinear, 0.0))
    liver = np.median(mri_on_ct[label == 1])
    for lesion in t1["lesions"]:
        assert np.median(mri_on_ct[lesions == lesion["id"]]) < 0.9 * liver, lesion
