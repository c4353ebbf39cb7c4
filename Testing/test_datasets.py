"""Every dataset adapter on tiny files written here in that dataset's exact layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError
from training.datasets import detect_format, load_dataset
from training.datasets.chaos import load_chaos
from training.datasets.ircadb import load_ircadb
from training.datasets.lits import load_lits
from training.datasets.manifest import load_manifest, parse_lesion_classes
from training.datasets.msd import load_msd

SHAPE = (6, 16, 20)  # z, y, x


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:5, 3:13, 4:16] = 1
    lab[2:4, 5:8, 6:9] = 2
    lab[2:4, 9:11, 12:14] = 2
    return lab


def _nii(arr: np.ndarray, path: Path, spacing=(0.8, 0.8, 2.5)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _dicom_series(arr: np.ndarray, folder: Path, names: Sequence[str], *, series_uid: str,
                  instance_numbers: Optional[Sequence[int]] = None, spacing=(0.7, 0.7, 3.0)) -> None:
    """One file per z slice with full geometry (what GDCM needs to sort by position)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # IRCADb files have no extension
    for z in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[z : z + 1].astype(np.int16))
        sl.SetSpacing(spacing)
        sl.SetOrigin((0.0, 0.0, z * spacing[2]))
        inst = instance_numbers[z] if instance_numbers else z + 1
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{z + 1}",
            "0020|0013": str(inst), "0020|0032": f"0\\0\\{z * spacing[2]}",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]),
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(folder / names[z]))
        writer.Execute(sl)


# ------------------------------------------------------------------------- LiTS
def test_lits_layout_pairs_volumes_and_segmentations(tmp_path: Path) -> None:
    for n, batch in ((0, "Training Batch 1"), (1, "Training Batch 2")):
        _nii(np.full(SHAPE, -100, np.int16), tmp_path / batch / f"volume-{n}.nii")
        _nii(_label(), tmp_path / batch / f"segmentation-{n}.nii")
    assert detect_format(tmp_path) == "lits"
    cases = load_dataset(str(tmp_path))
    assert [c.case_id for c in cases] == ["lits-000", "lits-001"]
    lab = sitk.GetArrayFromImage(cases[1].load_label())
    assert set(np.unique(lab)) == {0, 1, 2}
    les = sitk.GetArrayFromImage(cases[1].load_lesions())
    assert les.max() == 2  # two tumours -> two connected components


def test_lits_missing_segmentation_names_the_case(tmp_path: Path, caplog) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "volume-0.nii")
    _nii(_label(), tmp_path / "segmentation-0.nii")
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "volume-7.nii")
    with pytest.raises(InputError, match=r"lits-007.*segmentation-7"):
        load_lits(tmp_path)
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        cases = load_lits(tmp_path, skip_bad=True)
    assert [c.case_id for c in cases] == ["lits-000"]
    assert cases.skipped and cases.skipped[0][0] == "lits-007"
    assert "lits-007" in caplog.text


def test_corrupt_file_is_reported_with_case(tmp_path: Path) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "volume-3.nii")
    (tmp_path / "segmentation-3.nii").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"lits-003.*segmentation-3.nii"):
        load_lits(tmp_path)


def test_label_size_mismatch_is_refused(tmp_path: Path) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "volume-0.nii")
    _nii(_label()[:4], tmp_path / "segmentation-0.nii")
    with pytest.raises(InputError, match=r"lits-000.*label size"):
        load_lits(tmp_path)


# -------------------------------------------------------------------------- MSD
def test_msd_task03_layout(tmp_path: Path) -> None:
    root = tmp_path / "Task03_Liver"
    for i in (0, 1):
        _nii(np.zeros(SHAPE, np.int16), root / "imagesTr" / f"liver_{i}.nii.gz")
        _nii(_label(), root / "labelsTr" / f"liver_{i}.nii.gz")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"mac junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
                     for i in (0, 1)],
        "test": [],
    }))
    assert detect_format(root) == "msd"
    cases = load_dataset(str(root))
    assert [c.case_id for c in cases] == ["msd-liver_0", "msd-liver_1"]
    assert sitk.GetArrayFromImage(cases[0].load_label()).max() == 2


def test_msd_missing_label_names_case(tmp_path: Path) -> None:
    root = tmp_path / "Task03_Liver"
    _nii(np.zeros(SHAPE, np.int16), root / "imagesTr" / "liver_5.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": "./imagesTr/liver_5.nii.gz", "label": "./labelsTr/liver_5.nii.gz"}]}))
    with pytest.raises(InputError, match="msd-liver_5.*label"):
        load_msd(root)


