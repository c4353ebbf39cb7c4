"""Image I/O: exact geometry round trips, real DICOM, and every kind of bad input -> one-line InputError."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError, OutputError
from LiverTumorAILib.io import (
    check_ct_intensities,
    load_image,
    probe_image,
    read_image,
    read_segmentation,
    write_dicom_series,
    write_image,
)

# --------------------------------------------------------------------------- helpers


def _ct_array(shape=(6, 20, 24), seed=0, dtype=np.int16) -> np.ndarray:
    """Small CT-like volume: air around a soft-tissue block, distinct values everywhere."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-50, 200, shape).astype(dtype)
    a[:, :3, :] = -1000
    return a


def _image(arr: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(10.5, -3.25, 100.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _oblique() -> tuple:
    return sitk.VersorTransform((1.0, 2.0, 3.0), 0.4).GetMatrix()


GEOMETRIES = {
    "identity-anisotropic": dict(spacing=(0.7, 0.8, 2.5), direction=None),
    "flipped-xy": dict(spacing=(0.9, 0.9, 3.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    "flipped-z-lefthanded": dict(spacing=(1.0, 0.5, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)),
    "oblique": dict(spacing=(0.75, 0.75, 1.25), direction=_oblique()),
}


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol, rtol=0)


def _raises_one_line(path, match: str, what: str = "CT") -> str:
    with pytest.raises(InputError, match=match) as info:
        read_image(path, what)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(Path(path).name + ":"), msg
    return msg


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
@pytest.mark.parametrize("ext,tol", [(".nii.gz", 1e-5), (".nrrd", 1e-12), (".mha", 1e-12)])
def test_round_trip_file_formats(tmp_path: Path, geom: str, ext: str, tol: float) -> None:
    arr = _ct_array()
    img = _image(arr, **GEOMETRIES[geom])
    out = write_image(img, tmp_path / f"ct{ext}")
    assert out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    back = read_image(out)
    _assert_same_geometry(back, img, tol)  # NIfTI stores the orientation as float32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetPixelID() == img.GetPixelID()


def test_round_trip_float_values_exact(tmp_path: Path) -> None:
    arr = _ct_array().astype(np.float32) + np.float32(0.25)
    img = _image(arr, direction=_oblique())
    for ext in (".nii.gz", ".nrrd"):
        back = read_image(write_image(img, tmp_path / f"f{ext}"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)


def test_write_image_is_atomic_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    write_image(_image(_ct_array(seed=1)), target)
    write_image(_image(_ct_array(seed=2)), target)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(target)), _ct_array(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_write_image_failure_is_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import shutil as _shutil

    def full_disk(image, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: could not write")

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    monkeypatch.setattr(_shutil, "disk_usage", lambda p: _shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OutputError, match="disk is full"):
        write_image(_image(_ct_array()), tmp_path / "ct.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_image_into_a_file_path_is_output_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError):
        write_image(_image(_ct_array()), tmp_path / "afile" / "ct.nii.gz")


# --------------------------------------------------------------------------- DICOM series


@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
def test_dicom_series_round_trip(tmp_path: Path, geom: str) -> None:
    arr = _ct_array(shape=(5, 16, 18))
    img = _image(arr, **GEOMETRIES[geom])
    files = write_dicom_series(img, tmp_path / "dcm", patient="TEST^PATIENT", patient_id="P42")
    assert len(files) == 5 and all(f.exists() for f in files)
    loaded = load_image(tmp_path / "dcm")
    back = loaded.image
    expected = img
    d = np.array(img.GetDirection()).reshape(3, 3)
    if np.linalg.det(d) < 0:
        # DICOM stacks are right-handed: a mirrored volume comes back with the slice order
        # reversed; same voxels at the same physical points.
        expected = sitk.Flip(img, [False, False, True])
    _assert_same_geometry(back, expected, 1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected))
    assert "5 files" in loaded.message


def test_dicom_series_tags(tmp_path: Path) -> None:
    import pydicom

    img = _image(_ct_array(shape=(3, 8, 10)), direction=_oblique())
    files = write_dicom_series(img, tmp_path / "dcm", patient="DOE^JANE", patient_id="ID7", study_uid="1.2.3.4")
    dss = [pydicom.dcmread(f) for f in files]
    assert {ds.StudyInstanceUID for ds in dss} == {"1.2.3.4"}
    assert len({ds.SeriesInstanceUID for ds in dss}) == 1 and len({ds.FrameOfReferenceUID for ds in dss}) == 1
    assert len({ds.SOPInstanceUID for ds in dss}) == 3
    ds = dss[1]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "DOE^JANE" and ds.PatientID == "ID7"
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.8, 0.7])
    assert float(ds.SliceThickness) == pytest.approx(2.5)
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               img.TransformIndexToPhysicalPoint((0, 0, 1)), atol=1e-9)
    d = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                               list(d[:, 0]) + list(d[:, 1]), atol=1e-12)
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0


def test_dicom_series_float_ct_uses_rescale(tmp_path: Path) -> None:
    arr = _ct_array(shape=(3, 8, 10)).astype(np.float32) * np.float32(1.37)
    img = _image(arr)
    write_dicom_series(img, tmp_path / "dcm")
    back = sitk.GetArrayFromImage(read_image(tmp_path / "dcm")).astype(np.float64)
    step = (arr.max() - arr.min()) / 65535
    assert np.abs(back - arr).max() <= step


def test_real_dicom_series_totalsegmentator(real_data_dir: Path) -> None:
    folder = real_data_dir / "totalsegmentator" / "example_ct_dicom"
    loaded = load_image(folder)
    img = loaded.image
    assert img.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(img.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    assert "CT Body 3.0" in loaded.message and "20 files" in loaded.message
    check_ct_intensities(img, folder)
    # one file of the series -> the whole series, same geometry
    one = read_image(sorted(folder.iterdir())[5])
    _assert_same_geometry(one, img, 1e-9)


def test_real_dicom_series_dcmqi(real_data_dir: Path) -> None:
    img = read_image(real_data_dir / "dcmqi" / "ct")
    assert img.GetSize() == (512, 512, 3)
    check_ct_intensities(img, "ct")
    # the parent holds only subfolders: the largest series one level down is chosen and named
    loaded = load_image(real_data_dir / "dcmqi")
    assert loaded.image.GetSize() == (512, 512, 3)
    assert "subfolder ct" in loaded.message


def test_real_ct_and_mri_files(real_data_dir: Path) -> None:
    ct = read_image(real_data_dir / "chaos" / "ct" / "ct.nii.gz")
    assert ct.GetSize() == (512, 512, 78)
    check_ct_intensities(ct, "ct.nii.gz")
    mri = real_data_dir / "totalsegmentator" / "example_mr_sm.nii.gz"
    img = read_image(mri, "MRI")
    with pytest.raises(InputError, match=r"example_mr_sm.nii.gz: does not look like a CT.*MRI"):
        check_ct_intensities(img, mri)


# --------------------------------------------------------------------------- bad inputs


def test_missing(tmp_path: Path) -> None:
    _raises_one_line(tmp_path / "nope.nii.gz", "not found")


def test_empty_folder_and_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _raises_one_line(tmp_path / "empty", "folder is empty")
    d = tmp_path / "notes"
    d.mkdir()
    (d / "readme.txt").write_text("hello")
    (d / "scan.nii.gz").write_bytes(b"x")
    _raises_one_line(d, "no DICOM image series")


def test_text_file_named_nifti(tmp_path: Path) -> None:
    p = tmp_path / "ct.nii.gz"
    p.write_text("this is not an image\n")
    _raises_one_line(p, "not an image file|truncated or damaged")
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    _raises_one_line(tmp_path / "zero.nii.gz", "empty")


def _nifti_bytes(arr: np.ndarray, tmp_path: Path) -> bytes:
    p = tmp_path / "src.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    data = p.read_bytes()
    p.unlink()
    return data


def test_truncated_nifti_and_nrrd(tmp_path: Path) -> None:
    data = _nifti_bytes(_ct_array(), tmp_path)
    (tmp_path / "t.nii").write_bytes(data[: len(data) // 2])
    _raises_one_line(tmp_path / "t.nii", "truncated")
    gz = gzip.compress(data)
    (tmp_path / "t.nii.gz").write_bytes(gz[: len(gz) * 2 // 3])
    _raises_one_line(tmp_path / "t.nii.gz", "truncated|damaged")
    sitk.WriteImage(_image(_ct_array()), str(tmp_path / "full.nrrd"), True)
    raw = (tmp_path / "full.nrrd").read_bytes()
    (tmp_path / "t.nrrd").write_bytes(raw[: len(raw) - 200])
    _raises_one_line(tmp_path / "t.nrrd", "truncated|damaged")


def test_corrupt_dicom_series(tmp_path: Path) -> None:
    files = write_dicom_series(_image(_ct_array(shape=(5, 12, 14))), tmp_path / "dcm")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 100])  # truncated slice in the middle
    _raises_one_line(tmp_path / "dcm", "missing or damaged|damaged")
    for f in files:
        f.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(64))
    _raises_one_line(tmp_path / "dcm", "no DICOM image series")


def test_single_slice_dicom(tmp_path: Path) -> None:
    files = write_dicom_series(_image(_ct_array(shape=(1, 12, 14))), tmp_path / "dcm")
    assert len(files) == 1
    _raises_one_line(tmp_path / "dcm", "only one slice")


def test_2d_and_one_slice(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_ct_array()[0]), str(tmp_path / "slice.nii.gz"))
    _raises_one_line(tmp_path / "slice.nii.gz", "2D")
    sitk.WriteImage(sitk.GetImageFromArray(_ct_array()[:1]), str(tmp_path / "one.nrrd"))
    _raises_one_line(tmp_path / "one.nrrd", "2D")
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(30, dtype=np.uint8).reshape(5, 6)), str(tmp_path / "x.png"))
    _raises_one_line(tmp_path / "x.png", "2D")


