"""`--threads N` on classify and demo (as on segment), `--progress` on export: real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib import cli
from LiverTumorAILib.progress import parse_progress_line
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


# --------------------------------------------------------------------------- export --progress


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory) -> Path:
    """A result folder as `segment` writes it (the parts export reads): an ellipsoid liver with one lesion."""
    root = tmp_path_factory.mktemp("export")
    z, y, x = np.mgrid[:16, :48, :48]
    liver = ((z - 8) * 2.5 / 18) ** 2 + ((y - 24) * 0.9 / 18) ** 2 + ((x - 24) * 0.9 / 18) ** 2 < 1
    lesion = ((z - 8) * 2.5) ** 2 + ((y - 22) * 0.9) ** 2 + ((x - 27) * 0.9) ** 2 < 6**2
    label = liver.astype(np.uint8)
    label[lesion] = 2
    ct = sitk.GetImageFromArray(np.where(liver, 60, -80).astype(np.int16))
    ct.SetSpacing((0.9, 0.9, 2.5))
    sitk.WriteImage(ct, str(root / "ct.nii.gz"))
    folder = root / "result"
    folder.mkdir()
    for name, arr in (("segmentation.nii.gz", label), ("lesions.nii.gz", lesion.astype(np.uint16))):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ct)
        sitk.WriteImage(img, str(folder / name))
    lesion_row = dict(id=1, volume_ml=0.9, longest_diameter_mm=12.0, centroid_ras=[0, 0, 0], mean_hu=60.0)
    lesion_row.update(malignancy_probability=0.7, predicted_class="malignant")
    report = dict(liver_volume_ml=20.0, tumour_burden_percent=4.0, lesion_count=1, lesions=[lesion_row])
    report.update(software_version="0.1.0", models={}, weights_notice=None, device="cpu", warnings=[])
    report["inputs"] = {"ct": str(root / "ct.nii.gz")}
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return folder


def _export(result: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "LiverTumorAILib", "export", str(result), "-o", str(out)]
    cmd += ["--formats", "nifti,stl,html", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def test_export_progress_json_lines(result_dir: Path, tmp_path: Path) -> None:
    r = _export(result_dir, tmp_path / "json", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [parse_progress_line(line) for line in r.stderr.splitlines()]
    assert events and all(e is not None for e in events), r.stderr  # every stderr line is a protocol line
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages == ["read", "nifti", "stl", "html"]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and all(0.0 <= f < 1.0 for f in fractions)
    assert events[-1] == {"event": "done", "outdir": str(tmp_path / "json")}

    # the files are the same whatever the progress display
    r = _export(result_dir, tmp_path / "none", "--progress", "none")
    assert r.returncode == 0 and r.stderr == "", r.stderr

    def files(folder: Path) -> list:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    assert files(tmp_path / "json") == files(tmp_path / "none")
    assert "labelmap.nii.gz" in files(tmp_path / "json")
    for name in ("labelmap.nii.gz", "labelmap.json"):
        assert (tmp_path / "json" / name).read_bytes() == (tmp_path / "none" / name).read_bytes()


def test_export_progress_default_is_bar(capsys, result_dir: Path, tmp_path: Path) -> None:
    capsys.readouterr()
    assert cli.main(["export", str(result_dir), "-o", str(tmp_path / "bar"), "--formats", "nifti"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "livertumorai:   0% nifti: writing nifti" in err
    assert err[-1] == f"livertumorai: done: results in {tmp_path / 'bar'}"
