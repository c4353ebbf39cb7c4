"""Splits, losses, the case cache, ablation configs and a tiny end-to-end `livertumorai-train` run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from training.datasets.base import Case
from training.splits import kfold, train_val_test_split


def test_patient_level_split_is_deterministic_and_disjoint() -> None:
    ids = [f"p{i:02d}" for i in range(20)] + ["chaos-mr-1-t2spir", "chaos-mr-1-t1dual"]
    s1 = train_val_test_split(ids, seed=3)
    s2 = train_val_test_split(list(reversed(ids)), seed=3)
    assert sorted(s1.train) == sorted(s2.train) and sorted(s1.test) == sorted(s2.test)
    # 21 patients (the two CHAOS MR sequences are one): 70/10/20 -> 15/2/4 patients
    assert (len(s1.train) + len(s1.val) + len(s1.test)) == 22 and len(s1.test) in (4, 5) and len(s1.val) in (2, 3)
    assert not (set(s1.train) & set(s1.test)) and not (set(s1.val) & set(s1.test))
    both = [x for part in (s1.train, s1.val, s1.test) for x in part if x.startswith("chaos-mr-1")]
    assert len(both) == 2 and any(set(both) <= set(p) for p in (s1.train, s1.val, s1.test))  # same patient together
    assert train_val_test_split(ids, seed=4).ids() != s1.ids()
    folds = kfold(ids, 5, seed=0)
    tested = [x for f in folds for x in f.test]
    assert sorted(tested) == sorted(ids)  # every case tested exactly once
    for f in folds:
        assert not set(f.train) & set(f.test)


def test_losses_are_finite_and_prefer_the_truth() -> None:
    torch = pytest.importorskip("torch")
    from training.losses import build_loss, class_weights

    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    target[:, 3:5, 3:5] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    bad = torch.zeros_like(good)
    for name in ("dice_bce", "ce_dice"):
        loss = build_loss(name)
        lg, lb = loss(good, target), loss(bad, target)
        assert torch.isfinite(lg) and lg < lb
    w = class_weights([90, 10])
    assert w[1] > w[0] and abs(sum(w) / 2 - 1) < 1e-9
    ce = build_loss("weighted_ce", weights=w)
    assert torch.isfinite(ce(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])))


def test_case_cache_hits_and_invalidates(tmp_path: Path) -> None:
    from training.cache import CaseCache

    src = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 2, sitk.sitkInt16), str(src))
    case = Case("c1", ct=src, label=src)
    calls = []

    def build(c):
        calls.append(c.case_id)
        return {"x": np.arange(3)}

    cache = CaseCache(tmp_path / "cache", {"spacing": [1, 1, 2]})
    assert cache.get(case, build)["x"].tolist() == [0, 1, 2]
    assert cache.get(case, build)["x"].tolist() == [0, 1, 2] and calls == ["c1"]
    CaseCache(tmp_path / "cache", {"spacing": [2, 2, 2]}).get(case, build)  # other config -> rebuild
    assert len(calls) == 2
    import os
    import time

    os.utime(src, (time.time() + 5, time.time() + 5))  # touched source -> rebuild
    cache.get(case, build)
    assert len(calls) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_case_cache_full_disk_is_an_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """A cache write that fails (disk full) says so clearly and leaves no entry or temp file behind."""
    import errno

    from LiverTumorAILib.errors import OutputError
    from training.cache import CaseCache

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    cache = CaseCache(tmp_path / "cache", {"spacing": [1, 1, 2]})
    with pytest.raises(OutputError, match="disk is full"):
        cache.get(Case("c1", ct=None, label=None), lambda c: {"x": np.arange(3)})
    assert list((tmp_path / "cache").iterdir()) == []


def test_ablation_configs() -> None:
    from training.ablation import ablation_configs, unsupported

    cfgs = ablation_configs()
    assert cfgs["no_random_window"]["augment"]["random_window"] is None
    assert cfgs["full"]["augment"]["random_window"]["level_hu"] == [12, 130]
    assert cfgs["unet2d_baseline"]["model"] == "unet2d"
    assert unsupported(cfgs["full"]) == [] and unsupported(cfgs["no_random_window"]) == []


def test_classification_config_augment_reaches_the_trainer() -> None:
    from training.cli import _ct_augment
    from training.cls_trainer import HU_SHIFT, RANDOM_WINDOW_P

    paper = json.loads((Path(__file__).resolve().parents[1] / "training" / "configs" / "hybrid3d.json").read_text())
    assert _ct_augment(paper["augment"]) == {"random_window_p": 0.3, "hu_shift": 20.0}
    assert _ct_augment({}) == {"random_window_p": RANDOM_WINDOW_P, "hu_shift": HU_SHIFT}
    assert _ct_augment({"random_window": None, "hu_shift": 5}) == {"random_window_p": 0.0, "hu_shift": 5.0}


def test_train_cli_segmentation_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    phantom = pytest.importorskip("LiverTumorAILib.phantom")
    if not hasattr(phantom, "generate_case"):
        pytest.skip("phantom generator not available")
    from training.cli import main

    out = tmp_path / "weights"
    rc = main(["segmentation", "--data", "phantom:4", "--model", "tam-unet", "--out", str(out), "--epochs", "1",
               "--config", str(Path(__file__).parents[1] / "training" / "configs" / "demo_segmentation.json"),
               "--device", "cpu", "--phantom-size", "64", "--phantom-slices", "16"])
    assert rc == 0
    manifest = json.loads((out / "tam-unet" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training_data"]["synthetic"] is True and manifest["architecture"] == "tam-unet"
    work = out / "_training" / "tam-unet"
    split = json.loads((work / "split.json").read_text(encoding="utf-8"))
    assert sum(len(v) for v in split.values()) == 4 and split["test"]
    assert (work / "test" / "report.html").exists() and (work / "test" / "loss.png").exists()
    from LiverTumorAILib.weights import load_weights

    load_weights(out / "tam-unet")  # loadable by the engine


def test_train_cli_bad_data_is_one_line_error(tmp_path: Path, capsys) -> None:
    from training.cli import main

    assert main(["segmentation", "--data", str(tmp_path / "nope"), "--model", "tam-unet", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("livertumorai-train: error:") and "nope" in err
    assert main(["segmentation", "--data", "phantom:2", "--model", "hybrid3d", "--out", str(tmp_path / "o")]) == 2


def test_train_cli_bad_input_files_one_line_no_output(tmp_path: Path) -> None:
    """The segment corpus of bad files, as a training case: one line, exit 2, no output folder."""
    import subprocess
    import sys

    import SimpleITK as sitk
    from test_cli import _bad_inputs, _ct_file

    label = tmp_path / "label.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 24, 24), np.uint8)), str(label))
    corpus = _bad_inputs(tmp_path)
    corpus["label-on-another-grid"] = (_ct_file(tmp_path / "ct_small.nii.gz", shape=(5, 20, 20)), "differs from")
    for name, (path, text) in corpus.items():
        csv = tmp_path / f"{name}.csv"
        csv.write_text(f"case_id,ct,label\n{name},{path},{label}\n", encoding="utf-8")
        out = tmp_path / f"out_{name}"
        r = subprocess.run([sys.executable, "-m", "training.cli", "segmentation", "--data", str(csv), "--model",
                            "tam-unet", "--out", str(out), "--device", "cpu"],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("livertumorai-train: error:"), (name, r.stderr)
        assert text in r.stderr, (name, r.stderr)
        assert not out.exists(), name
