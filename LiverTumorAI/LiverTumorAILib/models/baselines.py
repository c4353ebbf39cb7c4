"""Baselines of paper 001 (Table: 2D U-Net slice by slice, 3D U-Net without attention gates).

Both are MONAI networks ("use MONAI for what it does well"), wrapped to the project's
model interface. They have no attention modules: with ``keep_attention = True`` they leave
``attention_maps`` empty (the heatmap code falls back to the tumour probability).

* ``unet2d``: MONAI ``BasicUNet`` (the classic two-conv-per-level U-Net with max pooling
  and transposed convolutions), 2D, 3 classes, ``ct_offsets=[0]``; features
  (16, 32, 64, 128, 256, 16) - half MONAI's default widths, for CPU training.
* ``unet3d``: MONAI ``UNet`` 3D, channels (16, 32, 64, 128, 256), strides 2, two residual
  units per level, 3 classes, input [B, 1, D, H, W] (D, H, W multiples of 16).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def residual_unet_3d(in_channels: int, out_channels: int, channels: Sequence[int], num_res_units: int) -> nn.Module:
    """MONAI's 3D ``UNet``, stride 2 between levels, batch norm: the 3D baseline's and the liver
    localiser's body (one place for both)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm="batch")


class UNet2D(nn.Module):
    """forward(ct [B, len(ct_offsets), H, W], mri=None) -> logits [B, num_classes, H, W]."""

    architecture = "unet2d"

    def __init__(
        self,
        ct_offsets: Sequence[int] = (0,),
        mri_offsets: Sequence[int] = (),
        num_classes: int = 3,
        features: Sequence[int] = (16, 32, 64, 128, 256, 16),
        norm: str = "instance",
    ) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        if list(mri_offsets):
            raise ValueError("unet2d is CT-only: mri_offsets must be empty")
        self.ct_offsets = [int(o) for o in ct_offsets]
        self.mri_offsets: list[int] = []
        self.num_classes = num_classes
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}
        self.net = BasicUNet(
            spatial_dims=2, in_channels=len(self.ct_offsets), out_channels=num_classes,
            features=tuple(features), norm=(norm, {"affine": True}),
        )

    @classmethod
    def default_config(cls) -> dict:
        return {"ct_offsets": [0], "mri_offsets": [], "num_classes": 3,
                "features": [16, 32, 64, 128, 256, 16], "norm": "instance"}

    def forward(self, ct: torch.Tensor, mri: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.attention_maps = {}
        return self.net(ct)


class UNet3D(nn.Module):
    """forward(x [B, 1, D, H, W]) -> logits [B, num_classes, D, H, W]."""

    architecture = "unet3d"

    def __init__(
        self,
        ct_offsets: Sequence[int] = (0,),
        mri_offsets: Sequence[int] = (),
        num_classes: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        num_res_units: int = 2,
    ) -> None:
        super().__init__()
        self.ct_offsets = [int(o) for o in ct_offsets]  # kept for interface symmetry (volumetric model)
        self.mri_offsets = [int(o) for o in mri_offsets]
        self.num_classes = num_classes
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}
        self.net = residual_unet_3d(in_channels, num_classes, channels, num_res_units)

    @classmethod
    def default_config(cls) -> dict:
        return {"ct_offsets": [0], "mri_offsets": [], "num_classes": 3, "in_channels": 1,
                "channels": [16, 32, 64, 128, 256], "num_res_units": 2}

    def forward(self, x: torch.Tensor, mri: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.attention_maps = {}
        return self.net(x)