def test_4d(tmp_path: Path) -> None:
    vol = sitk.GetImageFromArray(_ct_array())
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp_path / "t.nii.gz"))
    _raises_one_line(tmp_path / "t.nii.gz", "4D")
    # a singleton 4th axis is just a 3D volume
    sitk.WriteImage(sitk.JoinSeries([vol]), str(tmp_path / "t1.nii.gz"))
    assert read_image(tmp_path / "t1.nii.gz").GetSize() == vol.GetSize()


def test_rgb_and_vector(tmp_path: Path) -> None:
    vol = sitk.GetImageFromArray(_ct_array())
    sitk.WriteImage(sitk.Compose([sitk.Cast(vol, sitk.sitkUInt8)] * 3), str(tmp_path / "rgb.nrrd"))
    _raises_one_line(tmp_path / "rgb.nrrd", "RGB")
    sitk.WriteImage(sitk.Compose([sitk.Cast(vol, sitk.sitkFloat32)] * 2), str(tmp_path / "vec.nii.gz"))
    _raises_one_line(tmp_path / "vec.nii.gz", "vector")


_NRRD = ("NRRD0004\ntype: short\ndimension: 3\nencoding: raw\nendian: little\n"
         "space: left-posterior-superior\nspace origin: (0,0,0)\nsizes: {sizes}\n"
         "space directions: ({sx},0,0) (0,1,0) (0,0,1)\n\n")


