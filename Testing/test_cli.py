"""`livertumorai` CLI: arguments, dispatch, one-line errors with exit codes, SIGTERM, progress lines."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import LiverTumorAILib
from LiverTumorAILib import cli
from LiverTumorAILib.errors import InputError, OutputError, WeightsError
from LiverTumorAILib.progress import Progress, parse_progress_line

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "LIVERTUMORAI_DEBUG": ""}
CLI = [sys.executable, "-m", "LiverTumorAILib"]


def _ct_file(path: Path, shape=(6, 24, 24)) -> Path:
    rng = np.random.default_rng(0)
    a = rng.integers(-50, 200, shape).astype(np.int16)
    a[:, :4] = -1000
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(img, str(path), True)
    return path


def _run(args, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, **kw)


def _fake_module(monkeypatch, name: str, **functions) -> types.ModuleType:
    """Stand-in for an engine module (records calls); patched where `from X import Y` looks."""
    mod = types.ModuleType(f"LiverTumorAILib.{name}")
    mod.calls = []
    for fname, fn in functions.items():
        def wrapper(*a, _fn=fn, _name=fname, **k):
            mod.calls.append((_name, a, k))
            return _fn(*a, **k)
        setattr(mod, fname, wrapper)
    monkeypatch.setitem(sys.modules, f"LiverTumorAILib.{name}", mod)
    monkeypatch.setattr(LiverTumorAILib, name, mod, raising=False)
    return mod


# --------------------------------------------------------------------------- parser


def test_import_cli_does_not_import_torch() -> None:
    code = "import sys, LiverTumorAILib.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"livertumorai {LiverTumorAILib.__version__}"


@pytest.mark.parametrize("command,options", [
    ("segment", ["--mri", "--model", "--device", "--no-classify", "--no-hu-checks", "--no-mri-assist", "--no-heatmap", "--heatmaps", "--weights",
                 "--overwrite", "--progress", "--threads", "-o"]),
    ("classify", ["--seg", "--mri", "--weights", "--device", "--threads", "--overwrite", "--progress", "-o"]),
    ("demo", ["-o", "--model", "--device", "--threads", "--overwrite", "--progress"]),
    ("phantom", ["-o", "--count", "--seed", "--size", "--slices", "--overwrite"]),
    ("evaluate", ["PRED_DIR", "GT_DIR", "-o"]),
    ("export", ["-o", "--formats", "--ct-dicom", "--coordinates", "--deidentify", "--overwrite", "--progress"]),
])
def test_help_lists_options(capsys, command: str, options: list) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in options:
        assert opt in text, f"{command} --help lacks {opt}"


@pytest.mark.parametrize("argv", [
    [],
    ["segment", "ct.nii.gz"],  # -o missing
    ["segment", "ct.nii.gz", "-o", "x", "--model", "vgg"],
    ["segment", "ct.nii.gz", "-o", "x", "--device", "tpu"],
    ["segment", "ct.nii.gz", "-o", "x", "--no-heatmap", "--heatmaps", "all"],
    ["segment", "ct.nii.gz", "-o", "x", "--threads", "0"],
    ["classify", "ct.nii.gz", "--seg", "s.nii.gz", "-o", "x", "--threads", "0"],
    ["demo", "-o", "x", "--threads", "-2"],
    ["export", "r", "-o", "x", "--progress", "xml"],
    ["phantom", "-o", "x", "--count", "-1"],
    ["export", "r", "-o", "x", "--formats", "stl,pdf"],
])
def test_bad_arguments_exit_2(capsys, argv) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "livertumorai" in capsys.readouterr().err


# --------------------------------------------------------------------------- dispatch


def test_segment_dispatch(monkeypatch, tmp_path: Path) -> None:
    ct = _ct_file(tmp_path / "ct.nii.gz")
    mri = _ct_file(tmp_path / "mri.nrrd")
    fake = _fake_module(monkeypatch, "pipeline", run_segment=lambda *a, **k: {})
    out = tmp_path / "out"
    rc = cli.main(["segment", str(ct), "--mri", str(mri), "--model", "tam-unet", "--device", "cpu", "--no-classify",
                   "--no-heatmap", "--weights", "w", "--overwrite", "--threads", "3", "--progress", "none",
                   "--no-hu-checks", "--no-mri-assist", "-o", str(out)])
    assert rc == 0
    (name, args, kw), = fake.calls
    assert args == (str(ct), str(out))
    assert kw["mri_path"] == str(mri) and kw["model"] == "tam-unet" and kw["device"] == "cpu"
    assert kw["classify"] is False and kw["heatmaps"] == "none" and kw["weights_dir"] == "w"
    assert kw["overwrite"] is True and kw["threads"] == 3 and isinstance(kw["progress"], Progress)
    assert kw["hu_checks"] is False and kw["mri_assist"] is False
    fake.calls.clear()
    assert cli.main(["segment", str(ct), "--heatmaps", "all", "--progress", "none", "-o", str(out)]) == 0
    kw = fake.calls[0][2]
    assert kw["heatmaps"] == "all" and kw["classify"] is True and kw["model"] == "dual-stream"
    assert kw["device"] == "auto" and kw["mri_path"] is None and kw["threads"] is None and kw["hu_checks"] is True


def test_overwrite_of_the_inputs_folder_is_refused_before_any_work(monkeypatch, tmp_path: Path, capsys) -> None:
    """`segment case/ct.nii.gz -o case --overwrite` must not delete the CT it was given."""
    ct = _ct_file(tmp_path / "ct.nii.gz")
    fake = _fake_module(monkeypatch, "pipeline", run_segment=lambda *a, **k: {})
    capsys.readouterr()
    assert cli.main(["segment", str(ct), "--overwrite", "--progress", "none", "-o", str(tmp_path)]) == OutputError.exit_code
    assert "did not write there (ct.nii.gz)" in capsys.readouterr().err and not fake.calls and ct.exists()


def test_classify_demo_phantom_evaluate_export_dispatch(monkeypatch, tmp_path: Path, capsys) -> None:
    ct = _ct_file(tmp_path / "ct.nii.gz")
    seg = _ct_file(tmp_path / "seg.nii.gz")
    pipe = _fake_module(monkeypatch, "pipeline", run_classify=lambda *a, **k: {}, run_demo=lambda *a, **k: {})
    assert cli.main(["classify", str(ct), "--seg", str(seg), "--device", "cpu", "--progress", "none",
                     "-o", str(tmp_path / "c")]) == 0
    assert pipe.calls[-1][1] == (str(ct), str(seg), str(tmp_path / "c")) and pipe.calls[-1][2]["device"] == "cpu"
    assert pipe.calls[-1][2]["threads"] is None
    assert cli.main(["classify", str(ct), "--seg", str(seg), "--threads", "3", "--progress", "none",
                     "-o", str(tmp_path / "c")]) == 0
    assert pipe.calls[-1][2]["threads"] == 3
    assert cli.main(["demo", "-o", str(tmp_path / "d"), "--model", "fusion", "--progress", "none"]) == 0
    assert pipe.calls[-1][0] == "run_demo" and pipe.calls[-1][2]["model"] == "fusion"
    assert pipe.calls[-1][2]["threads"] is None
    assert cli.main(["demo", "-o", str(tmp_path / "d"), "--threads", "2", "--progress", "none"]) == 0
    assert pipe.calls[-1][2]["threads"] == 2

    ph = _fake_module(monkeypatch, "phantom", generate_cohort=lambda *a, **k: None)
    assert cli.main(["phantom", "-o", str(tmp_path / "p"), "--count", "2", "--seed", "5", "--size", "64",
                     "--slices", "16"]) == 0
    staging, *rest = ph.calls[-1][1]
    assert Path(staging).parent == tmp_path and Path(staging).name.startswith(".p.partial-") and rest == [2, 5, 64, 16]
    assert (tmp_path / "p").is_dir()

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    _fake_module(monkeypatch, "evaluation", evaluate_dirs=lambda p, g: {"summary": {"dice": np.float64(0.5)}})
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 0
    assert json.loads(capsys.readouterr().out) == {"summary": {"dice": 0.5}}
    assert cli.main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["summary"]["dice"] == 0.5
    assert cli.main(["evaluate", str(tmp_path / "nope"), str(tmp_path / "gt")]) == 2

    ex = _fake_module(monkeypatch, "export", run_export=lambda *a, **k: None)
    assert cli.main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "e"), "--formats", "stl,html,stl",
                     "--coordinates", "LPS", "--deidentify", "--ct-dicom", "dcm"]) == 0
    name, args, kw = ex.calls[-1]
    assert args == (str(tmp_path / "r"), str(tmp_path / "e"), ["stl", "html"])
    progress = kw.pop("progress")
    assert isinstance(progress, Progress) and progress.mode == "bar"
    assert kw == {"ct_dicom": "dcm", "coordinates": "LPS", "deidentify": True, "overwrite": False}
    cli.main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "e2"), "--progress", "json"])
    assert ex.calls[-1][1][2] == list(cli.EXPORT_FORMATS) and ex.calls[-1][2]["progress"].mode == "json"


# --------------------------------------------------------------------------- errors, in process


@pytest.mark.parametrize("exc,code,text", [
    (InputError("ct.nii.gz: image is 2D (5x6); a 3D volume is needed"), 2,
     "ct.nii.gz: image is 2D (5x6); a 3D volume is needed"),
    (WeightsError("dual-stream: sha256 mismatch"), 3, "dual-stream: sha256 mismatch"),
    (KeyboardInterrupt(), 130, "interrupted; no output written"),
    (ZeroDivisionError("division by zero"), 1,
     "internal error: ZeroDivisionError: division by zero (run with LIVERTUMORAI_DEBUG=1 for the traceback)"),
])
def test_error_formatting(monkeypatch, tmp_path: Path, capsys, exc, code, text) -> None:
    def boom(*a, **k):
        raise exc

    ct = _ct_file(tmp_path / "ct.nii.gz")
    _fake_module(monkeypatch, "pipeline", run_segment=boom)
    monkeypatch.delenv("LIVERTUMORAI_DEBUG", raising=False)
    assert cli.main(["segment", str(ct), "--progress", "none", "-o", str(tmp_path / "o")]) == code
    err = capsys.readouterr().err
    assert err == f"livertumorai: error: {text}\n"


def test_debug_env_shows_traceback(monkeypatch, tmp_path: Path, capsys) -> None:
    def boom(*a, **k):
        raise ValueError("multi\nline")

    _fake_module(monkeypatch, "pipeline", run_demo=boom)
    monkeypatch.setenv("LIVERTUMORAI_DEBUG", "1")
    assert cli.main(["demo", "-o", str(tmp_path / "o"), "--progress", "none"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1] == ("livertumorai: error: internal error: ValueError: multi line "
                                    "(run with LIVERTUMORAI_DEBUG=1 for the traceback)")


def test_json_progress_protocol(monkeypatch, tmp_path: Path, capsys) -> None:
    def run(ct, outdir, *, progress, **k):
        progress.stage("read", 0.0, "reading")
        progress.warn("demo weights")
        progress.stage("segment", 0.5)
        progress.done(outdir)  # the pipeline may report done itself: reported once

    ct = _ct_file(tmp_path / "ct.nii.gz")
    _fake_module(monkeypatch, "pipeline", run_segment=run)
    assert cli.main(["segment", str(ct), "--progress", "json", "-o", str(tmp_path / "o")]) == 0
    events = [parse_progress_line(line) for line in capsys.readouterr().err.splitlines()]
    assert all(e is not None for e in events)
    kinds = [e["event"] for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    assert {"event": "progress", "stage": "segment", "fraction": 0.5, "message": ""} in events
    assert {"event": "warning", "message": "demo weights"} in events


def test_json_progress_error_event(monkeypatch, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert cli.main(["segment", str(tmp_path / "missing.nii.gz"), "--progress", "json", "-o", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert parse_progress_line(lines[0]) == {"event": "error", "message": lines[1].split("error: ", 1)[1]}
    assert lines[1].startswith("livertumorai: error: missing.nii.gz: file or folder not found")


# --------------------------------------------------------------------------- real subprocesses


def _bad_inputs(tmp: Path) -> dict:
    """name -> (path, expected text); made on the fly."""
    cases = {}
    cases["missing"] = (tmp / "missing.nii.gz", "file or folder not found")
    (tmp / "text.nii.gz").write_text("not an image")
    cases["text"] = (tmp / "text.nii.gz", "not an image file")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(tmp / "flat.nii.gz"))
    cases["2d"] = (tmp / "flat.nii.gz", "2D")
    vol = sitk.GetImageFromArray(np.zeros((3, 5, 6), np.int16))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp / "t4.nii.gz"))
    cases["4d"] = (tmp / "t4.nii.gz", "4D")
    sitk.WriteImage(sitk.Compose([sitk.Cast(vol, sitk.sitkUInt8)] * 3), str(tmp / "rgb.nrrd"))
    cases["rgb"] = (tmp / "rgb.nrrd", "RGB")
    (tmp / "huge.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nencoding: raw\nendian: little\nsizes: 90000 90000 9000\n\n\0\0")
    cases["huge"] = (tmp / "huge.nrrd", "implausibly large")
    sitk.WriteImage(vol, str(tmp / "dt.nii"))
    raw = bytearray((tmp / "dt.nii").read_bytes())
    raw[70:72] = (999).to_bytes(2, "little")  # niftilib prints "** ERROR ..." straight to fd 2
    (tmp / "dt.nii").write_bytes(bytes(raw))
    cases["bad-datatype"] = (tmp / "dt.nii", "header is damaged")
    (tmp / "emptydir").mkdir()
    cases["emptydir"] = (tmp / "emptydir", "folder is empty")
    return cases


def test_segment_bad_inputs_one_line_exit_2(tmp_path: Path) -> None:
    """Header-level problems are refused by the CLI itself, before any engine import."""
    for name, (path, text) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{name}"
        r = _run(["segment", path, "-o", out, "--progress", "none"])
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"livertumorai: error: {path.name}: "), r.stderr
        assert text in r.stderr, (name, r.stderr)
        assert not out.exists()
        assert not list(tmp_path.glob(f".out_{name}.partial-*"))


needs_pipeline = pytest.mark.skipif(importlib.util.find_spec("LiverTumorAILib.pipeline") is None,
                                    reason="LiverTumorAILib.pipeline not written yet")


@needs_pipeline
def test_segment_pixel_level_bad_inputs(tmp_path: Path) -> None:
    """NaN, constant and MRI-as-CT are found after loading pixels, in the pipeline's read step."""
    nan = np.zeros((4, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), 40, np.int16)), str(tmp_path / "const.nii.gz"))
    mri = np.random.default_rng(0).gamma(2.0, 150.0, (4, 8, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(mri), str(tmp_path / "mri.nii.gz"))
    for name, text in (("nan.nrrd", "NaN or infinity"), ("const.nii.gz", "same value"),
                       ("mri.nii.gz", "does not look like a CT")):
        out = tmp_path / f"out_{name}"
        r = _run(["segment", tmp_path / name, "-o", out, "--progress", "none"])
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"livertumorai: error: {name}: "), r.stderr
        assert text in r.stderr
        assert not out.exists() and not list(tmp_path.glob(".out_*"))