# --------------------------------------------------------------------- 3D-IRCADb
def _ircadb_patient(root: Path, n: int, with_tumours: bool = True) -> np.ndarray:
    pat = root / f"3Dircadb1.{n}"
    names = [f"image_{z}" for z in range(SHAPE[0])]
    ct = np.full(SHAPE, -50, np.int16)
    lab = _label()
    _dicom_series(ct, pat / "PATIENT_DICOM", names, series_uid=f"1.2.3.{n}.1")
    _dicom_series((lab >= 1) * 255, pat / "MASKS_DICOM" / "liver", names, series_uid=f"1.2.3.{n}.2")
    _dicom_series(np.zeros(SHAPE), pat / "MASKS_DICOM" / "portalvein", names, series_uid=f"1.2.3.{n}.3")
    if with_tumours:
        t1 = np.zeros(SHAPE)
        t1[2:4, 5:8, 6:9] = 255
        t2 = np.zeros(SHAPE)
        t2[2:4, 9:11, 12:14] = 255
        _dicom_series(t1, pat / "MASKS_DICOM" / "livertumor01", names, series_uid=f"1.2.3.{n}.4")
        _dicom_series(t2, pat / "MASKS_DICOM" / "livertumor02", names, series_uid=f"1.2.3.{n}.5")
    return lab


def test_ircadb_masks_combine_to_labels_and_instances(tmp_path: Path) -> None:
    expected = _ircadb_patient(tmp_path, 1)
    _ircadb_patient(tmp_path, 2, with_tumours=False)
    assert detect_format(tmp_path) == "ircadb"
    cases = load_dataset(str(tmp_path))
    assert [c.case_id for c in cases] == ["ircadb-1", "ircadb-2"]
    lab = sitk.GetArrayFromImage(cases[0].load_label())
    np.testing.assert_array_equal(lab, expected)
    les = sitk.GetArrayFromImage(cases[0].load_lesions())
    assert les[3, 6, 7] == 1 and les[3, 10, 13] == 2 and les.max() == 2
    assert cases[0].load_ct().GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert sitk.GetArrayFromImage(cases[1].load_label()).max() == 1


def test_ircadb_zipped_or_broken_patient(tmp_path: Path) -> None:
    _ircadb_patient(tmp_path, 1)
    bad = tmp_path / "3Dircadb1.4"
    bad.mkdir()
    (bad / "PATIENT_DICOM.zip").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"ircadb-4.*unzip"):
        load_ircadb(tmp_path)
    cases = load_ircadb(tmp_path, skip_bad=True)
    assert [c.case_id for c in cases] == ["ircadb-1"]


# ------------------------------------------------------------------------- CHAOS
def _png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _liver_slices() -> np.ndarray:
    """A different liver area per slice, so a slice-order mix-up is caught."""
    m = np.zeros(SHAPE, bool)
    for z in range(SHAPE[0]):
        m[z, 2 : 4 + 2 * z, 3:10] = True
    return m


def test_chaos_ct_png_order_follows_instance_number(tmp_path: Path) -> None:
    pat = tmp_path / "CHAOS" / "Train_Sets" / "CT" / "1"
    liver = _liver_slices()
    # Instance numbers run opposite to position (head-first vs feet-first), as in real series.
    inst = [SHAPE[0] - z for z in range(SHAPE[0])]
    _dicom_series(np.zeros(SHAPE), pat / "DICOM_anon", [f"i{z:04d},0000b.dcm" for z in range(SHAPE[0])],
                  series_uid="1.2.9.1", instance_numbers=inst)
    for z in range(SHAPE[0]):  # PNG k <-> k-th smallest InstanceNumber
        _png(liver[z] * 255, pat / "Ground" / f"liver_GT_{inst[z] - 1:03d}.png")
    root = tmp_path / "CHAOS"
    assert detect_format(root) == "chaos-ct"
    (case,) = load_dataset(str(root))
    assert case.case_id == "chaos-ct-1" and case.labels_present == (0, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.load_label()), liver.astype(np.uint8))
    assert case.load_lesions() is None  # no tumour annotation in CHAOS


def test_chaos_mr_t2spir_and_t1dual_liver_intensity(tmp_path: Path) -> None:
    base = tmp_path / "Train_Sets" / "MR" / "2"
    liver = _liver_slices()
    ground = liver * 63
    ground[:, 12:14, 14:18] = 126  # right kidney -> background
    names = [f"IMG-0002-{z + 1:05d}.dcm" for z in range(SHAPE[0])]
    _dicom_series(np.zeros(SHAPE), base / "T2SPIR" / "DICOM_anon", names, series_uid="1.2.9.2")
    _dicom_series(np.zeros(SHAPE), base / "T1DUAL" / "DICOM_anon" / "InPhase", names, series_uid="1.2.9.3")
    _dicom_series(np.zeros(SHAPE), base / "T1DUAL" / "DICOM_anon" / "OutPhase", names, series_uid="1.2.9.4")
    for seq in ("T2SPIR", "T1DUAL"):
        for z in range(SHAPE[0]):
            _png(ground[z], base / seq / "Ground" / f"IMG-0002-{z + 1:05d}.png")
    for seq in ("T2SPIR", "T1DUAL"):
        (case,) = load_chaos(tmp_path, modality="MR", mr_sequence=seq)
        assert case.ct is None and case.mri is not None
        np.testing.assert_array_equal(sitk.GetArrayFromImage(case.load_label()), liver.astype(np.uint8))
        assert case.load_mri().GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])


