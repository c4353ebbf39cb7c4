"""TAM-U-Net (paper 004): a 2D U-Net with Tumor Attention Modules in encoder and decoder.

Reading of the paper (section III.B-D) and what we chose:

* Encoder block: Conv -> ReLU -> Conv -> ReLU -> MaxPool. We add BatchNorm after each
  conv (``batch_norm=True``, default; the paper does not mention it) because it makes
  training from scratch on small synthetic sets stable; set it False for the paper's form.
* Decoder block: Upsample -> Conv -> ReLU, then concatenation with the encoder skip
  (F_concat = F_up ⊕ F_enc). The paper leaves implicit what mixes the concatenated
  features; we add one Conv -> [BN] -> ReLU after the concatenation, as in every U-Net.
* TAM: F_TAM = sigmoid(W_a * F + b_a) ⊙ F with a 1x1 conv. "Pixel-wise importance" and
  "spatial gating" => A is a 1-channel spatial map broadcast over channels (default;
  ``tam_per_channel=True`` for the C-channel reading). "At multiple points in both the
  encoding and decoding stages": after every encoder block (so the skips carry refined
  features), at the bottleneck, and after every decoder block (each switchable).
* Input: 2D slices (``ct_offsets=[0]``); ``[-1, 0, 1]`` makes it 2.5D. Output: 3 classes.
* Widths: base 16, doubling per level, 4 pooling levels (the paper gives none; chosen so
  a whole liver runs in seconds on a 2-core CPU).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .blocks import TAM, DoubleConv, conv_bn_relu, upsample2x, upsample_map


class TAMUNet(nn.Module):
    """forward(ct [B, len(ct_offsets), H, W], mri=None) -> logits [B, num_classes, H, W]."""

    architecture = "tam-unet"

    def __init__(
        self,
        ct_offsets: Sequence[int] = (0,),
        mri_offsets: Sequence[int] = (),
        num_classes: int = 3,
        base_channels: int = 16,
        depth: int = 4,
        batch_norm: bool = True,
        tam_encoder: bool = True,
        tam_bottleneck: bool = True,
        tam_decoder: bool = True,
        tam_per_channel: bool = False,
    ) -> None:
        super().__init__()
        if list(mri_offsets):
            raise ValueError("tam-unet is CT-only: mri_offsets must be empty")
        self.ct_offsets = [int(o) for o in ct_offsets]
        self.mri_offsets: list[int] = []
        self.num_classes = num_classes
        self.keep_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}
        widths = [base_channels * 2**i for i in range(depth + 1)]
        cin = len(self.ct_offsets)
        self.enc = nn.ModuleList()
        self.enc_tam = nn.ModuleList()
        for w in widths[:-1]:
            self.enc.append(DoubleConv(cin, w, batch_norm))
            self.enc_tam.append(TAM(w, tam_per_channel) if tam_encoder else nn.Identity())
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], batch_norm)
        self.bott_tam = TAM(widths[-1], tam_per_channel) if tam_bottleneck else nn.Identity()
        self.up_conv = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.dec_tam = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up_conv.append(conv_bn_relu(widths[i + 1], widths[i], 3, batch_norm))
            self.fuse.append(conv_bn_relu(2 * widths[i], widths[i], 3, batch_norm))
            self.dec_tam.append(TAM(widths[i], tam_per_channel) if tam_decoder else nn.Identity())
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @classmethod
    def default_config(cls) -> dict:
        return {
            "ct_offsets": [0], "mri_offsets": [], "num_classes": 3, "base_channels": 16, "depth": 4,
            "batch_norm": True, "tam_encoder": True, "tam_bottleneck": True, "tam_decoder": True,
            "tam_per_channel": False,
        }

    def _tam(self, mod: nn.Module, x: torch.Tensor, name: str, maps: Optional[dict]) -> torch.Tensor:
        if isinstance(mod, nn.Identity):
            return x
        x, a = mod(x)
        if maps is not None:
            maps[name] = a
        return x

    def forward(self, ct: torch.Tensor, mri: Optional[torch.Tensor] = None) -> torch.Tensor:
        maps: Optional[dict] = {} if self.keep_attention else None
        skips = []
        x = ct
        for i, (block, tam) in enumerate(zip(self.enc, self.enc_tam)):
            x = self._tam(tam, block(x), f"tam_enc{i + 1}", maps)
            skips.append(x)
            x = self.pool(x)
        x = self._tam(self.bott_tam, self.bottleneck(x), "tam_bottleneck", maps)
        for j, (up, fuse, tam) in enumerate(zip(self.up_conv, self.fuse, self.dec_tam)):
            skip = skips[-1 - j]
            x = up(upsample2x(x))
            x = fuse(torch.cat([x, skip], dim=1))
            x = self._tam(tam, x, f"tam_dec{len(skips) - j}", maps)
        logits = self.head(x)
        if maps is not None:
            size = tuple(ct.shape[-2:])
            self.attention_maps = {k: upsample_map(v, size) for k, v in maps.items()}
        return logits