def test_existing_outdir_exit_4_untouched(tmp_path: Path) -> None:
    ct = _ct_file(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "edited.seg.nrrd").write_text("manual")
    r = _run(["segment", ct, "-o", out, "--progress", "none"])
    assert r.returncode == 4 and r.stderr.startswith("livertumorai: error: out: output folder already exists")
    assert r.stderr.count("\n") == 1
    assert (out / "edited.seg.nrrd").read_text(encoding="utf-8") == "manual"


_SLOW_RUN = textwrap.dedent("""
    import sys, time, types
    import LiverTumorAILib
    from LiverTumorAILib.io.atomic import atomic_output_dir
    def run_segment(ct, outdir, **kw):
        with atomic_output_dir(outdir) as staging:
            (staging / "segmentation.nii.gz").write_bytes(b"half")
            print("STAGED", flush=True)
            time.sleep(60)
    mod = types.ModuleType("LiverTumorAILib.pipeline")
    mod.run_segment = run_segment
    sys.modules["LiverTumorAILib.pipeline"] = mod
    LiverTumorAILib.pipeline = mod
    from LiverTumorAILib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_exit_130_and_no_outdir(tmp_path: Path) -> None:
    ct = _ct_file(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, "segment", str(ct), "-o", str(out), "--progress", "none"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout.readline().strip() == "STAGED"
        assert list(tmp_path.glob(".out.partial-*"))
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert err == "livertumorai: error: interrupted; no output written\n"
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.slow
@needs_pipeline
def test_sigterm_real_demo(tmp_path: Path) -> None:
    """End to end: SIGTERM while `livertumorai demo` works -> 130, nothing left."""
    out = tmp_path / "demo"
    p = subprocess.Popen(CLI + ["demo", "-o", str(out), "--device", "cpu", "--progress", "none"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".demo.partial-*")):
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"demo ended before it could be interrupted: {p.stderr.read()[-300:]}")
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "livertumorai: error: interrupted; no output written"
    assert not out.exists() and not list(tmp_path.glob(".demo.partial-*"))


def test_phantom_subcommand(tmp_path: Path) -> None:
    phantom = pytest.importorskip("LiverTumorAILib.phantom")
    if not hasattr(phantom, "generate_cohort"):
        pytest.skip("phantom.generate_cohort not written yet")
    r = _run(["phantom", "-o", tmp_path / "ph", "--count", "1", "--seed", "3", "--size", "96", "--slices", "24"],
             timeout=120)
    assert r.returncode == 0, r.stderr
    cases = sorted((tmp_path / "ph").glob("case_*"))
    assert len(cases) == 1
    for name in ("ct.nii.gz", "mri.nii.gz", "label.nii.gz", "lesions.nii.gz", "truth.json"):
        assert (cases[0] / name).exists(), name
    (tmp_path / "ph" / "my_case").mkdir()  # a folder of the user's beside the phantoms
    args = ["phantom", "-o", tmp_path / "ph", "--size", "64", "--slices", "16"]
    r = _run(args, timeout=120)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = _run(args + ["--overwrite"], timeout=120)
    assert r.returncode != 0 and "did not write there (my_case)" in r.stderr and (tmp_path / "ph" / "my_case").is_dir()
    (tmp_path / "ph" / "my_case").rmdir()
    r = _run(args + ["--overwrite"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "ph").glob("case_*")] == ["case_000"]


# --------------------------------------------------------------------------- progress


def test_progress_json_lines() -> None:
    buf = io.StringIO()
    p = Progress("json", stream=buf)
    p.stage("segment", 1.7, "slab 3/10")
    p.info("read CT")
    p.warn("slow")
    p.done("/tmp/out")
    p.error("late")  # after done: ignored
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert events == [
        {"event": "progress", "stage": "segment", "fraction": 1.0, "message": "slab 3/10"},
        {"event": "info", "message": "read CT"},
        {"event": "warning", "message": "slow"},
        {"event": "done", "outdir": "/tmp/out"},
    ]


def test_progress_bar_plain_when_not_a_tty() -> None:
    buf = io.StringIO()
    p = Progress("bar", stream=buf)
    for i in range(101):
        p.stage("segment", i / 100)
    p.warn("careful")
    p.done("out")
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert len(lines) == 11 + 2  # one line per 10%, not per call
    assert lines[-2] == "livertumorai: warning: careful" and lines[-1] == "livertumorai: done: results in out"


def test_progress_bar_tty_redraws_in_place() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    p = Progress("bar", stream=buf)
    p.stage("read", 0.0)
    p.stage("segment", 0.5, "slab 1")
    p.info("note")
    text = buf.getvalue()
    assert text.startswith("\r[") and "\nlivertumorai: note\n" in text


def test_progress_none_is_silent_but_warns() -> None:
    buf = io.StringIO()
    p = Progress("none", stream=buf)
    p.stage("x", 0.5)
    p.info("i")
    p.done("o")
    assert buf.getvalue() == ""
    p.warn("w")
    assert buf.getvalue() == "livertumorai: warning: w\n"


def test_progress_survives_closed_stream() -> None:
    buf = io.StringIO()
    buf.close()
    p = Progress("json", stream=buf)
    p.stage("x", 0.1)
    p.done("o")


@pytest.mark.parametrize("line,expected", [
    ('{"event": "progress", "stage": "s", "fraction": 0.5, "message": "m"}\n',
     {"event": "progress", "stage": "s", "fraction": 0.5, "message": "m"}),
    ('{"event": "progress", "fraction": "bad"}', {"event": "progress", "fraction": 0.0, "stage": "", "message": ""}),
    (b'{"event": "done", "outdir": "/x"}', {"event": "done", "outdir": "/x"}),
    ("livertumorai: error: x", None),
    ("{not json", None),
    ('{"event": "unknown"}', None),
    ("[1, 2]", None),
    ("", None),
])
def test_parse_progress_line(line, expected) -> None:
    assert parse_progress_line(line) == expected


@needs_pipeline
def test_classify_bad_inputs_one_line_exit_2(tmp_path: Path) -> None:
    """The same corpus as CT and as SEG of `classify`, plus a SEG on another grid."""
    ct = _ct_file(tmp_path / "ct.nii.gz")
    seg = tmp_path / "seg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 24, 24), np.uint8)), str(seg))
    other = tmp_path / "seg_other.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 20, 20), np.uint8)), str(other))
    (tmp_path / "s").mkdir()
    runs = [(name, [path, "--seg", seg], text) for name, (path, text) in _bad_inputs(tmp_path).items()]
    runs += [(f"seg-{name}", [ct, "--seg", path], text) for name, (path, text) in _bad_inputs(tmp_path / "s").items()
             if name in ("missing", "text", "2d", "4d", "bad-datatype")]
    runs.append(("seg-other-grid", [ct, "--seg", other], "grid"))
    for name, args, text in runs:
        out = tmp_path / f"out_{name}"
        r = _run(["classify", *args, "-o", out, "--progress", "none", "--device", "cpu"])
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("livertumorai: error:"), (name, r.stderr)
        assert text in r.stderr, (name, r.stderr)
        assert not out.exists(), name
