"""Dual-stream 2.5D segmentation CNN (paper 001, section III.1, Fig. 1).

Reading of the paper and what we chose:

* Spatial stream: "a stack of high resolution central slices using a ResNet 34 encoder";
  section IV: "7 adjacent axial slices". => MONAI ``resnet34(spatial_dims=2,
  n_input_channels=7, feed_forward=False)`` on offsets -3..3 at full resolution, with the
  usual ImageNet-style stride-2 stem (MONAI's default stem stride is 1, which would run
  the 64-channel 7x7 stem and layer1 at full/half resolution: ~4x the cost for no
  documented benefit). Skips: stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16);
  layer4 (1/32) is the bottom of the decoder.
* Contextual stream: "lower resolution OR spatially distant slices" - we do both:
  distant offsets (default -12, -6, 0, 6, 12 model slices, i.e. +-3 cm at 2.5 mm) at half
  resolution through a light plain-conv encoder (16..128 channels).
* "Two parallel encoder-decoder paths" (Fig. 1 caption): each stream has its own decoder.
* "Attention gates adapted from CBAM ... embedded at the skip connections ... channel and
  spatial attention maps": `blocks.CBAMGate` on every skip of both decoders, gated by the
  coarser decoder signal (Attention U-Net style, which the paper cites for its gates).
* "Fused via concatenation before the final output layer": the spatial decoder's
  full-resolution features and the contextual decoder's features (upsampled x2) are
  concatenated and a 1x1 conv gives the 3 classes (background, liver, tumour).
* ``ct_offsets`` is the sorted union of both streams' offsets; ``spatial_index`` and
  ``context_index`` say which input channels feed which stream.
* ``spatial_encoder="resnet18"`` is offered for speed-constrained retraining (not the paper).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .blocks import CBAMGate, DoubleConv, conv_bn_relu, upsample2x, upsample_map

_RESNET_WIDTHS = (64, 64, 128, 256, 512)  # stem, layer1..layer4 (resnet18/34)


class _GatedUp(nn.Module):
    """Decoder level: x2 upsample, CBAM gate on the skip (gated by the coarse signal), concat, convs.

    `gate=False` (ablation of paper 001) passes the skip through unchanged."""

    def __init__(self, cin: int, skip: int, cout: int, n_convs: int = 2, gate: bool = True) -> None:
        super().__init__()
        self.gate = CBAMGate(skip, cin) if gate else None
        convs = [conv_bn_relu(cin + skip, cout)] + [conv_bn_relu(cout, cout) for _ in range(n_convs - 1)]
        self.convs = nn.Sequential(*convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        gated, a = self.gate(skip, x) if self.gate is not None else (skip, None)
        return self.convs(torch.cat([upsample2x(x), gated], dim=1)), a


class _ResNetEncoder(nn.Module):
    """MONAI 2D ResNet-18/34 (no FC head) returning [stem, layer1, layer2, layer3, layer4]."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import resnet18, resnet34

        factory = {"resnet34": resnet34, "resnet18": resnet18}.get(name)
        if factory is None:
            raise ValueError(f"spatial_encoder must be 'resnet34' or 'resnet18', got {name!r}")
        net = factory(spatial_dims=2, n_input_channels=in_channels, feed_forward=False, conv1_t_stride=2)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.act(self.bn1(self.conv1(x)))
        l1 = self.layer1(self.maxpool(s))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        return [s, l1, l2, l3, self.layer4(l3)]


