"""2D slice baselines for lesion classification (paper 001, Table "Baseline Models"):
ResNet-50 and DenseNet-121 applied to axial slices of the lesion crop, fused by majority vote.

Both come from MONAI (torchvision does not import beside this torch build). Our reading of the
paper's "2D slices, majority vote fusion":

* The slices are ``n_slices`` axial slices of the same 64^3 lesion crop the hybrid3d sees, centred
  on the lesion centroid, ``slice_stride`` voxels apart (default 7 slices, 4 apart: the central
  ~40 % of the crop, i.e. inside the lesion for any lesion the crop rule of
  ``classification/crops.py`` frames). Each slice is classified independently with the lesion's
  label during training (loss on ``slice_logits``), as a 2D network is trained on slices.
* Fusion: each slice votes for its argmax class; the lesion gets the majority class, ties broken by
  the mean slice probability (``slice_majority_vote``). For ranking metrics (AUC) and calibration,
  ``logits`` = the mean of the slice logits (a vote fraction alone has too many ties for an ROC).
* No ImageNet pretraining (no downloads; single- or two-channel CT/MRI input anyway).

``forward(x: Tensor[B, C, D, H, W])`` (a crop) -> ``dict(logits=[B, 2], slice_logits=[B, S, 2],
votes=[B, 2] (fraction of slices voting each class), majority=[B] (int64))``;
``forward_slices(x: Tensor[N, C, H, W]) -> Tensor[N, 2]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def default_config(architecture: str = "resnet50-2d") -> dict[str, Any]:
    """Default constructor kwargs for ``resnet50-2d`` / ``densenet121-2d``."""
    if architecture not in MODELS:
        raise ValueError(f"unknown 2D baseline {architecture!r} (known: {', '.join(MODELS)})")
    return {"in_channels": 1, "num_classes": 2, "n_slices": 7, "slice_stride": 4}


def slice_indices(depth: int, n_slices: int, stride: int) -> list[int]:
    """``n_slices`` indices ``stride`` apart, centred on the middle of ``depth`` (clamped)."""
    centre = (depth - 1) / 2.0
    idx = [int(round(centre + stride * (i - (n_slices - 1) / 2.0))) for i in range(n_slices)]
    return [min(max(i, 0), depth - 1) for i in idx]


def slice_majority_vote(slice_logits) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over slices.

    ``slice_logits``: ``[B, S, K]`` (tensor or array). Returns ``(labels [B] int64, votes [B, K])``
    with ``votes`` the fraction of slices voting each class; ties are broken by the highest mean
    slice probability among the tied classes.
    """
    z = slice_logits.detach().cpu().numpy() if isinstance(slice_logits, torch.Tensor) else np.asarray(slice_logits)
    if z.ndim != 3:
        raise ValueError(f"slice_logits must be [B, S, K], got shape {z.shape}")
    b, s, k = z.shape
    e = np.exp(z - z.max(axis=2, keepdims=True))
    probs = e / e.sum(axis=2, keepdims=True)
    votes = np.zeros((b, k), dtype=np.float64)
    for c in range(k):
        votes[:, c] = (z.argmax(axis=2) == c).mean(axis=1)
    mean_p = probs.mean(axis=1)
    top = votes.max(axis=1, keepdims=True)
    tied_score = np.where(np.isclose(votes, top), mean_p, -np.inf)
    return tied_score.argmax(axis=1).astype(np.int64), votes


class _SliceClassifier(nn.Module):
    architecture = ""

    def __init__(self, in_channels: int, num_classes: int, n_slices: int, slice_stride: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.n_slices = int(n_slices)
        self.slice_stride = int(slice_stride)
        self.net = self._build(int(in_channels), int(num_classes))

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return default_config(cls.architecture)

    def _build(self, in_channels: int, num_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K]`` for 2D slices ``x: [N, C, H, W]``."""
        return self.net(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.architecture} expects a crop Tensor[B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        b, c, d, h, w = x.shape
        idx = slice_indices(d, self.n_slices, self.slice_stride)
        slices = x[:, :, idx].permute(0, 2, 1, 3, 4).reshape(b * len(idx), c, h, w)
        slice_logits = self.forward_slices(slices).reshape(b, len(idx), -1)
        majority, votes = slice_majority_vote(slice_logits)
        return {
            "logits": slice_logits.mean(dim=1),
            "slice_logits": slice_logits,
            "votes": torch.as_tensor(votes, dtype=torch.float32, device=x.device),
            "majority": torch.as_tensor(majority, device=x.device),
        }


class ResNet50Slices(_SliceClassifier):
    """MONAI ResNet-50 (2D) on axial slices of the lesion crop + majority vote."""

    architecture = "resnet50-2d"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, n_slices: int = 7, slice_stride: int = 4) -> None:
        super().__init__(in_channels, num_classes, n_slices, slice_stride)

    def _build(self, in_channels: int, num_classes: int) -> nn.Module:
        from monai.networks.nets import resnet50

        return resnet50(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes)


class DenseNet121Slices(_SliceClassifier):
    """MONAI DenseNet-121 (2D) on axial slices of the lesion crop + majority vote."""

    architecture = "densenet121-2d"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, n_slices: int = 7, slice_stride: int = 4) -> None:
        super().__init__(in_channels, num_classes, n_slices, slice_stride)

    def _build(self, in_channels: int, num_classes: int) -> nn.Module:
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


#: For ``models.registry``: architecture name -> class (constructed with ``**config``).
MODELS: dict[str, type] = {ResNet50Slices.architecture: ResNet50Slices, DenseNet121Slices.architecture: DenseNet121Slices}