def _crafted_nrrd(path: Path, sizes: str, sx: str = "1", data: bytes = b"\1\0" * 100) -> Path:
    path.write_bytes(_NRRD.format(sizes=sizes, sx=sx).encode() + data)
    return path


def test_zero_size(tmp_path: Path) -> None:
    _raises_one_line(_crafted_nrrd(tmp_path / "z.nrrd", "0 10 10"), "empty|not an image")


def test_absurd_dimensions_refused_before_allocation(tmp_path: Path) -> None:
    t0 = time.monotonic()
    _raises_one_line(_crafted_nrrd(tmp_path / "huge.nrrd", "100000 100000 100000"), "implausibly large")
    _raises_one_line(_crafted_nrrd(tmp_path / "tall.nrrd", "64 64 50000"), "implausibly large")
    data = bytearray(_nifti_bytes(_ct_array(), tmp_path))
    data[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (tmp_path / "huge.nii").write_bytes(bytes(data))
    _raises_one_line(tmp_path / "huge.nii", "implausibly large")
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    msg = _raises_one_line(tmp_path / "huge.nii.gz", "implausibly large")
    assert "30000x30000x30000" in msg
    assert time.monotonic() - t0 < 2.0  # nothing was allocated or decompressed


def test_bad_spacing(tmp_path: Path) -> None:
    data = bytes(range(200))
    _raises_one_line(_crafted_nrrd(tmp_path / "zero.nrrd", "5 5 4", sx="0", data=data), "spacing")
    _raises_one_line(_crafted_nrrd(tmp_path / "tiny.nrrd", "5 5 4", sx="1e-6", data=data), "spacing")
    _raises_one_line(_crafted_nrrd(tmp_path / "big.nrrd", "5 5 4", sx="5000", data=data), "spacing")
    raw = bytearray(_nifti_bytes(_ct_array(), tmp_path))
    for name, value in (("z.nii", 0.0), ("n.nii", -2.0), ("nan.nii", float("nan"))):
        raw[76:108] = struct.pack("<8f", 1, value, 1, 1, 1, 1, 1, 1)
        (tmp_path / name).write_bytes(bytes(raw))
        _raises_one_line(tmp_path / name, "spacing")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path: Path, ext: str, bad: float) -> None:
    arr = _ct_array().astype(np.float32)
    arr[2, 5, 7] = bad
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"nf{ext}"))
    _raises_one_line(tmp_path / f"nf{ext}", "NaN or infinity")