def test_chaos_png_count_mismatch_names_case(tmp_path: Path) -> None:
    pat = tmp_path / "Train_Sets" / "CT" / "5"
    _dicom_series(np.zeros(SHAPE), pat / "DICOM_anon", [f"i{z}.dcm" for z in range(SHAPE[0])], series_uid="1.2.9.5")
    _png(np.zeros(SHAPE[1:]), pat / "Ground" / "liver_GT_000.png")
    with pytest.raises(InputError, match=r"chaos-ct-5.*1 PNG masks for 6"):
        load_chaos(tmp_path)


# ---------------------------------------------------------------------- manifest
def test_csv_manifest(tmp_path: Path) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "a" / "ct.nii.gz")
    _nii(np.zeros(SHAPE, np.float32), tmp_path / "a" / "mri.nii.gz")
    _nii(_label(), tmp_path / "a" / "label.nii.gz")
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "b" / "ct.nii.gz")
    _nii(_label(), tmp_path / "b" / "label.nii.gz")
    csv = tmp_path / "cohort.csv"
    csv.write_text("case_id,ct,mri,label,lesion_classes\n"
                   "p1,a/ct.nii.gz,a/mri.nii.gz,a/label.nii.gz,1:malignant;2:benign\n"
                   f"p2,{tmp_path / 'b' / 'ct.nii.gz'},,b/label.nii.gz,\n")
    assert detect_format(csv) == "manifest"
    cases = load_dataset(str(csv))
    assert [c.case_id for c in cases] == ["p1", "p2"]
    assert cases[0].lesion_classes == {1: "malignant", 2: "benign"}
    assert cases[1].mri is None and cases[1].load_mri() is None
    assert cases[0].load_mri().GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])


def test_manifest_bad_rows(tmp_path: Path) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "ct.nii.gz")
    _nii(_label(), tmp_path / "label.nii.gz")
    csv = tmp_path / "m.csv"
    csv.write_text("ct,mri,label,lesion_classes\nct.nii.gz,,label.nii.gz,1:maybe\nmissing.nii.gz,,label.nii.gz,\n")
    with pytest.raises(InputError, match=r"row001.*1:maybe"):
        load_manifest(csv)
    cases = load_manifest(csv, skip_bad=True)
    assert cases == [] and [s[0] for s in cases.skipped] == ["row001", "row002"]
    assert "missing.nii.gz" in cases.skipped[1][1]
    with pytest.raises(ValueError):
        parse_lesion_classes("x:benign")


def test_label_values_outside_0_1_2_are_refused(tmp_path: Path) -> None:
    _nii(np.zeros(SHAPE, np.int16), tmp_path / "volume-0.nii")
    _nii(_label() * 2, tmp_path / "segmentation-0.nii")
    (case,) = load_lits(tmp_path)
    with pytest.raises(InputError, match=r"lits-000.*outside 0/1/2"):
        case.load_label()


# ---------------------------------------------------------------------- phantoms
def test_phantom_folder_layout(tmp_path: Path) -> None:
    for name in ("case_000", "case_001"):
        d = tmp_path / name
        _nii(np.zeros(SHAPE, np.int16), d / "ct.nii.gz")
        _nii(np.zeros(SHAPE, np.float32), d / "mri.nii.gz")
        _nii(_label(), d / "label.nii.gz")
        les = (_label() == 2).astype(np.uint16)
        les[:, :, 10:] *= 2
        _nii(les, d / "lesions.nii.gz")
        (d / "truth.json").write_text(json.dumps(
            {"lesions": [{"id": 1, "class": "malignant"}, {"id": 2, "class": "benign"}]}))
    assert detect_format(tmp_path) == "phantom"
    cases = load_dataset(str(tmp_path))
    assert [c.case_id for c in cases] == ["case_000", "case_001"]
    assert cases[0].lesion_classes == {1: "malignant", 2: "benign"}
    assert sitk.GetArrayFromImage(cases[0].load_lesions()).max() == 2


def test_phantom_on_the_fly() -> None:
    phantom = pytest.importorskip("LiverTumorAILib.phantom")
    if not hasattr(phantom, "generate_case"):
        pytest.skip("phantom generator not available yet")
    cases = load_dataset("phantom:2", seed=3, size=64, slices=12)
    assert [c.case_id for c in cases] == ["phantom-0003", "phantom-0004"]
    ct, lab = cases[0].load_ct(), cases[0].load_label()
    assert ct.GetSize() == lab.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(lab))) <= {0, 1, 2}
    with pytest.raises(InputError):
        load_dataset("phantom:x")
