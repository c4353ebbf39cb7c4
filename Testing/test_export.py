"""Export: DICOM SEG (dciodvfy + highdicom read-back), surfaces, NIfTI, seg.nrrd, HTML, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib import cli
from LiverTumorAILib.errors import InputError
from LiverTumorAILib.export import run_export
from LiverTumorAILib.progress import parse_progress_line
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


NO_LESIONS_REPORT = {**REPORT, "tumour_burden_percent": 0.0, "lesion_count": 0, "lesions": [], "warnings": []}


def _write_result(folder: Path, ct: sitk.Image, label: np.ndarray, lesions: np.ndarray, ct_input: str,
                  report: dict = REPORT) -> Path:
    folder.mkdir(parents=True)
    for name, arr in (("segmentation.nii.gz", label.astype(np.uint8)), ("lesions.nii.gz", lesions.astype(np.uint16))):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ct)
        sitk.WriteImage(img, str(folder / name))
    (folder / "report.json").write_text(json.dumps({**report, "inputs": {"ct": ct_input}}))
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
def no_lesion_result(phantom_result, tmp_path_factory) -> tuple[Path, sitk.Image, np.ndarray]:
    """The phantom's liver with no lesion: lesions.nii.gz all 0, as `segment` writes it for a clean liver."""
    folder, ct, label, _ = phantom_result
    liver = (label > 0).astype(np.uint8)
    ct_input = json.loads((folder / "report.json").read_text())["inputs"]["ct"]
    out = _write_result(tmp_path_factory.mktemp("no_lesions") / "result", ct, liver, np.zeros(liver.shape, np.uint16),
                        ct_input, NO_LESIONS_REPORT)
    return out, ct, liver


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
        assert d.LongitudinalTemporalInformationModified == "UNMODIFIED" and d.StudyDate == src.StudyDate
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


def test_result_without_lesions_exports_every_format(no_lesion_result, tmp_path):
    """A clean liver is a normal result: every format is written, with the liver as the only segment."""
    from LiverTumorAILib.export.run import FORMATS

    folder, ct, liver = no_lesion_result
    formats = [f for f in FORMATS if f != "seg.nrrd" or scene_available()]
    out = tmp_path / "out"
    paths = run_export(folder, out, formats)
    assert sorted(paths) == sorted(formats)

    legend = json.loads((out / "labelmap.json").read_text(encoding="utf-8"))["segments"]
    assert [s["name"] for s in legend] == ["Liver"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelmap.nii.gz"))),
                                  liver * legend[0]["value"])

    seg_path = paths["dicom-seg"][0]
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_path) == []
    masks = _seg_masks(seg_path, sorted((out / "ct_dicom").glob("*.dcm")))
    assert sorted(masks) == ["Liver"]
    np.testing.assert_array_equal(masks["Liver"], liver == 1)

    assert [p.name for p in paths["stl"]] == ["Liver.stl"] and [p.name for p in paths["obj"]] == ["Liver.obj"]
    volume, _ = _mass_volume(out / "surfaces" / "Liver.stl")
    assert volume == pytest.approx(liver.sum() * float(np.prod(ct.GetSpacing())), rel=0.08)

    page = paths["html"][0].read_text(encoding="utf-8")
    assert "lesions: 0." in page and "No lesions found." in page and "<p>No lesions.</p>" in page
    assert "data:image/png;base64," not in page

    if scene_available():
        import slicerio

        sio = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
        assert [s["name"] for s in sio["segments"]] == ["Liver"]


# ----------------------------------------------------------------------------- surface coordinate systems