def test_constant(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), -1000, np.int16)), str(tmp_path / "c.nii.gz"))
    _raises_one_line(tmp_path / "c.nii.gz", "same value")
    # an empty segmentation, or the lesion map of a result with no lesions, is legitimate
    for label_kind in ("segmentation", "lesion map"):
        assert read_image(tmp_path / "c.nii.gz", label_kind).GetSize() == (6, 5, 4)


def test_mri_as_ct(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mri = rng.gamma(2.0, 150.0, (8, 20, 20)).astype(np.float32)  # arbitrary positive MR intensities
    img = _image(mri)
    with pytest.raises(InputError, match="mri.nii.gz: does not look like a CT in Hounsfield units"):
        check_ct_intensities(img, tmp_path / "mri.nii.gz")
    z = (mri - mri.mean()) / mri.std()  # normalised MR
    with pytest.raises(InputError, match="is this an MRI"):
        check_ct_intensities(_image(z.astype(np.float32)), "z.nii.gz")
    check_ct_intensities(_image(_ct_array()), "ct.nii.gz")


def test_probe_image_is_header_only(tmp_path: Path) -> None:
    data = _nifti_bytes(_ct_array(), tmp_path)
    (tmp_path / "ok.nii").write_bytes(data)
    probe_image(tmp_path / "ok.nii")
    with pytest.raises(InputError, match="2D"):
        sitk.WriteImage(sitk.GetImageFromArray(_ct_array()[0]), str(tmp_path / "s.nrrd"))
        probe_image(tmp_path / "s.nrrd")


# --------------------------------------------------------------------------- segmentations


def test_read_segmentation_grid_checks(tmp_path: Path) -> None:
    ct = _image(_ct_array(), direction=_oblique())
    lab = np.zeros(_ct_array().shape, np.uint8)
    lab[2:4, 5:10, 5:10] = 1
    lab[3, 6:8, 6:8] = 2
    seg = sitk.GetImageFromArray(lab)
    seg.CopyInformation(ct)
    write_image(seg, tmp_path / "seg.nii.gz")
    out = read_segmentation(tmp_path / "seg.nii.gz", ct)
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), lab)
    _assert_same_geometry(out, ct, 0)

    shifted = sitk.Image(seg)
    shifted.SetOrigin(tuple(np.array(ct.GetOrigin()) + (0, 0, 5.0)))
    write_image(shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(InputError, match="shifted.nii.gz: segmentation is not on the CT's grid.*origin"):
        read_segmentation(tmp_path / "shifted.nii.gz", ct)

    write_image(sitk.GetImageFromArray(lab[:, :, :-1]), tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="size"):
        read_segmentation(tmp_path / "small.nii.gz", ct)

    other = sitk.Image(seg)
    other.SetSpacing((1.0, 1.0, 1.0))
    write_image(other, tmp_path / "sp.nrrd")
    with pytest.raises(InputError, match="spacing"):
        read_segmentation(tmp_path / "sp.nrrd", ct)

    rot = sitk.Image(seg)
    rot.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(rot, tmp_path / "rot.nrrd")
    with pytest.raises(InputError, match="orientation"):
        read_segmentation(tmp_path / "rot.nrrd", ct)

    neg = sitk.GetImageFromArray(lab.astype(np.int16) - 1)
    neg.CopyInformation(ct)
    write_image(neg, tmp_path / "neg.nrrd")
    with pytest.raises(InputError, match="non-negative"):
        read_segmentation(tmp_path / "neg.nrrd", ct)


def test_read_segmentation_tolerates_float_header_noise(tmp_path: Path) -> None:
    ct = _image(_ct_array(), direction=_oblique())
    seg = sitk.GetImageFromArray(np.zeros(_ct_array().shape, np.uint8))
    seg.CopyInformation(ct)
    write_image(seg, tmp_path / "seg.nii.gz")  # NIfTI keeps float32 geometry only
    ct_nrrd = read_image(write_image(ct, tmp_path / "ct.nrrd"))
    out = read_segmentation(tmp_path / "seg.nii.gz", ct_nrrd)
    _assert_same_geometry(out, ct_nrrd, 0)


# --------------------------------------------------------------------------- fuzz regressions


def test_error_messages_never_contain_newlines_or_cpp_paths(tmp_path: Path) -> None:
    p = tmp_path / "garbage.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    msg = _raises_one_line(p, "truncated|damaged|not an image")
    assert ".cxx" not in msg


def test_folder_with_subfolders_and_other_series(tmp_path: Path) -> None:
    write_dicom_series(_image(_ct_array(shape=(4, 8, 9))), tmp_path / "study" / "small", series_description="small")
    write_dicom_series(_image(_ct_array(shape=(7, 8, 9))), tmp_path / "study" / "big", series_description="big")
    loaded = load_image(tmp_path / "study")
    assert loaded.image.GetSize() == (9, 8, 7)
    assert "'big'" in loaded.message and "1 other series" in loaded.message
    shutil.rmtree(tmp_path / "study" / "big")
    assert read_image(tmp_path / "study").GetSize() == (9, 8, 4)


def test_regression_fuzz_nifti_nan_vox_offset(tmp_path: Path) -> None:
    """Found by Testing/fuzz: a NaN vox_offset crashed the NIfTI check with ValueError."""
    raw = bytearray(_nifti_bytes(_ct_array(), tmp_path))
    raw[108:112] = b"\xff\xff\xff\xff"
    for name, data in (("nan.nii", bytes(raw)), ("nan.nii.gz", gzip.compress(bytes(raw)))):
        (tmp_path / name).write_bytes(data)
        _raises_one_line(tmp_path / name, "damaged")


def test_header_claiming_more_than_the_file_holds_refused_before_allocation(tmp_path: Path) -> None:
    """2048x2048x500 doubles (16 GB) is under the size limits but cannot fit a 1 kB file."""
    t0 = time.monotonic()
    for enc in ("raw", "gzip"):
        p = tmp_path / f"big_{enc}.nrrd"
        p.write_bytes(f"NRRD0004\ntype: double\ndimension: 3\nencoding: {enc}\nendian: little\n"
                      "sizes: 2048 2048 500\n\n".encode() + b"\0" * 1000)
        _raises_one_line(p, "truncated or its header is damaged")
    mha = tmp_path / "big.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 400\nElementType = MET_FLOAT\n"
                    b"CompressedData = True\nElementDataFile = LOCAL\n" + b"\0" * 100)
    _raises_one_line(mha, "truncated or its header is damaged")
    assert time.monotonic() - t0 < 2.0