class DualStreamNet(nn.Module):
    """forward(ct [B, len(ct_offsets), H, W], mri=None) -> logits [B, num_classes, H, W]; H, W % 32 == 0."""

    architecture = "dual-stream"

    def __init__(
        self,
        ct_offsets: Optional[Sequence[int]] = None,
        mri_offsets: Sequence[int] = (),
        num_classes: int = 3,
        spatial_offsets: Sequence[int] = (-3, -2, -1, 0, 1, 2, 3),
        context_offsets: Sequence[int] = (-12, -6, 0, 6, 12),
        spatial_encoder: str = "resnet34",
        decoder_channels: Sequence[int] = (128, 64, 48, 32, 16),
        context_channels: Sequence[int] = (16, 32, 64, 128),
        context_downsample: int = 2,
        attention_gates: bool = True,
        context_stream: bool = True,
    ) -> None:
        super().__init__()
        if list(mri_offsets):
            raise ValueError("dual-stream is CT-only: mri_offsets must be empty")
        self.attention_gates = bool(attention_gates)
        self.context_stream = bool(context_stream)
        if not self.context_stream:
            context_offsets = ()
        union = sorted({int(o) for o in spatial_offsets} | {int(o) for o in context_offsets})
        if ct_offsets is not None and [int(o) for o in ct_offsets] != union:
            raise ValueError(f"ct_offsets {list(ct_offsets)} must be the sorted union of spatial and context offsets {union}")
        if len(decoder_channels) != 5:
            raise ValueError("decoder_channels needs 5 widths (1/16, 1/8, 1/4, 1/2, 1/1)")
        self.ct_offsets = union
        self.mri_offsets: list[int] = []
        self.num_classes = num_classes
        self.spatial_offsets = [int(o) for o in spatial_offsets]
        self.context_offsets = [int(o) for o in context_offsets]
        self.spatial_index = [union.index(o) for o in self.spatial_offsets]
        self.context_index = [union.index(o) for o in self.context_offsets]
        self.register_buffer("_sidx", torch.tensor(self.spatial_index, dtype=torch.long), persistent=False)
        self.register_buffer("_cidx", torch.tensor(self.context_index, dtype=torch.long), persistent=False)
        self.context_downsample = int(context_downsample)
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}

        # spatial stream: ResNet encoder + gated decoder 1/32 -> 1/1
        self.encoder = _ResNetEncoder(spatial_encoder, len(self.spatial_offsets))
        d = list(decoder_channels)
        skips = _RESNET_WIDTHS[:4][::-1]  # layer3, layer2, layer1, stem
        cins = [_RESNET_WIDTHS[4]] + d[:3]
        self.spatial_up = nn.ModuleList(
            _GatedUp(cin, sk, cout, n_convs=2 if i < 2 else 1, gate=self.attention_gates)
            for i, (cin, sk, cout) in enumerate(zip(cins, skips, d[:4]))
        )
        self.spatial_final = conv_bn_relu(d[3], d[4])

        # contextual stream: light encoder at reduced resolution + gated decoder
        c = list(context_channels) if self.context_stream else []
        self.context_pool = nn.AvgPool2d(self.context_downsample) if self.context_downsample > 1 else nn.Identity()
        self.context_enc = nn.ModuleList()
        cin = len(self.context_offsets)
        for w in c:
            self.context_enc.append(DoubleConv(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.context_up = nn.ModuleList(
            _GatedUp(c[i + 1], c[i], c[i], n_convs=1, gate=self.attention_gates) for i in reversed(range(len(c) - 1))
        )

        self.head = nn.Conv2d(d[4] + (c[0] if c else 0), num_classes, 1)

    @classmethod
    def default_config(cls) -> dict:
        spatial, context = [-3, -2, -1, 0, 1, 2, 3], [-12, -6, 0, 6, 12]
        return {
            "ct_offsets": sorted(set(spatial) | set(context)), "mri_offsets": [], "num_classes": 3,
            "spatial_offsets": spatial, "context_offsets": context, "spatial_encoder": "resnet34",
            "decoder_channels": [128, 64, 48, 32, 16], "context_channels": [16, 32, 64, 128],
            "context_downsample": 2, "attention_gates": True, "context_stream": True,
        }

    @classmethod
    def complete_config(cls, cfg: dict, overrides: dict) -> dict:
        """Derive ``ct_offsets`` from the stream offsets unless the caller set it explicitly."""
        if "ct_offsets" not in overrides:
            context = cfg["context_offsets"] if cfg.get("context_stream", True) else []
            cfg = {**cfg, "ct_offsets": sorted({int(o) for o in cfg["spatial_offsets"]} | {int(o) for o in context})}
        return cfg

    def forward(self, ct: torch.Tensor, mri: Optional[torch.Tensor] = None) -> torch.Tensor:
        maps: Optional[dict] = {} if self.keep_attention else None
        xs = ct.index_select(1, self._sidx)

        feats = self.encoder(xs)
        x = feats[4]
        for i, up in enumerate(self.spatial_up):
            x, a = up(x, feats[3 - i])
            if maps is not None and a is not None:
                maps[f"spatial_gate{4 - i}"] = a
        x = self.spatial_final(upsample2x(x))
        if not self.context_stream:
            logits = self.head(x)
            if maps is not None:
                size = tuple(ct.shape[-2:])
                self.attention_maps = {k: upsample_map(v, size) for k, v in maps.items()}
            return logits

        y = self.context_pool(ct.index_select(1, self._cidx))
        cskips = []
        for i, enc in enumerate(self.context_enc):
            if i:
                y = self.pool(y)
            y = enc(y)
            cskips.append(y)
        y = cskips[-1]
        for j, up in enumerate(self.context_up):
            level = len(cskips) - 2 - j
            y, a = up(y, cskips[level])
            if maps is not None and a is not None:
                maps[f"context_gate{level + 1}"] = a
        if y.shape[-2:] != x.shape[-2:]:
            y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

        logits = self.head(torch.cat([x, y], dim=1))
        if maps is not None:
            size = tuple(ct.shape[-2:])
            self.attention_maps = {k: upsample_map(v, size) for k, v in maps.items()}
        return logits
