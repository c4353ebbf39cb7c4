"""CUDA out-of-memory and a GPU that fails mid-run: smaller batches, then the CPU, with a message.

No GPU here: the GPU is simulated at the one boundary that touches it (`slab._run_batch`, the call
that moves a batch to the device and runs the model). Everything else - the retry policy, the
model moved back to the CPU, the probabilities assembled - is the real code, and the result must
equal a plain CPU run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverTumorAILib.inference import slab
from LiverTumorAILib.models.registry import build_model

REAL_RUN_BATCH = slab._run_batch


def _model():
    torch.manual_seed(0)
    model = build_model("unet2d", {"features": [4, 4, 8, 8, 16, 4]})
    return model.eval()


def _volume():
    rng = np.random.default_rng(0)
    return rng.normal(size=(9, 32, 32)).astype(np.float32)


def _cpu_reference(model, ct):
    return slab.predict_volume(model, ct, ct_offsets=[0], device=torch.device("cpu"), batch_size=8, keep_attention=False)


def _fake_gpu(failure, fits_batch: int):
    """_run_batch on a pretend GPU: `failure` for batches above `fits_batch`, the real CPU run otherwise."""
    calls = []

    def run(model, batch, n_ct, device, keep_attention, max_tile):
        calls.append((device.type, batch.shape[0]))
        if device.type == "cuda":
            if batch.shape[0] > fits_batch:
                raise failure
            device = torch.device("cpu")
        return REAL_RUN_BATCH(model, batch, n_ct, device, keep_attention, max_tile)

    return run, calls


def _predict_on_fake_gpu(monkeypatch, failure, fits_batch: int, batch_size: int):
    """predict_volume asked for CUDA, with `_fake_gpu` in place; returns (model, ct, prediction, warnings, calls)."""
    model, ct = _model(), _volume()
    fake, calls = _fake_gpu(failure, fits_batch)
    monkeypatch.setattr(slab, "_run_batch", fake)
    warnings: list[str] = []
    pred = slab.predict_volume(model, ct, ct_offsets=[0], device=torch.device("cuda"), batch_size=batch_size,
                               keep_attention=False, warn=warnings.append)
    return model, ct, pred, warnings, calls


def test_out_of_memory_halves_the_batch_and_keeps_the_gpu(monkeypatch):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model, ct, pred, warnings, calls = _predict_on_fake_gpu(monkeypatch, oom, fits_batch=2, batch_size=8)
    assert warnings == ["GPU out of memory: retrying with batch size 4", "GPU out of memory: retrying with batch size 2"]
    assert pred.batch_size == 2 and pred.device == "cuda"
    assert all(kind == "cuda" for kind, _ in calls)
    np.testing.assert_allclose(pred.probabilities, _cpu_reference(model, ct).probabilities, atol=1e-6)


def test_out_of_memory_at_batch_one_falls_back_to_cpu(monkeypatch):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    model, ct, pred, warnings, calls = _predict_on_fake_gpu(monkeypatch, oom, fits_batch=0, batch_size=2)
    assert warnings[-1] == "GPU out of memory: continuing on the CPU (slower)"
    assert pred.device == "cpu" and calls[-1][0] == "cpu"
    np.testing.assert_allclose(pred.probabilities, _cpu_reference(model, ct).probabilities, atol=1e-6)


def test_gpu_that_goes_away_falls_back_to_cpu_at_once(monkeypatch):
    lost = RuntimeError("CUDA error: unspecified launch failure (GPU has fallen off the bus)")
    model, ct, pred, warnings, calls = _predict_on_fake_gpu(monkeypatch, lost, fits_batch=0, batch_size=8)
    assert warnings == ["GPU failed or unavailable: continuing on the CPU (slower)"]  # no batch halving first
    assert [kind for kind, _ in calls] == ["cuda"] + ["cpu"] * (len(calls) - 1)
    np.testing.assert_allclose(pred.probabilities, _cpu_reference(model, ct).probabilities, atol=1e-6)


def test_other_errors_are_not_swallowed(monkeypatch):
    model, ct = _model(), _volume()
    fake, _ = _fake_gpu(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), fits_batch=0)
    monkeypatch.setattr(slab, "_run_batch", fake)
    with pytest.raises(RuntimeError, match="shapes"):
        slab.predict_volume(model, ct, ct_offsets=[0], device=torch.device("cuda"), batch_size=4, keep_attention=False)
