"""CT + MRI attention fusion network (paper 000, section 3).

Reading of the paper and what we chose:

* "Dual-branch CNN encoders, each dedicated to one modality ... convolutional layers with
  batch normalization, ReLU activation, and max pooling": two encoders of DoubleConv
  (Conv-BN-ReLU x2) + MaxPool. CT widths 16..256; the MRI encoder is half as wide
  (8..128) by default: one MRI channel resampled onto the CT grid carries less fine
  detail than the CT slab, and it saves ~25% of the CPU cost (the paper gives no widths).
* "A fusion block that utilizes spatial and channel attention": CBAM (channel then
  spatial) on the concatenated CT+MRI features, then a 1x1 conv back to the CT width.
  The paper fuses once before the decoder; a "U-Net-inspired" decoder needs skips, so we
  fuse at every level (one fusion block per scale, the skip = fused features). The
  deepest fusion block's spatial map and the others are exposed as attention maps.
* "Decoder follows a U-Net-inspired upsampling path": Upsample -> Conv-BN-ReLU -> concat
  fused skip -> Conv-BN-ReLU, 3 classes (background, liver, tumour).
* "The classification branch applies global average pooling and dense layers" on the
  fused bottleneck: GAP -> Linear -> ReLU -> Dropout -> Linear(2) = ``class_logits``
  (benign, malignant). It sees the whole slab; lesion-level classification is the
  hybrid3d model's job, this head is the paper's auxiliary task.
* Inputs: ``ct_offsets`` default [-1, 0, 1], ``mri_offsets`` [0] (the MRI resampled onto
  the CT grid by the engine). ``mri=None`` is replaced by zeros (train with modality
  dropout if CT-only use matters); callers should warn the user when that happens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .blocks import CBAM, DoubleConv, conv_bn_relu, upsample2x, upsample_map


class FusionBlock(nn.Module):
    """CBAM on concat(ct, mri) then 1x1 conv to ``cout``; returns (fused, spatial map)."""

    def __init__(self, c_ct: int, c_mri: int, cout: int) -> None:
        super().__init__()
        self.cbam = CBAM(c_ct + c_mri)
        self.proj = conv_bn_relu(c_ct + c_mri, cout, k=1)

    def forward(self, f_ct: torch.Tensor, f_mri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, a = self.cbam(torch.cat([f_ct, f_mri], dim=1))
        return self.proj(x), a


class _Encoder(nn.Module):
    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for w in widths:
            self.blocks.append(DoubleConv(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, b in enumerate(self.blocks):
            x = b(self.pool(x) if i else x)
            out.append(x)
        return out


class FusionNet(nn.Module):
    """forward(ct [B,len(ct_offsets),H,W], mri [B,len(mri_offsets),H,W]) -> logits [B,3,H,W];
    also sets ``class_logits`` [B, 2]."""

    architecture = "fusion"

    def __init__(
        self,
        ct_offsets: Sequence[int] = (-1, 0, 1),
        mri_offsets: Sequence[int] = (0,),
        num_classes: int = 3,
        ct_channels: Sequence[int] = (16, 32, 64, 128, 256),
        mri_channels: Sequence[int] = (8, 16, 32, 64, 128),
        classifier_hidden: int = 64,
        classifier_dropout: float = 0.3,
        num_tumor_classes: int = 2,
    ) -> None:
        super().__init__()
        if not list(mri_offsets):
            raise ValueError("fusion needs at least one MRI offset")
        if len(ct_channels) != len(mri_channels):
            raise ValueError("ct_channels and mri_channels need the same number of levels")
        self.ct_offsets = [int(o) for o in ct_offsets]
        self.mri_offsets = [int(o) for o in mri_offsets]
        self.num_classes = num_classes
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}
        self.class_logits: Optional[torch.Tensor] = None
        c = list(ct_channels)
        self.ct_enc = _Encoder(len(self.ct_offsets), c)
        self.mri_enc = _Encoder(len(self.mri_offsets), mri_channels)
        self.fuse = nn.ModuleList(FusionBlock(a, b, a) for a, b in zip(c, mri_channels))
        self.up = nn.ModuleList(conv_bn_relu(c[i + 1], c[i]) for i in reversed(range(len(c) - 1)))
        self.dec = nn.ModuleList(conv_bn_relu(2 * c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c[-1], classifier_hidden), nn.ReLU(inplace=True),
            nn.Dropout(classifier_dropout), nn.Linear(classifier_hidden, num_tumor_classes),
        )

    @classmethod
    def default_config(cls) -> dict:
        return {
            "ct_offsets": [-1, 0, 1], "mri_offsets": [0], "num_classes": 3,
            "ct_channels": [16, 32, 64, 128, 256], "mri_channels": [8, 16, 32, 64, 128],
            "classifier_hidden": 64, "classifier_dropout": 0.3, "num_tumor_classes": 2,
        }

    def forward(self, ct: torch.Tensor, mri: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mri is None:
            mri = ct.new_zeros((ct.shape[0], len(self.mri_offsets), *ct.shape[-2:]))
        maps: Optional[dict] = {} if self.keep_attention else None
        fct, fmri = self.ct_enc(ct), self.mri_enc(mri)
        fused = []
        for i, (block, a_, b_) in enumerate(zip(self.fuse, fct, fmri)):
            f, a = block(a_, b_)
            fused.append(f)
            if maps is not None:
                maps[f"fusion{i + 1}"] = a
        x = fused[-1]
        self.class_logits = self.classifier(x.mean(dim=(2, 3), keepdim=True))
        for j, (up, dec) in enumerate(zip(self.up, self.dec)):
            x = up(upsample2x(x))
            x = dec(torch.cat([x, fused[-2 - j]], dim=1))
        logits = self.head(x)
        if maps is not None:
            size = tuple(ct.shape[-2:])
            self.attention_maps = {k: upsample_map(v, size) for k, v in maps.items()}
        return logits
