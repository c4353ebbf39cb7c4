"""The background runner against real subprocesses (what the Slicer module relies on).

Fake engines are tiny Python scripts that speak the `--progress json` protocol, so these
tests do not depend on the real CLI being finished; the phantom test uses the real
`python -m LiverTumorAILib phantom` when that subcommand exists.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from LiverTumorAILib import runner as runner_mod
from LiverTumorAILib.dependencies import describe_missing, missing_packages, pip_requirements
from LiverTumorAILib.runner import (
    ProcessRunner,
    classify_command,
    device_probe_command,
    export_command,
    format_device_info,
    parse_progress_line,
    phantom_command,
    run_to_completion,
    segment_command,
)


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _drain(runner: ProcessRunner, timeout: float = 20.0) -> list:
    """Poll like the Slicer QTimer does until the exit event arrives."""
    events: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = runner.poll()
        events.extend(batch)
        if any(e["event"] == "exit" for e in batch):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no exit event within {timeout} s; got {events}")


def _gone(pid: int) -> bool:
    """True when pid no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


PROGRESS_SCRIPT = """
    import json, sys, time
    def emit(**kw):
        print(json.dumps(kw), file=sys.stderr, flush=True)
    emit(event="progress", stage="read", fraction=0.0, message="reading")
    time.sleep(0.05)
    print("plain log line on stderr", file=sys.stderr, flush=True)
    emit(event="warning", message="demo weights")
    for i in range(1, 4):
        time.sleep(0.05)
        emit(event="progress", stage="segment", fraction=i / 4, message=f"slab {i}")
    print("stdout text")
    emit(event="done", outdir=sys.argv[1])
"""


def test_events_arrive_in_order(tmp_path):
    script = _script(tmp_path, "engine.py", PROGRESS_SCRIPT)
    runner = ProcessRunner([sys.executable, str(script), str(tmp_path / "out")]).start()
    events = _drain(runner)
    kinds = [e["event"] for e in events]
    assert kinds == ["progress", "log", "warning", "progress", "progress", "progress", "done", "exit"]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) == [0.0, 0.25, 0.5, 0.75]
    assert events[-1] == {"event": "exit", "returncode": 0, "cancelled": False}
    result = runner.result()
    assert result.ok and result.error is None
    assert result.done == {"event": "done", "outdir": str(tmp_path / "out")}
    assert result.stdout == "stdout text\n"
    assert runner.poll() == []  # exit is reported once


def test_cancel_kills_child_and_grandchild(tmp_path):
    pids = tmp_path / "pids.txt"
    grandchild = _script(tmp_path, "grandchild.py", """
        import time
        while True:
            time.sleep(0.1)
    """)
    child = _script(tmp_path, "child.py", f"""
        import json, os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn engine: only SIGKILL stops it
        g = subprocess.Popen([sys.executable, {str(grandchild)!r}])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{g.pid}}")
        print(json.dumps({{"event": "progress", "stage": "segment", "fraction": 0.1}}), file=sys.stderr, flush=True)
        while True:
            time.sleep(0.1)
    """)
    runner = ProcessRunner([sys.executable, str(child)], grace_s=0.5).start()
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text(encoding="utf-8").strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid, grandchild_pid = map(int, pids.read_text(encoding="utf-8").split())
    assert not _gone(child_pid) and not _gone(grandchild_pid)

    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 8
    assert _wait_gone(child_pid), "child survived cancel"
    assert _wait_gone(grandchild_pid), "grandchild survived cancel (process tree not killed)"
    events = _drain(runner)
    assert events[-1]["event"] == "exit" and events[-1]["cancelled"] is True
    result = runner.result()
    assert result.cancelled and not result.ok and result.error is None


def test_cancel_polite_exit_within_grace(tmp_path):
    """An engine that handles SIGTERM itself exits before the hard kill."""
    script = _script(tmp_path, "polite.py", """
        import signal, sys, time
        def bye(*_):
            print("livertumorai: error: run cancelled", file=sys.stderr, flush=True)
            sys.exit(130)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
    """)
    runner = ProcessRunner([sys.executable, str(script)], grace_s=5.0).start()
    deadline = time.monotonic() + 20
    while "ready" not in "".join(runner._stdout) and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 4.5  # did not wait the whole grace period
    assert runner.result().returncode == 130


