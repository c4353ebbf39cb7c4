"""Fuzzing the readers: damaged headers/bytes must only ever give a one-line user error.

Not in CI (marked fuzz + slow). Run for a bounded time, e.g.
    LIVERTUMORAI_FUZZ_EXAMPLES=400 python -m pytest -m fuzz Testing/fuzz -q
Crashes found here become regression tests in Testing/test_image_io.py.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from LiverTumorAILib.errors import InputError, LiverTumorAIError  # noqa: E402
from LiverTumorAILib.io import read_image, write_dicom_series  # noqa: E402
from LiverTumorAILib.io.image_io import MAX_INPLANE, MAX_SLICES  # noqa: E402

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

# A damaged header may claim any volume within the size limits; keep what the readers may
# legitimately allocate small while fuzzing on a shared machine.
os.environ.setdefault("LIVERTUMORAI_MAX_IMAGE_GB", "0.5")

EXAMPLES = int(os.environ.get("LIVERTUMORAI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))


def _seed_volume() -> sitk.Image:
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 400, (4, 9, 11)).astype(np.int16)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection(sitk.VersorTransform((1.0, 2.0, 3.0), 0.3).GetMatrix())
    return img


def _seed_bytes(ext: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"seed{ext}"
        sitk.WriteImage(_seed_volume(), str(p), ext in (".nii.gz",))
        return p.read_bytes()


SEEDS = {ext: _seed_bytes(ext) for ext in (".nii", ".nrrd", ".mha")}
SEEDS[".nii.gz"] = SEEDS[".nii"]  # mutated uncompressed, then compressed


def _mutate(data: bytes, draw_ops) -> bytes:
    buf = bytearray(data)
    for op, pos, val in draw_ops:
        if not buf:
            break
        # bias towards the header, where the interesting fields live
        i = pos % (min(len(buf), 400) if op != "truncate" else len(buf))
        if op == "flip":
            buf[i] ^= 1 << (val % 8)
        elif op == "set":
            buf[i] = val % 256
        elif op == "insert":
            buf[i:i] = bytes([val % 256]) * (1 + val % 7)
        elif op == "delete":
            del buf[i:i + 1 + val % 7]
        elif op == "truncate":
            del buf[i:]
        elif op == "int16":
            buf[i:i + 2] = int(val - 32768).to_bytes(2, "little", signed=True)
        elif op == "float32":
            buf[i:i + 4] = np.array([[0.0, -1.0, 1e-30, 1e30, np.nan, np.inf, 7.5][val % 7]], "<f4").tobytes()
    return bytes(buf)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "int16", "float32"]),
                         st.integers(0, 10_000), st.integers(0, 65535)), min_size=1, max_size=6)


def _check_read(path: Path) -> None:
    try:
        img = read_image(path)
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith(path.name + ":"), str(e)
        return
    assert img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1
    sx, sy, sz = img.GetSize()
    assert 1 < sz <= MAX_SLICES and max(sx, sy) <= MAX_INPLANE
    assert all(s > 0 for s in img.GetSpacing())


@FUZZ
@given(ext=st.sampled_from(sorted(SEEDS)), ops=OPS)
def test_fuzz_image_bytes(ext: str, ops) -> None:
    data = _mutate(SEEDS[ext], ops)
    if ext == ".nii.gz":
        data = gzip.compress(data)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"ct{ext}"
        p.write_bytes(data)
        _check_read(p)


@FUZZ
@given(ops=OPS, cut=st.integers(0, 10_000))
def test_fuzz_gzip_stream(ops, cut: int) -> None:
    data = gzip.compress(SEEDS[".nii"])
    data = _mutate(data, ops)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ct.nii.gz"
        p.write_bytes(data[: max(1, len(data) - cut % 64)])
        _check_read(p)


_NRRD_FIELDS = ["type", "dimension", "sizes", "space directions", "space origin", "encoding", "endian",
                "kinds", "spacings", "space"]
_VALUES = st.one_of(
    st.integers(-10, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-5, 70000), min_size=1, max_size=5).map(lambda v: " ".join(map(str, v))),
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float('nan'))), min_size=3, max_size=3).map(
        lambda v: "(" + ",".join(repr(x) for x in v) + ")"),
    st.sampled_from(["short", "double", "uchar", "raw", "gzip", "bzip2", "ascii", "big", "little", "none",
                     "(1,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,0,0) (0,0,0)", "vector", "domain domain domain",
                     "left-posterior-superior", "3D-right-handed", ""]),
)


@FUZZ
@given(field=st.sampled_from(_NRRD_FIELDS), value=_VALUES)
def test_fuzz_nrrd_header_fields(field: str, value: str) -> None:
    head, _, body = SEEDS[".nrrd"].partition(b"\n\n")
    lines = head.decode("latin-1").split("\n")
    out = [ln for ln in lines if not ln.startswith(field + ":")] + [f"{field}: {value}"]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ct.nrrd"
        p.write_bytes("\n".join(out).encode("latin-1") + b"\n\n" + body)
        _check_read(p)


@FUZZ
@given(offset=st.sampled_from([0, 40, 42, 44, 46, 48, 70, 72, 76, 80, 84, 88, 108, 112, 116, 252, 254, 256,
                               280, 296, 344]),
       value=st.one_of(st.integers(-2**31, 2**31 - 1).map(lambda v: v.to_bytes(4, "little", signed=True)),
                       st.floats(width=32).map(lambda v: np.array([v], "<f4").tobytes())))
def test_fuzz_nifti_header_fields(offset: int, value: bytes) -> None:
    buf = bytearray(SEEDS[".nii"])
    buf[offset:offset + 4] = value
    with tempfile.TemporaryDirectory() as d:
        for ext, data in ((".nii", bytes(buf)), (".nii.gz", gzip.compress(bytes(buf)))):
            p = Path(d) / f"ct{ext}"
            p.write_bytes(data)
            _check_read(p)


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 4), ops=OPS)
def test_fuzz_dicom_series(which: int, ops) -> None:
    with tempfile.TemporaryDirectory() as d:
        files = write_dicom_series(_seed_volume(), Path(d) / "dcm")
        f = files[which % len(files)]
        data = f.read_bytes()
        # mutate anywhere in the file: skip the 128-byte preamble most of the time
        f.write_bytes(data[:132] + _mutate(data[132:], ops))
        _check_read(Path(d) / "dcm")


# --------------------------------------------------------------------------- JSON readers of other modules

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(
                                   ["format", "name", "architecture", "task", "config", "weights_file",
                                    "sha256", "dtype", "lesions", "id", "class", "malignancy_probability",
                                    "label", "preprocessing", "spacing_mm"]), children, max_size=6)),
    max_leaves=20,
)


@FUZZ
@given(doc=_JSON, raw=st.booleans(), junk=st.binary(max_size=40))
def test_fuzz_weights_manifest(doc, raw: bool, junk: bytes) -> None:
    weights = pytest.importorskip("LiverTumorAILib.weights")
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "model.safetensors").write_bytes(b"\0" * 16)
        text = junk if raw else json.dumps(doc).encode()
        (folder / "manifest.json").write_bytes(text)
        try:
            weights.verify_manifest(folder)
        except LiverTumorAIError as e:
            assert "\n" not in str(e)


@FUZZ
@given(report=_JSON, truth=_JSON)
def test_fuzz_evaluation_json(report, truth) -> None:
    evaluation = pytest.importorskip("LiverTumorAILib.evaluation")
    with tempfile.TemporaryDirectory() as d:
        pred, gt = Path(d) / "pred" / "case_000", Path(d) / "gt" / "case_000"
        pred.mkdir(parents=True)
        gt.mkdir(parents=True)
        lab = np.zeros((4, 9, 11), np.uint8)
        lab[1:3, 2:6, 2:6] = 1
        lab[2, 3:5, 3:5] = 2
        img = sitk.GetImageFromArray(lab)
        sitk.WriteImage(img, str(pred / "segmentation.nii.gz"))
        sitk.WriteImage(img, str(gt / "label.nii.gz"))
        (pred / "report.json").write_text(json.dumps(report))
        (gt / "truth.json").write_text(json.dumps(truth))
        try:
            evaluation.evaluate_dirs(pred.parent, gt.parent)
        except LiverTumorAIError as e:
            assert "\n" not in str(e)
