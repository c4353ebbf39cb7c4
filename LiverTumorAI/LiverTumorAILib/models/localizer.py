"""Coarse liver localiser: a small MONAI 3D U-Net at 4 x 4 x 5 mm.

Why: the 2.5D models are run only on the liver's bounding box (plus margin), which is
what makes whole-volume inference fit the CPU budget. At 4 x 4 x 5 mm an abdomen is
about 100 x 100 x 80 voxels, so a (8, 16, 32, 64)-channel U-Net with one residual unit
per level runs in about a second on a 2-core CPU. Output: 2 classes (background, liver).
Input [B, 1, D, H, W]; D, H, W multiples of 16 (the engine pads).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from LiverTumorAILib.models.baselines import residual_unet_3d


class Localizer3D(nn.Module):
    """forward(x [B, 1, D, H, W]) -> logits [B, 2, D, H, W]."""

    architecture = "localizer"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 32, 64),
        num_res_units: int = 1,
        spacing_mm: Sequence[float] = (4.0, 4.0, 5.0),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.spacing_mm = [float(s) for s in spacing_mm]  # recorded for the engine (x, y, z)
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}
        self.net = residual_unet_3d(in_channels, num_classes, channels, num_res_units)

    @classmethod
    def default_config(cls) -> dict:
        return {"in_channels": 1, "num_classes": 2, "channels": [8, 16, 32, 64], "num_res_units": 1,
                "spacing_mm": [4.0, 4.0, 5.0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