def test_failing_command_surfaces_one_line_error(tmp_path):
    script = _script(tmp_path, "fail.py", """
        import sys
        print("reading ct.nii.gz", file=sys.stderr)
        print("livertumorai: error: ct.nii.gz: image is 2D (512x512); a 3D volume is needed", file=sys.stderr)
        sys.exit(2)
    """)
    result = run_to_completion([sys.executable, str(script)], timeout=20)
    assert result.returncode == 2 and not result.ok
    assert result.error == "ct.nii.gz: image is 2D (512x512); a 3D volume is needed"


def test_json_error_event_wins(tmp_path):
    script = _script(tmp_path, "fail_json.py", """
        import json, sys
        print(json.dumps({"event": "error", "message": "weights: sha256 mismatch"}), file=sys.stderr)
        print("livertumorai: error: weights: sha256 mismatch", file=sys.stderr)
        sys.exit(3)
    """)
    result = run_to_completion([sys.executable, str(script)], timeout=20)
    assert result.error == "weights: sha256 mismatch"


def test_traceback_last_line_is_the_message(tmp_path):
    script = _script(tmp_path, "crash.py", """
        raise ValueError("something unexpected in the engine")
    """)
    result = run_to_completion([sys.executable, str(script)], timeout=20)
    assert result.returncode == 1
    assert result.error == "ValueError: something unexpected in the engine"


def test_missing_executable_is_an_error_not_an_exception(tmp_path):
    runner = ProcessRunner([str(tmp_path / "no-such-python"), "-c", "pass"]).start()
    events = _drain(runner)
    assert [e["event"] for e in events] == ["error", "exit"]
    assert "could not start" in runner.result().error


def test_parse_progress_line():
    assert parse_progress_line('{"event": "progress", "fraction": 0.5}')["fraction"] == 0.5
    assert parse_progress_line("Traceback (most recent call last):") is None
    assert parse_progress_line("{not json") is None
    assert parse_progress_line('{"no_event": 1}') is None
    assert runner_mod._parse_progress_line_local('  {"event": "done"}  ') == {"event": "done"}


def test_command_builders(tmp_path):
    cmd = segment_command("ct.nrrd", tmp_path, mri="mri.nrrd", model="fusion", device="cuda",
                          classify=False, heatmap=False, weights="w", python="py", hu_checks=False)
    assert cmd[:4] == ["py", "-m", "LiverTumorAILib", "segment"]
    assert cmd[4] == "ct.nrrd"
    for flag in ("--mri", "--no-classify", "--no-heatmap", "--no-hu-checks", "--weights"):
        assert flag in cmd
    assert "--no-hu-checks" not in segment_command("ct.nrrd", tmp_path)
    assert cmd[cmd.index("--model") + 1] == "fusion" and cmd[cmd.index("--device") + 1] == "cuda"
    assert cmd[-4:] == ["-o", str(tmp_path), "--progress", "json"]
    with pytest.raises(ValueError):
        segment_command("ct.nrrd", tmp_path, model="fusion")
    cmd = classify_command("ct.nrrd", "seg.nii.gz", tmp_path)
    assert cmd[3:7] == ["classify", "ct.nrrd", "--seg", "seg.nii.gz"] and "--progress" in cmd
    assert phantom_command(tmp_path, count=2, seed=5)[3:] == ["phantom", "-o", str(tmp_path), "--count", "2", "--seed", "5"]
    assert phantom_command(tmp_path, size=64, slices=16)[-4:] == ["--size", "64", "--slices", "16"]
    cmd = export_command("res", "out", ["dicom-seg", "html"], ct_dicom="dcm", coordinates="LPS", overwrite=True)
    assert cmd[3:] == ["export", "res", "-o", "out", "--formats", "dicom-seg,html", "--coordinates", "LPS",
                       "--progress", "json", "--ct-dicom", "dcm", "--overwrite"]


