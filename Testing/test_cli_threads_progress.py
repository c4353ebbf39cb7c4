"""`--threads N` on classify and demo (as on segment): real runs. (`export --progress`: test_export.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from LiverTumorAILib import cli
from LiverTumorAILib.weights import ENV_MODELS, bundled_model_dir

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "LIVERTUMORAI_DEBUG": ""}
ENV.pop(ENV_MODELS, None)

needs_weights = pytest.mark.skipif(
    not all(bundled_model_dir(n) for n in ("localizer", "fusion", "tam-unet", "hybrid3d", "hybrid3d-ctmri")),
    reason="bundled demo weights absent",
)


@pytest.fixture
def case(small_phantom_case: Path) -> Path:
    return small_phantom_case


@pytest.fixture
def thread_calls(monkeypatch) -> list:
    """Records each `configure_cpu_threads(n)` (which still runs); torch's thread count is restored after."""
    import torch

    from LiverTumorAILib.inference import device

    calls: list = []
    real = device.configure_cpu_threads

    def record(threads=None):
        calls.append(threads)
        return real(threads)

    monkeypatch.setattr(device, "configure_cpu_threads", record)
    monkeypatch.delenv(ENV_MODELS, raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 can only come from --threads 1
    yield calls
    torch.set_num_threads(old)


@pytest.mark.parametrize("command", ["classify", "demo"])
def test_threads_option_listed_and_checked(capsys, command: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and "--threads N" in capsys.readouterr().out
    argv = [command, "ct.nii.gz", "--seg", "seg.nii.gz"] if command == "classify" else [command]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "-o", "x", "--threads", "0"])
    assert e.value.code == 2 and "--threads: must be at least 1, not 0" in capsys.readouterr().err


@needs_weights
def test_classify_threads_reach_torch(case: Path, tmp_path: Path, thread_calls: list) -> None:
    import torch

    out = tmp_path / "out"
    argv = ["classify", str(case / "ct.nii.gz"), "--seg", str(case / "label.nii.gz"), "-o", str(out)]
    assert cli.main([*argv, "--device", "cpu", "--threads", "1", "--progress", "none"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert thread_calls == [1] and torch.get_num_threads() == 1
    assert report["device"]["threads"] == 1 and report["lesion_count"] > 0  # the classifier ran on 1 thread


@needs_weights
def test_demo_threads_reach_torch(tmp_path: Path, monkeypatch, thread_calls: list) -> None:
    import torch

    from LiverTumorAILib import phantom

    real = phantom.generate_case
    monkeypatch.setattr(phantom, "generate_case", lambda seed: real(seed, size=64, slices=16))  # a small case
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--device", "cpu", "--threads", "1", "--progress", "none"]) == 0
    report = json.loads((out / "result" / "report.json").read_text(encoding="utf-8"))
    assert thread_calls == [1] and torch.get_num_threads() == 1
    assert report["device"]["threads"] == 1
    assert (out / "demo_summary.json").is_file()