def test_regression_fuzz_metaimage_huge_ndims_segfault(tmp_path: Path) -> None:
    """Found by fuzzing: ITK's MetaImage reader segfaults on NDims = 4444; checked first."""
    img = _image(_ct_array())
    write_image(img, tmp_path / "ok.mha")
    text = (tmp_path / "ok.mha").read_bytes()
    (tmp_path / "bad.mha").write_bytes(text.replace(b"NDims = 3", b"NDims = 4444", 1))
    _raises_one_line(tmp_path / "bad.mha", "MetaImage header is damaged")
    (tmp_path / "bad2.mha").write_bytes(text.replace(b"NDims = 3", b"NDims =4444 3", 1))
    _raises_one_line(tmp_path / "bad2.mha", "MetaImage header is damaged")


def test_regression_fuzz_nifti_orientation_hang(tmp_path: Path) -> None:
    """Found by fuzzing: invalid qform/sform codes with huge quaternion values made ITK hang."""
    raw = bytearray(_nifti_bytes(_ct_array(), tmp_path))
    raw[252:256] = struct.pack("<2h", 6657, 9111)
    raw[256:260] = struct.pack("<f", 1.33e37)
    (tmp_path / "hang.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    t0 = time.monotonic()
    _raises_one_line(tmp_path / "hang.nii.gz", "NIfTI header is damaged")
    raw[252:256] = struct.pack("<2h", 1, 0)
    (tmp_path / "q.nii").write_bytes(bytes(raw))
    _raises_one_line(tmp_path / "q.nii", "NIfTI header is damaged")
    assert time.monotonic() - t0 < 2.0


def test_regression_fuzz_ascii_nrrd_claiming_16gb(tmp_path: Path, monkeypatch) -> None:
    """Found by fuzzing (the process was OOM-killed): an ASCII-encoded NRRD claiming
    2048x2048x500 doubles passed the size limits and ITK allocated 16 GB."""
    p = tmp_path / "ascii.nrrd"
    p.write_bytes(b"NRRD0004\ntype: double\ndimension: 3\nencoding: ascii\nsizes: 2048 2048 500\n\n1 2 3 4\n")
    _raises_one_line(p, "truncated or its header is damaged")
    # bzip2 can expand without bound: the memory cap (here set by the environment) refuses it
    p = tmp_path / "bz.nrrd"
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nencoding: bzip2\nendian: little\nsizes: 1024 1024 500\n\nBZh9")
    monkeypatch.setenv("LIVERTUMORAI_MAX_IMAGE_GB", "0.5")
    _raises_one_line(p, "needs 1.0 GB of memory")


# --------------------------------------------------------------------------- CT given as the MRI


def test_real_ct_given_as_mri_is_refused(real_data_dir: Path) -> None:
    from LiverTumorAILib.io import check_mri_intensities

    for path in (real_data_dir / "chaos" / "ct" / "ct.nii.gz", real_data_dir / "totalsegmentator" / "example_ct.nii.gz"):
        with pytest.raises(InputError) as err:
            check_mri_intensities(read_image(path, "MRI"), path)
        message = str(err.value)
        assert message.startswith(f"{path.name}: the MRI looks like a CT: ") and "\n" not in message
        assert message.endswith("; give the MRI (or leave --mri out)")


def test_real_and_phantom_mris_are_accepted(real_data_dir: Path) -> None:
    """Every real MR here (the CHAOS T2 copies are intensity-normalised, 0..~1300) and phantom MRIs."""
    from LiverTumorAILib.io import check_mri_intensities
    from LiverTumorAILib.phantom import generate_case

    files = sorted((real_data_dir / "chaos" / "mr_t2").glob("image_*.nii.gz"))
    assert len(files) == 20
    for path in [real_data_dir / "totalsegmentator" / "example_mr_sm.nii.gz", *files]:
        check_mri_intensities(read_image(path, "MRI"), path)
    for seed in (0, 1, 2):
        check_mri_intensities(generate_case(seed, size=64, slices=16).mri, f"phantom{seed}.nii.gz")


def test_mri_padded_with_minus_1024_is_accepted(real_data_dir: Path) -> None:
    """An MRI resampled onto a larger grid with -1024 padding has "air" but no fat: still an MRI."""
    from LiverTumorAILib.io import check_mri_intensities

    path = real_data_dir / "totalsegmentator" / "example_mr_sm.nii.gz"
    mri = read_image(path, "MRI")
    padded = sitk.ConstantPad(mri, [20, 20, 5], [20, 20, 5], -1024)
    assert np.mean(sitk.GetArrayViewFromImage(padded) <= -900) > 0.3
    check_mri_intensities(padded, path)
