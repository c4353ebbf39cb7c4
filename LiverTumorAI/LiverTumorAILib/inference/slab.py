"""Batched 2.5D slab inference over a volume on the model grid.

For each target slice z the network sees the slices z + o for o in the model's
`ct_offsets` (clamped at the volume ends) - 7 adjacent slices plus distant context
slices for the dual-stream model, one slice for TAM-U-Net. Slabs are batched; in-plane
sizes above `max_tile` fall back to MONAI's sliding-window inference with Gaussian
blending (which must be asked for: its default mode is "constant"). On CUDA the run
uses autocast (fp16) and channels_last; a CUDA out-of-memory (or a GPU that vanishes)
halves the batch and finally moves to the CPU, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from LiverTumorAILib.inference.device import is_out_of_memory

ProgressFn = Callable[[float], None]
WarnFn = Callable[[str], None]


@dataclass
class SlabPrediction:
    """Softmax probabilities (classes, z, y, x) and attention maps (z, y, x) per source."""

    probabilities: np.ndarray
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    class_logits: np.ndarray | None = None  # (z, 2) from a fusion head, if any
    device: str = "cpu"
    batch_size: int = 1


def gather_slab(volume: np.ndarray, centres: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """(len(centres), len(offsets), y, x) slices around each centre, clamped to the volume."""
    depth = volume.shape[0]
    idx = np.clip(np.asarray(centres)[:, None] + np.asarray(offsets)[None, :], 0, depth - 1)
    return volume[idx]


class _Predictor:
    """Wraps a model so sliding-window inference sees one tensor: logits then attention channels."""

    def __init__(self, model, n_ct: int, keep_attention: bool):
        self.model = model
        self.n_ct = n_ct
        self.keep_attention = keep_attention
        self.attention_names: list[str] = []

    def __call__(self, x):
        import torch

        ct, mri = x[:, : self.n_ct], (x[:, self.n_ct :] if x.shape[1] > self.n_ct else None)
        logits = self.model(ct, mri) if mri is not None else self.model(ct)
        outputs = [torch.softmax(logits.float(), dim=1)]
        if self.keep_attention:
            maps = getattr(self.model, "attention_maps", {}) or {}
            self.attention_names = sorted(maps)
            outputs += [maps[name].float() for name in self.attention_names]
        return torch.cat(outputs, dim=1)


def predict_volume(
    model,
    ct: np.ndarray,
    *,
    ct_offsets: Sequence[int],
    mri: np.ndarray | None = None,
    mri_offsets: Sequence[int] = (),
    device=None,
    batch_size: int = 8,
    keep_attention: bool = True,
    max_tile: int = 384,
    progress: ProgressFn | None = None,
    warn: WarnFn | None = None,
) -> SlabPrediction:
    """Run a 2.5D model over every slice of a normalised volume on its grid."""
    import torch

    device = device or torch.device("cpu")
    depth, height, width = ct.shape
    model.keep_attention = keep_attention
    use_mri = mri is not None and len(mri_offsets) > 0
    probs: np.ndarray | None = None
    attention: dict[str, np.ndarray] = {}
    class_logits: list[np.ndarray] = []
    z = 0
    while z < depth:
        centres = list(range(z, min(z + batch_size, depth)))
        slab = gather_slab(ct, centres, ct_offsets)
        if use_mri:
            slab = np.concatenate([slab, gather_slab(mri, centres, mri_offsets)], axis=1)
        try:
            out, names, logits = _run_batch(model, slab, len(ct_offsets), device, keep_attention, max_tile)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if device.type != "cuda" or not is_out_of_memory(error):
                raise
            try:
                torch.cuda.empty_cache()
            except RuntimeError:
                pass  # the GPU itself is gone: nothing to free
            memory_only = isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
            if memory_only and batch_size > 1:
                batch_size //= 2
                if warn:
                    warn(f"GPU out of memory: retrying with batch size {batch_size}")
            else:  # out of memory even one slice at a time, or the GPU failed / went away
                device = torch.device("cpu")
                model.to(device)
                if warn:
                    warn(f"GPU {'out of memory' if memory_only else 'failed or unavailable'}: continuing on the CPU (slower)")
            continue
        if probs is None:
            probs = np.zeros((3, depth, height, width), dtype=np.float32)
            attention = {name: np.zeros((depth, height, width), dtype=np.float32) for name in names}
        probs[:, centres[0] : centres[-1] + 1] = out[:, :3].transpose(1, 0, 2, 3)
        for i, name in enumerate(names):
            attention[name][centres[0] : centres[-1] + 1] = out[:, 3 + i]
        if logits is not None:
            class_logits.append(logits)
        z = centres[-1] + 1
        if progress:
            progress(z / depth)
    assert probs is not None
    return SlabPrediction(
        probabilities=probs,
        attention=attention,
        class_logits=np.concatenate(class_logits) if class_logits else None,
        device=str(device),
        batch_size=batch_size,
    )


def _run_batch(model, slab: np.ndarray, n_ct: int, device, keep_attention: bool, max_tile: int):
    import torch

    predictor = _Predictor(model, n_ct, keep_attention)
    x = torch.from_numpy(np.ascontiguousarray(slab, dtype=np.float32)).to(device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.float16) if on_cuda else _null_context()
    with torch.inference_mode(), autocast:
        if max(x.shape[-2:]) <= max_tile:
            out = predictor(x)
        else:
            from monai.inferers import sliding_window_inference

            out = sliding_window_inference(
                x, roi_size=(256, 256), sw_batch_size=x.shape[0], predictor=predictor,
                overlap=0.25, mode="gaussian",
            )
        logits = getattr(model, "class_logits", None)
        logits_np = logits.float().cpu().numpy() if (logits is not None and max(x.shape[-2:]) <= max_tile) else None
    return out.float().cpu().numpy(), predictor.attention_names, logits_np


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
