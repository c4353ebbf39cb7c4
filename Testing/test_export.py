"""Export: DICOM SEG (dciodvfy + highdicom read-back), surfaces, NIfTI, seg.nrrd, HTML, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError
from LiverTumorAILib.export import run_export
from LiverTumorAILib.scene import scene_available

REPORT = {
    "liver_volume_ml": 30.0,
    "tumour_burden_percent": 6.8,
    "lesions": [{"id": 1, "volume_ml": 2.1, "longest_diameter_mm": 16.0, "centroid_ras": [0, 0, 0],
                 "mean_hu": 61.5, "malignancy_probability": 0.83, "predicted_class": "malignant"}],
    "models": {"dual-stream": {"version": "demo-0.1", "synthetic": True}},
    "weights_notice": "demo weights trained on synthetic phantoms - not for clinical use",
    "device": "cpu", "software_version": "0.1.0",
    "warnings": ["120 ml drawn as liver did not look like liver on the CT and was removed <check>"],
}


def _write_result(folder: Path, ct: sitk.Image, label: np.ndarray, lesions: np.ndarray, ct_input: str) -> Path:
    folder.mkdir(parents=True)
    for name, arr in (("segmentation.nii.gz", label.astype(np.uint8)), ("lesions.nii.gz", lesions.astype(np.uint16))):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ct)
        sitk.WriteImage(img, str(folder / name))
    (folder / "report.json").write_text(json.dumps({**REPORT, "inputs": {"ct": ct_input}}))
    return folder


@pytest.fixture(scope="module")
def phantom_result(tmp_path_factory) -> tuple[Path, sitk.Image, np.ndarray, np.ndarray]:
    """NIfTI CT with an ellipsoid liver (1) and a spherical lesion (2) on an anisotropic grid."""
    root = tmp_path_factory.mktemp("phantom")
    z, y, x = np.mgrid[:24, :64, :64]
    liver = ((z - 12) * 2.5 / 25) ** 2 + ((y - 32) * 0.9 / 22) ** 2 + ((x - 32) * 0.9 / 25) ** 2 < 1
    lesion = ((z - 12) * 2.5) ** 2 + ((y - 30) * 0.9) ** 2 + ((x - 38) * 0.9) ** 2 < 8 ** 2
    label = liver.astype(np.uint8)
    label[lesion] = 2
    ct_arr = np.where(liver, 60, -80).astype(np.int16)
    ct_arr[lesion] = 20
    ct = sitk.GetImageFromArray(ct_arr)
    ct.SetSpacing((0.9, 0.9, 2.5))
    ct.SetOrigin((-30.0, -40.0, 10.0))
    sitk.WriteImage(ct, str(root / "ct.nii.gz"))
    folder = _write_result(root / "result", ct, label, lesion.astype(np.uint16), str(root / "ct.nii.gz"))
    return folder, ct, label, lesion.astype(np.uint16)


@pytest.fixture(scope="module")
def dcmqi_result(real_data_dir, tmp_path_factory):
    """Result on dcmqi's real 3-slice CT DICOM with its liver mask and a box lesion inside it."""
    ct_dir = real_data_dir / "dcmqi" / "ct"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_dir)))
    ct = reader.Execute()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_dir / "dcmqi" / "seg_nrrd" / "liver_seg.nrrd")))
    label = (mask > 0).astype(np.uint8)
    _, ys, xs = np.nonzero(label)
    cy, cx = int(ys.mean()), int(xs.mean())
    lesions = np.zeros(label.shape, np.uint16)
    lesions[:, cy - 10:cy + 10, cx - 12:cx + 12] = 1
    lesions[label == 0] = 0
    label[lesions > 0] = 2
    folder = _write_result(tmp_path_factory.mktemp("dcmqi") / "result", ct, label, lesions, str(ct_dir))
    return folder, ct_dir, label, lesions


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _seg_masks(seg_path: Path, source_files: list[Path]) -> dict[str, np.ndarray]:
    """Segment label -> (frames, rows, cols) mask in the sorted source frame order, via highdicom."""
    import highdicom as hd
    import pydicom

    from LiverTumorAILib.export.dicom_seg import read_ct_series

    seg = hd.seg.segread(seg_path)
    series = read_ct_series(source_files[0].parent)
    uids = [ds.SOPInstanceUID for ds in series]
    assert pydicom.dcmread(seg_path).Modality == "SEG"
    out = {}
    for number in seg.get_segment_numbers():
        label = seg.get_segment_description(number).segment_label
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                   ignore_spatial_locations=True)
        out[label] = pixels[..., 0].astype(bool)
    return out