def test_child_can_import_engine_from_any_cwd(tmp_path):
    """PYTHONPATH is set by the runner: Slicer's Python need not have the module folder on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_to_completion(
        [sys.executable, "-c", "import LiverTumorAILib, sys; print(LiverTumorAILib.__file__)"],
        env=runner_mod.engine_env(env), cwd=tmp_path, timeout=30)
    assert result.ok, result.error
    assert Path(result.stdout.strip()).parent == runner_mod.ENGINE_PARENT / "LiverTumorAILib"


def test_device_probe_in_child():
    result = run_to_completion(device_probe_command(), timeout=120)
    assert result.ok, result.error
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"torch", "cuda", "gpus"} <= set(info)
    text = format_device_info(info)
    assert text.startswith("PyTorch") or "not installed" in text


def test_format_device_info():
    assert "not installed" in format_device_info({"torch": None})
    gpu = {"torch": "2.4.1", "cuda": True, "cuda_version": "12.1",
           "gpus": [{"name": "NVIDIA H100", "memory_gb": 79.1}]}
    assert format_device_info(gpu) == "PyTorch 2.4.1, CUDA 12.1: NVIDIA H100 (79.1 GB)"
    assert "CPU only" in format_device_info({"torch": "2.4.1", "cuda": False, "gpus": []})


def test_dependencies():
    assert missing_packages(["json", "no_such_package_livertumorai"]) == ["no_such_package_livertumorai"]
    assert pip_requirements(["torch", "skimage"]) == ["scikit-image>=0.21"]
    text = describe_missing(["torch", "monai"])
    assert "monai>=1.3" in text and "PyTorch extension" in text
    assert "torch" not in pip_requirements(missing_packages())  # never pip-installed


def _has_phantom_subcommand() -> bool:
    try:
        from LiverTumorAILib import cli  # noqa: F401
    except Exception:
        return False
    try:
        from LiverTumorAILib.phantom import generate_cohort  # noqa: F401
    except Exception:
        return False
    return "phantom" in Path(cli.__file__).read_text(encoding="utf-8")


@pytest.mark.skipif(not _has_phantom_subcommand(), reason="`livertumorai phantom` not available yet")
def test_real_engine_phantom(tmp_path):
    runner = ProcessRunner(phantom_command(tmp_path / "ph", count=1, seed=3, size=64, slices=16)).start()
    events = _drain(runner, timeout=300)
    result = runner.result()
    assert result.ok, f"{result.error}\n{result.stderr_tail}"
    assert events[-1]["event"] == "exit"
    assert (tmp_path / "ph" / "case_000" / "ct.nii.gz").is_file()


def test_commands_parse_with_the_real_cli(tmp_path):
    """The command lines the Slicer module builds are accepted by the engine's own parser."""
    cli = pytest.importorskip("LiverTumorAILib.cli")
    parser = cli.build_parser()
    seg = parser.parse_args(segment_command("ct.nrrd", "out", mri="m.nrrd", model="fusion", device="cpu",
                                            classify=False, heatmap=False, weights="w", hu_checks=False)[3:])
    assert (seg.command, seg.mri, seg.model, seg.device, seg.progress) == ("segment", "m.nrrd", "fusion", "cpu", "json")
    assert seg.no_classify and seg.no_heatmap and seg.no_hu_checks and seg.outdir == "out"
    cls = parser.parse_args(classify_command("ct.nrrd", "seg.nii.gz", "out", device="cuda")[3:])
    assert (cls.command, cls.seg, cls.device, cls.progress) == ("classify", "seg.nii.gz", "cuda", "json")
    ph = parser.parse_args(phantom_command("ph", count=2, seed=4, size=64, slices=16)[3:])
    assert (ph.count, ph.seed, ph.size, ph.slices) == (2, 4, 64, 16)
    ex = parser.parse_args(export_command("res", "out", ["dicom-seg", "html"], ct_dicom="d", coordinates="LPS",
                                          overwrite=True)[3:])
    assert ex.formats == ["dicom-seg", "html"] and ex.ct_dicom == "d" and ex.overwrite and ex.progress == "json"
