"""The CUDA path, end to end, where a GPU is present (skipped elsewhere, so CI on CPU skips it).

Each segmentation model runs `segment` on the same phantom on CPU and on CUDA with the
bundled weights. CUDA runs the slabs under fp16 autocast with channels_last, so labels may
differ from the CPU's at a few boundary voxels: the two label maps must agree to a Dice of
0.98 for liver and 0.9 for tumour, the report must say CUDA was used, and the heatmap must be
float32 in [0, 1] on the CT grid. `classify` on CUDA must give the CPU's probabilities to
0.05. The classifier's training masks (`training/mask_sources.py`) cut on CUDA must match the
CPU's lesions. A few training steps on CUDA (bf16 autocast, augmentation on the GPU) must lower the
loss's running value from its start and write loadable weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SEED = 777002


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    from LiverTumorAILib.phantom import generate_case, write_case

    folder = tmp_path_factory.mktemp("cuda") / "case"
    write_case(generate_case(SEED, size=192, slices=48, direction="flip_all", n_lesions=(2, 3),
                             lesion_diameters=(15, 40)), folder)
    return folder


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("model", ["dual-stream", "tam-unet", "fusion"])
def test_segment_on_cuda_matches_cpu(case, tmp_path, model):
    from LiverTumorAILib.pipeline import run_segment

    mri = case / "mri.nii.gz"
    cpu = run_segment(case / "ct.nii.gz", tmp_path / "cpu", mri_path=mri, model=model, device="cpu")
    gpu = run_segment(case / "ct.nii.gz", tmp_path / "cuda", mri_path=mri, model=model, device="cuda")
    assert gpu["device"]["used"] == "cuda" and cpu["device"]["used"] == "cpu"
    a, b = _array(tmp_path / "cpu" / "segmentation.nii.gz"), _array(tmp_path / "cuda" / "segmentation.nii.gz")
    assert _dice(a >= 1, b >= 1) >= 0.98
    if (a == 2).any() or (b == 2).any():
        assert _dice(a == 2, b == 2) >= 0.9
    heat = sitk.ReadImage(str(tmp_path / "cuda" / "heatmap.nii.gz"))
    assert heat.GetPixelID() == sitk.sitkFloat32
    assert heat.GetSize() == sitk.ReadImage(str(case / "ct.nii.gz")).GetSize()
    h = sitk.GetArrayFromImage(heat)
    assert h.min() >= 0.0 and h.max() <= 1.0 and h.max() > 0.0


def test_classify_on_cuda_matches_cpu(case, tmp_path):
    from LiverTumorAILib.pipeline import run_classify

    probs = {}
    for device in ("cpu", "cuda"):
        run_classify(case / "ct.nii.gz", case / "label.nii.gz", tmp_path / device, mri_path=case / "mri.nii.gz",
                     device=device)
        report = json.loads((tmp_path / device / "report.json").read_text())
        probs[device] = [les.get("malignancy_probability") for les in report["lesions"]]
    assert len(probs["cpu"]) == len(probs["cuda"]) > 0
    for p_cpu, p_gpu in zip(probs["cpu"], probs["cuda"]):
        if p_cpu is None:
            assert p_gpu is None
        else:
            assert abs(p_cpu - p_gpu) <= 0.05


def test_training_steps_on_cuda(tmp_path):
    from LiverTumorAILib.phantom import generate_case
    from training.seg_trainer import prepare_case, train_segmentation

    cases = []
    for i, seed in enumerate((SEED + 1, SEED + 2)):
        c = generate_case(seed, size=128, slices=32)
        cases.append(prepare_case(f"c{i}", c.ct, c.label, spacing=[1.5, 1.5, 2.5]))
    lines: list[str] = []
    metrics = train_segmentation(cases[:1], cases[1:], architecture="tam-unet", out_dir=tmp_path / "tam-unet",
                                 train_config={"batch_size": 8, "steps_per_epoch": 20, "patch": 96, "lr": 1e-3,
                                               "loss": "ce_dice", "val_every": 2},
                                 epochs=4, device="cuda", log=lines.append)
    history = [json.loads(line) for line in lines if line.startswith("{")]
    assert history[-1]["loss"] < history[0]["loss"]
    assert 0.0 <= metrics["val_liver_dice"] <= 1.0
    from LiverTumorAILib.weights import load_weights

    model, manifest = load_weights(tmp_path / "tam-unet")
    assert manifest["architecture"] == "tam-unet"
    assert sum(p.numel() for p in model.parameters()) > 0


def test_training_masks_on_cuda_match_cpu():
    from LiverTumorAILib.phantom import generate_case
    from training.mask_sources import segmenter_masks

    phantom = generate_case(SEED, size=128, slices=32, n_lesions=3)
    cpu_lesions, cpu_label = segmenter_masks(phantom.ct, "tam-unet", device="cpu")
    gpu_lesions, gpu_label = segmenter_masks(phantom.ct, "tam-unet", device="cuda")
    cpu, gpu = sitk.GetArrayFromImage(cpu_label), sitk.GetArrayFromImage(gpu_label)
    assert _dice(cpu >= 1, gpu >= 1) >= 0.98
    assert _dice(sitk.GetArrayFromImage(cpu_lesions) > 0, sitk.GetArrayFromImage(gpu_lesions) > 0) >= 0.9
