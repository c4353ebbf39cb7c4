"""Building blocks shared by the segmentation models.

All ops are plain conv / pooling / interpolate / elementwise, so every model works with
``channels_last`` memory format and under ``torch.autocast`` (bf16 on CPU, fp16 on CUDA).
Attention maps are returned at feature resolution; `upsample_map` brings them to the
input size (done only when a model's ``keep_attention`` is set, to keep inference fast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, batch_norm: bool = True) -> nn.Sequential:
    """Conv(k, same padding) -> [BatchNorm] -> ReLU. Bias only when there is no BN."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Conv -> [BN] -> ReLU -> Conv -> [BN] -> ReLU (the U-Net encoder block, minus the pool)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True) -> None:
        super().__init__(conv_bn_relu(cin, cout, 3, batch_norm), conv_bn_relu(cout, cout, 3, batch_norm))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling (align_corners=False, so sizes double exactly)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``ref``'s spatial size (no-op when equal)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def upsample_map(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An attention map [B,1,h,w] in [0,1] -> float32 [B,1,H,W] in [0,1], detached.

    Bilinear interpolation of values in [0,1] stays in [0,1]; the clamp only guards
    against bf16/fp16 rounding.
    """
    a = a.detach().float()
    if a.shape[-2:] != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return a.clamp_(0.0, 1.0).contiguous()


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool)) -> [B,C,1,1]."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c, max_c])) -> [B,1,H,W]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al. 2018). Returns (refined, spatial map)."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * self.channel(x)
        a = self.spatial(x)
        return x * a, a


class CBAMGate(nn.Module):
    """CBAM-style attention gate on a skip connection, conditioned on the decoder signal.

    Paper 001 says the gates are "adapted from the principles of CBAM" and "embedded at
    the skip connections", generating "channel and spatial attention maps" that steer the
    decoder (after Attention U-Net, which gates a skip with the coarser decoder signal).
    Our reading: z = ReLU(Wx*skip + Wg*up(g)) mixes the skip with the gating signal g;
    channel attention of z (CBAM MLP on avg+max pool) and spatial attention of z (CBAM
    7x7 conv on channel mean+max) then multiply the skip: out = skip * ca * sa.
    Returns (gated skip, spatial map [B,1,h,w]).
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None,
                 reduction: int = 8) -> None:
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 8)
        self.wx = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.wg = nn.Conv2d(gate_channels, inter, 1, bias=True)
        self.channel = ChannelAttention(inter, reduction)
        self.to_skip = nn.Conv2d(inter, skip_channels, 1)  # channel weights per skip channel
        self.spatial = SpatialAttention(7)

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.wx(skip) + resize_like(self.wg(g), skip))
        zc = z * self.channel(z)
        ca = torch.sigmoid(self.to_skip(zc.mean(dim=(2, 3), keepdim=True)))
        sa = self.spatial(zc)
        return skip * ca * sa, sa


class TAM(nn.Module):
    """Tumor Attention Module (paper 004, III.C): F_TAM = sigmoid(W_a * F + b_a) ⊙ F.

    The paper calls A "pixel-wise importance" and TAM "a spatial gating mechanism", so
    the faithful reading is a 1x1 conv to ONE channel, broadcast over the C channels
    (``per_channel=False``, default). ``per_channel=True`` gives the C-channel variant
    (A has the shape of F), which the formula alone would also allow; then the exposed
    map is the channel mean of A.
    """

    def __init__(self, channels: int, per_channel: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels if per_channel else 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(self.conv(x))
        amap = a if a.shape[1] == 1 else a.mean(dim=1, keepdim=True)
        return x * a, amap