@pytest.fixture(scope="module")
def asymmetric_result(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An L-shaped liver, no lesion, far from the origin on a grid with flipped x and y axes.

    Returns the folder and the mask's physical (LPS) centroid. A mirrored export moves the
    centroid by hundreds of mm; flipped or swapped index axes move it by several mm.
    """
    root = tmp_path_factory.mktemp("asym")
    label = np.zeros((16, 34, 40), np.uint8)
    label[4:12, 6:12, 5:33] = 1   # long bar along x
    label[4:12, 12:28, 5:13] = 1  # arm along y at the low-x end
    ct = sitk.GetImageFromArray(np.where(label > 0, 60, -900).astype(np.int16))
    ct.SetSpacing((1.5, 1.2, 2.0))
    ct.SetOrigin((120.0, 80.0, -300.0))
    ct.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(ct, str(root / "ct.nii.gz"))
    folder = _write_result(root / "result", ct, label, np.zeros(label.shape, np.uint16), str(root / "ct.nii.gz"),
                           NO_LESIONS_REPORT)
    centroid_lps = np.mean([ct.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
                            for k, j, i in np.argwhere(label > 0)], axis=0)
    return folder, centroid_lps


def _read_mesh(path: Path):
    """(points (n, 3), triangles (m, 3), header text) with VTK's readers, which Slicer uses too."""
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkSTLReader() if path.suffix == ".stl" else vtk.vtkOBJReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    cells = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    header = reader.GetHeader() if path.suffix == ".stl" else reader.GetComment()
    return points, cells, header


def _volume_centroid(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Centroid of the solid a closed, consistently oriented triangle mesh encloses."""
    a, b, c = (points[triangles[:, i]] for i in range(3))
    volumes = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0  # signed tetrahedra with the origin
    return ((a + b + c) / 4.0 * volumes[:, None]).sum(axis=0) / volumes.sum()


@pytest.mark.parametrize("use_slicer", [True, False])
def test_surfaces_carry_slicer_space_tag_and_sit_at_the_mask(asymmetric_result, tmp_path, monkeypatch, use_slicer):
    """Each file says SPACE=LPS/RAS where Slicer reads it, and its coordinates are in that space."""
    import LiverTumorAILib.export.surfaces as surfaces

    if use_slicer and not scene_available():
        pytest.skip("slicer-core not installed")
    monkeypatch.setattr(surfaces, "scene_available", lambda: use_slicer)
    folder, centroid_lps = asymmetric_result
    centroid_ras = centroid_lps * [-1, -1, 1]
    meshes = {}
    for space, expected in (("LPS", centroid_lps), ("RAS", centroid_ras)):
        run_export(folder, tmp_path / space, ["stl", "obj"], coordinates=space)
        for fmt in ("stl", "obj"):
            path = tmp_path / space / "surfaces" / f"Liver.{fmt}"
            points, triangles, header = _read_mesh(path)
            other = "RAS" if space == "LPS" else "LPS"
            assert f"SPACE={space}" in header and f"SPACE={other}" not in header, (path, header)
            np.testing.assert_allclose(_volume_centroid(points, triangles), expected, atol=0.5)
            meshes[space, fmt] = points
    raw = (tmp_path / "LPS" / "surfaces" / "Liver.stl").read_bytes()
    assert b"SPACE=LPS" in raw[:80] and not raw.startswith(b"solid")  # binary STL: the tag is in its header
    assert (tmp_path / "LPS" / "surfaces" / "Liver.obj").read_text().startswith("# ")
    for fmt in ("stl", "obj"):  # LPS = RAS with x and y negated, vertex for vertex
        def rows(a: np.ndarray) -> np.ndarray:
            return a[np.lexsort(a.T[::-1])]

        np.testing.assert_array_equal(rows(meshes["LPS", fmt]), rows(meshes["RAS", fmt] * [-1, -1, 1]))
    assert sorted(p.name for p in (tmp_path / "LPS" / "surfaces").iterdir()) == ["Liver.obj", "Liver.stl"]


def test_default_surface_space_is_lps_and_slicer_loads_it_unmirrored(asymmetric_result, tmp_path):
    """With no --coordinates the files are LPS; Slicer's model reader puts them where the mask is (in RAS)."""
    from LiverTumorAILib.cli import build_parser
    from LiverTumorAILib.runner import export_command

    assert build_parser().parse_args(["export", "res", "-o", "out"]).coordinates == "LPS"
    cmd = export_command("res", "out", ["stl"])
    assert cmd[cmd.index("--coordinates") + 1] == "LPS"
    folder, centroid_lps = asymmetric_result
    paths = run_export(folder, tmp_path / "default", ["stl", "obj"])
    for path in paths["stl"] + paths["obj"]:
        assert "SPACE=LPS" in _read_mesh(path)[2]
    if not scene_available():
        return
    import slicer
    from vtk.util import numpy_support

    for space in ("LPS", "RAS"):
        exported = run_export(folder, tmp_path / space, ["stl", "obj"], coordinates=space)
        for path in exported["stl"] + exported["obj"]:
            scene = slicer.vtkMRMLScene()
            model = slicer.vtkMRMLModelNode()
            scene.AddNode(model)
            storage = slicer.vtkMRMLModelStorageNode()
            scene.AddNode(storage)
            storage.SetFileName(str(path))
            # Slicer's guess for an untagged file is the opposite space: only the tag can make this pass
            storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemRAS if space == "LPS"
                                        else slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
            assert storage.ReadData(model) == 1
            poly = model.GetPolyData()
            points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
            triangles = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
            np.testing.assert_allclose(_volume_centroid(points, triangles), centroid_lps * [-1, -1, 1], atol=0.5,
                                       err_msg=str(path))


# ----------------------------------------------------------------------------- DICOM CT with blank UIDs


@pytest.fixture(scope="module")
def blank_uid_dicom_result(real_data_dir, tmp_path_factory):
    """A result on TotalSegmentator's example CT DICOM, whose files have empty SOP/Study/Series UIDs."""
    from LiverTumorAILib.io.image_io import read_image

    ct_dir = real_data_dir / "totalsegmentator" / "example_ct_dicom"
    if not ct_dir.is_dir():
        pytest.skip(f"{ct_dir} not present")
    ct = read_image(ct_dir)
    nz, ny, nx = ct.GetSize()[::-1]
    label = np.zeros((nz, ny, nx), np.uint8)
    label[2:nz - 2, ny // 2 - 60:ny // 2 + 40, nx // 2 - 120:nx // 2 - 20] = 1
    z, y, x = np.ogrid[:nz, :ny, :nx]
    lesion = ((z - nz // 2) * 2.0) ** 2 + ((y - ny // 2 + 10) * 0.98) ** 2 + ((x - nx // 2 + 70) * 0.98) ** 2 < 12 ** 2
    label[lesion] = 2
    folder = _write_result(tmp_path_factory.mktemp("blank_uids") / "result", ct, label, lesion.astype(np.uint16),
                           str(ct_dir))
    return folder, ct_dir, label


@pytest.mark.parametrize("deidentify", [False, True])
def test_dicom_seg_from_dicom_with_blank_uids_uses_derived_ct(blank_uid_dicom_result, tmp_path, capsys, deidentify):
    """Blank UIDs in the source: one warning, the SEG references a derived CT, other formats still written."""
    import pydicom

    from LiverTumorAILib import cli

    folder, ct_dir, label = blank_uid_dicom_result
    src = pydicom.dcmread(next(p for p in sorted(ct_dir.iterdir()) if p.is_file()))
    assert not str(src.SOPInstanceUID) and not str(src.StudyInstanceUID)  # the data this test is about
    out = tmp_path / "out"
    argv = ["export", str(folder), "-o", str(out), "--formats", "dicom-seg,nifti,stl,html"]
    rc = cli.main(argv + (["--deidentify"] if deidentify else []))
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings_ = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings_) == 1 and "SOPInstanceUID" in warnings_[0] and "ct_dicom/" in warnings_[0]
    assert "internal error" not in err
    derived = sorted((out / "ct_dicom").glob("*.dcm"))
    assert len(derived) == len(list(ct_dir.iterdir()))
    seg_path = out / "segmentation.dcm"
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_path) == []
    masks = _seg_masks(seg_path, derived)
    np.testing.assert_array_equal(masks["Liver"], label == 1)
    np.testing.assert_array_equal(masks["Lesion 1"], label == 2)
    ds = pydicom.dcmread(seg_path)
    assert ds.StudyInstanceUID == pydicom.dcmread(derived[0]).StudyInstanceUID
    if deidentify:
        assert str(ds.PatientName) == "ANONYMOUS^PATIENT"
        assert ds.FrameOfReferenceUID != src.FrameOfReferenceUID
    else:  # same frame of reference as the original CT: viewers register the SEG with it
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    for name in ("labelmap.nii.gz", "report.html", "surfaces/Liver.stl", "surfaces/Lesion_1.stl"):
        assert (out / name).is_file(), name


def test_overview_picture_renders_a_result(phantom_result, tmp_path):
    """docs/render_overview.py (the extension's overview picture) draws a real result: the PNG
    exists, has the figure's size, and is not blank."""
    import runpy

    import matplotlib.image as mpimg

    folder = phantom_result[0]
    render = runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "render_overview.py"))["render_overview"]
    png = render(folder, tmp_path / "overview.png")
    pixels = mpimg.imread(str(png))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 900
    assert float(pixels[..., :3].std()) > 0.05  # CT, contours and table drawn, not an empty canvas


# --------------------------------------------------------------------------- export --progress


def _export_cli(result: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "LiverTumorAILib", "export", str(result), "-o", str(out)]
    cmd += ["--formats", "nifti,stl,html", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "LIVERTUMORAI_DEBUG": ""})


