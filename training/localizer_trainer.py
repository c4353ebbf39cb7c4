"""Trainer for the coarse 3D liver localiser (first stage of the inference cascade).

Whole scans at the localiser spacing (4 x 4 x 5 mm) are small (~100^3), so each step
sees whole volumes: no patch sampling. Loss: soft Dice + CE on liver vs rest. Only an
HU shift and Gaussian noise as augmentation - the job is a generous box, not a margin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.geometry import resample_like
from LiverTumorAILib.inference.localize import LOCALIZER_SPACING_MM, localizer_input


def prepare_localizer_case(ct: sitk.Image, label: sitk.Image, spacing=LOCALIZER_SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """(normalised CT, liver mask) on the localiser grid, padded like at inference."""
    array, reference, depth = localizer_input(ct, spacing)
    liver = sitk.GetArrayFromImage(resample_like(label, reference, label=True)) >= 1
    mask = np.zeros(array.shape, dtype=np.uint8)
    mask[:depth] = liver
    return array.astype(np.float32), mask


def _pad_to(array: np.ndarray, shape: Sequence[int], fill: float) -> np.ndarray:
    out = np.full(shape, fill, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1], : array.shape[2]] = array
    return out


def train_localizer(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    val: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    out_dir: Path,
    steps: int = 400,
    max_minutes: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 2,
    seed: int = 0,
    manifest_extra: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    import torch
    import torch.nn.functional as F

    from LiverTumorAILib.models.registry import build_model, default_config
    from LiverTumorAILib.weights import save_weights

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = default_config("localizer")
    model = build_model("localizer", config)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        picks = [train[int(rng.integers(len(train)))] for _ in range(batch_size)]
        shape = np.max([p[0].shape for p in picks], axis=0)
        x = np.stack([_pad_to(p[0] + rng.normal(0, 0.1), shape, float(p[0].min())) for p in picks])[:, None]
        x = x + rng.normal(0, 0.05, x.shape)
        y = np.stack([_pad_to(p[1], shape, 0) for p in picks])
        logits = model(torch.from_numpy(x.astype(np.float32)))
        target = torch.from_numpy(y.astype(np.int64))
        prob = torch.softmax(logits, 1)[:, 1]
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        loss = F.cross_entropy(logits, target) + dice
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            log(json.dumps({"step": step, "loss": round(float(loss), 4), "minutes": round((time.perf_counter() - t0) / 60, 2)}))
        if max_minutes and (time.perf_counter() - t0) / 60 > max_minutes:
            break
    model.eval()
    dices = []
    with torch.inference_mode():
        for x, y in val:
            pred = torch.softmax(model(torch.from_numpy(x)[None, None]), 1)[0, 1].numpy() > 0.5
            dices.append(2 * np.logical_and(pred, y).sum() / max(pred.sum() + y.sum(), 1))
    metrics = {"val_liver_dice_coarse": float(np.mean(dices)) if dices else float("nan"), "steps": step + 1}
    manifest = {
        "name": "localizer",
        "architecture": "localizer",
        "task": "localization",
        "config": config,
        "preprocessing": {"spacing_mm": list(LOCALIZER_SPACING_MM), "window_hu": [-100.0, 400.0],
                          "normalization": "window-uniform-zscore"},
        "metrics": metrics,
    }
    manifest.update(manifest_extra or {})
    save_weights(model, Path(out_dir), manifest)
    log(json.dumps(metrics))
    return metrics