def test_dicom_seg_real_ct_validates_and_reads_back(dcmqi_result, tmp_path):
    folder, ct_dir, label, lesions = dcmqi_result
    paths = run_export(folder, tmp_path / "out", ["dicom-seg"], ct_dicom=ct_dir)
    seg_path = paths["dicom-seg"][0]
    assert seg_path.name == "segmentation.dcm" and seg_path.is_file()
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_path) == []
    masks = _seg_masks(seg_path, sorted(ct_dir.glob("*.dcm")))
    assert sorted(masks) == ["Lesion 1", "Liver"]
    # dcmqi's CT slices are sorted along +z in the SimpleITK read as in the SEG frames
    np.testing.assert_array_equal(masks["Liver"], label == 1)
    np.testing.assert_array_equal(masks["Lesion 1"], lesions == 1)

    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    liver = seg.get_segment_description(seg.get_segment_numbers(segment_label="Liver")[0])
    assert liver.segmented_property_type.value == "10200004"
    assert liver.segmented_property_category.value == "123037004"
    lesion = seg.get_segment_description(seg.get_segment_numbers(segment_label="Lesion 1")[0])
    assert lesion.segmented_property_category.value == "49755003"
    assert lesion.segmented_property_type.value == "108369006"
    assert lesion.anatomic_regions[0].value == "10200004"
    import pydicom

    src = pydicom.dcmread(next(ct_dir.glob("*.dcm")))
    ds = pydicom.dcmread(seg_path)
    assert ds.PatientID == src.PatientID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SpecificCharacterSet == "ISO_IR 100"


def test_dicom_seg_deidentified(dcmqi_result, tmp_path):
    import pydicom

    folder, ct_dir, label, _ = dcmqi_result
    src = pydicom.dcmread(next(ct_dir.glob("*.dcm")))
    paths = run_export(folder, tmp_path / "deid", ["dicom-seg"], ct_dicom=ct_dir, deidentify=True)
    seg_path = paths["dicom-seg"][0]
    ds = pydicom.dcmread(seg_path)
    assert str(ds.PatientName) != str(src.PatientName) and ds.PatientID != src.PatientID
    assert ds.StudyInstanceUID != src.StudyInstanceUID
    raw = seg_path.read_bytes()
    assert str(src.PatientName).encode() not in raw and str(src.PatientID).encode() not in raw
    derived = sorted((tmp_path / "deid" / "ct_dicom").glob("*.dcm"))
    assert len(derived) == 3
    for f in derived:
        d = pydicom.dcmread(f)
        assert d.PatientID == ds.PatientID and str(src.PatientName).encode() not in f.read_bytes()
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_path) == []
    masks = _seg_masks(seg_path, derived)
    np.testing.assert_array_equal(masks["Liver"], label == 1)


def test_dicom_seg_from_nifti_ct_writes_derived_series(phantom_result, tmp_path):
    folder, ct, label, lesions = phantom_result
    paths = run_export(folder, tmp_path / "out", ["dicom-seg"])
    seg_path = paths["dicom-seg"][0]
    derived = sorted((tmp_path / "out" / "ct_dicom").glob("*.dcm"))
    assert len(derived) == ct.GetSize()[2]
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_path) == []
    masks = _seg_masks(seg_path, derived)
    np.testing.assert_array_equal(masks["Liver"], label == 1)
    np.testing.assert_array_equal(masks["Lesion 1"], lesions == 1)


def _mass_volume(path: Path) -> tuple[float, tuple]:
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    props = vtk.vtkMassProperties()
    props.SetInputData(reader.GetOutput())
    props.Update()
    return props.GetVolume(), reader.GetOutput().GetBounds()