def test_export_progress_json_lines(phantom_result, tmp_path: Path) -> None:
    result_dir = phantom_result[0]
    r = _export_cli(result_dir, tmp_path / "json", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [parse_progress_line(line) for line in r.stderr.splitlines()]
    assert events and all(e is not None for e in events), r.stderr  # every stderr line is a protocol line
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages == ["read", "nifti", "stl", "html"]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and all(0.0 <= f < 1.0 for f in fractions)
    assert events[-1] == {"event": "done", "outdir": str(tmp_path / "json")}

    # the files are the same whatever the progress display
    r = _export_cli(result_dir, tmp_path / "none", "--progress", "none")
    assert r.returncode == 0 and r.stderr == "", r.stderr

    def files(folder: Path) -> list:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    assert files(tmp_path / "json") == files(tmp_path / "none")
    assert "labelmap.nii.gz" in files(tmp_path / "json")
    for name in ("labelmap.nii.gz", "labelmap.json"):
        assert (tmp_path / "json" / name).read_bytes() == (tmp_path / "none" / name).read_bytes()


def test_export_progress_default_is_bar(capsys, phantom_result, tmp_path: Path) -> None:
    result_dir = phantom_result[0]
    capsys.readouterr()
    assert cli.main(["export", str(result_dir), "-o", str(tmp_path / "bar"), "--formats", "nifti"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "livertumorai:   0% nifti: writing nifti" in err
    assert err[-1] == f"livertumorai: done: results in {tmp_path / 'bar'}"