@pytest.mark.parametrize("use_slicer", [True, False])
def test_surfaces_enclose_segment_volume(phantom_result, tmp_path, monkeypatch, use_slicer):
    import LiverTumorAILib.export.surfaces as surfaces

    if use_slicer and not scene_available():
        pytest.skip("slicer-core not installed")
    monkeypatch.setattr(surfaces, "scene_available", lambda: use_slicer)
    folder, ct, label, lesions = phantom_result
    voxel = float(np.prod(ct.GetSpacing()))
    paths = run_export(folder, tmp_path / "ras", ["stl", "obj"], coordinates="RAS")
    names = sorted(p.name for p in paths["stl"])
    assert names == ["Lesion_1.stl", "Liver.stl"]
    assert sorted(p.name for p in paths["obj"]) == ["Lesion_1.obj", "Liver.obj"]
    liver_vol, liver_ras = _mass_volume(tmp_path / "ras" / "surfaces" / "Liver.stl")
    lesion_vol, _ = _mass_volume(tmp_path / "ras" / "surfaces" / "Lesion_1.stl")
    # The liver surface is hollow where the lesion is: enclosed volume = liver-only voxels.
    assert liver_vol == pytest.approx((label == 1).sum() * voxel, rel=0.08)
    assert lesion_vol == pytest.approx((lesions == 1).sum() * voxel, rel=0.10)
    # RAS: x, y of the LPS physical bounds negated
    idx = np.argwhere(label > 0)
    lps_lo = ct.TransformIndexToPhysicalPoint([int(v) for v in idx.min(0)[::-1]])
    lps_hi = ct.TransformIndexToPhysicalPoint([int(v) for v in idx.max(0)[::-1]])
    np.testing.assert_allclose([-liver_ras[1], -liver_ras[3], liver_ras[5]], [lps_lo[0], lps_lo[1], lps_hi[2]],
                               atol=2.5)
    lps = run_export(folder, tmp_path / "lps", ["stl"], coordinates="LPS")
    _, liver_lps = _mass_volume(lps["stl"][1] if lps["stl"][1].name == "Liver.stl" else lps["stl"][0])
    np.testing.assert_allclose(liver_lps, [-liver_ras[1], -liver_ras[0], -liver_ras[3], -liver_ras[2],
                                           liver_ras[4], liver_ras[5]], atol=1e-3)


def test_html_report_nifti_and_seg_nrrd(phantom_result, tmp_path):
    folder, ct, label, lesions = phantom_result
    formats = ["html", "nifti"] + (["seg.nrrd"] if scene_available() else [])
    paths = run_export(folder, tmp_path / "out", formats)
    page = paths["html"][0].read_text(encoding="utf-8")
    assert '<table id="lesions">' in page and "16.00" in page and "0.83" in page and "malignant" in page
    assert "Not for clinical use" in page and "synthetic demo weights" in page
    assert "dual-stream: version demo-0.1" in page
    assert "120 ml drawn as liver did not look like liver on the CT and was removed &lt;check&gt;" in page
    assert page.count("data:image/png;base64,") == 1
    nii = sitk.ReadImage(str(tmp_path / "out" / "labelmap.nii.gz"))
    arr = sitk.GetArrayFromImage(nii)
    legend = json.loads((tmp_path / "out" / "labelmap.json").read_text(encoding="utf-8"))["segments"]
    by_name = {s["name"]: s["value"] for s in legend}
    assert int((arr == by_name["Liver"]).sum()) == int((label == 1).sum())
    assert int((arr == by_name["Lesion 1"]).sum()) == int((lesions == 1).sum())
    np.testing.assert_allclose(nii.GetOrigin(), ct.GetOrigin())
    if scene_available():
        import slicerio

        sio = slicerio.read_segmentation(str(tmp_path / "out" / "segmentation.seg.nrrd"))
        assert sorted(s["name"] for s in sio["segments"]) == ["Lesion 1", "Liver"]


def test_bad_input_is_one_clear_error(phantom_result, tmp_path):
    folder, *_ = phantom_result
    with pytest.raises(InputError, match="not found"):
        run_export(tmp_path / "missing", tmp_path / "o1", ["nifti"])
    with pytest.raises(InputError, match="unknown export format"):
        run_export(folder, tmp_path / "o2", ["png"])
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "report.json").write_text(json.dumps({**REPORT, "inputs": {"ct": str(tmp_path / "gone.nii.gz")}}))
    with pytest.raises(InputError, match="--ct-dicom"):
        run_export(broken, tmp_path / "o3", ["nifti", "dicom-seg"])
    assert not (tmp_path / "o3").exists()  # nothing half-written
    (broken / "report.json").write_text("{not json")
    with pytest.raises(InputError, match="report.json"):
        run_export(broken, tmp_path / "o4", ["nifti"])
