"""Hybrid 3D CNN for lesion classification (benign vs malignant), paper 001 section "Hybrid 3D
Classification Network", with an optional CT+MRI fusion stem after paper 000.

Architecture (input ``x: Tensor[B, C, 64, 64, 64]``, C = 1 CT or C = 2 CT + MRI)::

    block1  conv3x3x3(C->16)  BN ReLU  maxpool2   64^3 -> 32^3
    block2  conv3x3x3(16->32) BN ReLU  maxpool2   32^3 -> 16^3
    block3  conv3x3x3(32->64) BN ReLU  maxpool2   16^3 ->  8^3
    block4  conv3x3x3(64->128) BN ReLU conv3x3x3(128->128) BN ReLU          8^3
    3D channel attention (SE): GAP -> FC(128->128/r) -> ReLU -> FC(->128) -> sigmoid -> reweight
    main head: maxpool2 (4^3) -> adaptive avg pool to 2^3 -> flatten(1024) -> FC 128 -> ReLU -> FC 2
    aux head : the attention module's GAP vector ("global statistics") -> dropout -> linear -> 2

Our reading of the vague points of the paper:

* "stacked 3D convolutional and max pooling layers": one conv per block at the high resolutions
  (a second 16-channel conv at 64^3 would triple the cost on a CPU for little gain on 64^3 crops),
  two convs in the last block where it is cheap. Channel widths 16-32-64-128 keep the model at
  ~0.9 GMAC per crop so that demo weights train on a 2-core CPU in minutes.
* "3D channel attention ... GAP, a fully connected layer and a sigmoid": a squeeze-and-excitation
  block. The paper names a single FC; with one FC of 128x128 the gate is a plain linear map, so we
  use the usual SE bottleneck FC(C -> C/r) -> ReLU -> FC(C/r -> C) with reduction ratio
  ``r = attention_reduction`` (default 8, i.e. 128 -> 16 -> 128), which is what CBAM/SE use and
  what the paper cites (CBAM).
* "primary path: a sequence of FC layers on the attention-reweighted features": the reweighted
  8^3 map is pooled to 2^3 (keeping a coarse layout: centre vs. rim of the lesion) and passed to
  FC(1024 -> 128) -> FC(128 -> 2).
* "secondary branch using the global statistics (GAP) directly, into a softmax": the SE module's
  own GAP vector (before reweighting) -> linear -> 2 logits; ``aux_logits`` are logits, softmax is
  applied by the loss / at inference. It is an auxiliary (deep-supervision) head used in training
  only (loss weight ``AUX_LOSS_WEIGHT`` in ``training/cls_trainer.py``); probabilities come from
  the main head.

* ``input_pool`` (2 in new weights, 1 = none in the first demo weights): the 64^3 crop is
  average-pooled 2x2x2 (anti-aliased, a 32^3 view of the same field of view) before block 1. The
  paper's crop stays 64^3 (so the crop's field of view and the lesion-size-scaled margin are
  unchanged); only the first resolution step is a fixed average instead of a learned conv. Why:
  on a 2-core CPU the full-resolution network costs 2.8 s per batch of 16 and, within the ~40 min
  we can train demo weights, it stayed at chance (val AUC 0.52 CT / 0.75 CT+MRI); pooled, a step
  costs ~0.3 s; the bundled CT+MRI weights (1199 crops, 40 epochs, 22 min) reach test AUC 0.989.
  The plain network on CT alone stays near chance on the phantoms either way; what fixes that is
  the radial prior and shell statistics below (CT weights demo-0.3: test AUC 0.869; the bundled
  demo-0.4, also trained on the segmenters' own masks, 0.864 on truth masks). With real
  data and a GPU, ``input_pool=1`` is the choice.
  Grad-CAM is computed at 4^3 (8^3 without pooling) and trilinearly upsampled to the crop.

* ``radial_prior`` and ``shell_stats`` (both on in the bundled CT-only weights, off in older
  manifests): with ``radial_prior`` the input carries one more channel after the image channels,
  the crop's distance from its centre in units of the lesion's radius minus 1
  (``classification.crops.radial_prior_map``: 0 on the expected lesion surface, -1 at the centre).
  ``shell_stats`` adds a second path to the main head: the mean and standard deviation of each
  image channel in five shells of that distance (centre, inner, outer lesion, rim, surrounding
  liver) and the centre/inner/outer contrasts to the rim shell, through
  BatchNorm -> FC(->64) -> ReLU -> FC(->2), whose logits are added to the convolutional head's.
  Why: the crop's FOV scales with lesion size (``crops.py``), so the lesion radius in voxels
  varies 10-18 voxels and the network cannot know where the lesion ends; and the CT signal that separates the phantoms' benign from malignant
  lesions is the lesion-to-liver contrast per shell (cyst water density, FNH iso-attenuation and
  scar, haemangioma peripheral nodules versus washout, rims and necrosis). Measured on the
  phantoms' validation crops, CT only, same budget: the plain network stayed at chance (AUC
  0.44-0.56), with the radial channel 0.73, with both 0.80 after 1000 steps; with both, a
  standardised shell path and its own auxiliary loss, 0.89 after training (test 0.87). It is
  the paper's "global statistics" idea (its GAP branch) taken per shell; the shell path has no
  spatial map, so Grad-CAM shows the convolutional path only.

* ``liver_context`` (needs ``shell_stats``): the input carries the liver mask (liver and lesions,
  from the segmentation at inference, from the truth labels in training; ``crops.py``) as one
  more channel between the image channels and the radial channel. The convolutional path sees
  it as an input channel; the shell statistics are taken over the shell's liver voxels only
  (the whole shell when it holds fewer than ``MIN_LIVER_SHELL_VOXELS`` of them), and each
  shell's liver fraction is added to the statistics. Why: without it the "rim" and
  "surrounding liver" shells of a lesion at the liver's edge are half extra-hepatic fat
  (held-out phantom: a 10 HU cyst at the edge of a cirrhotic liver, rim mean 26 HU, SD 100,
  called malignant with 0.86-0.96); a radiologist compares a lesion with the parenchyma around
  it, and so should the contrasts the shell path feeds on. Off in the bundled weights. Measured
  (CT only, 400 training phantoms, 50 epochs): phantom test AUC 0.869 -> 0.907 (>= 10 mm 0.899 ->
  0.928), but on 16 held-out phantoms through dual-stream / tam-unet segmentations AUC 0.93 / 0.88
  -> 0.75 / 0.78, ECE 0.11 / 0.11 -> 0.17 / 0.22: its errors there come from partial lesion
  segmentations (a 54 mm cyst segmented as a 5 ml crescent, called malignant), and that cyst at the
  liver's edge was over-segmented into its surroundings (mean 50 HU), which no mask of the liver
  mends. On truth segmentations both reach AUC 1.0. Kept as an option for retraining on real data.

CT+MRI (``in_channels=2``), paper 000's fusion idea at lesion level. ``fusion`` chooses:

* ``"early"``: the two channels are concatenated at the input (cheapest; works when CT and MRI
  crops are resampled onto the same physical crop grid, which ``classification/crops.py`` does).
* ``"attention"`` (default for C = 2): two small modality-specific encoders (blocks 1-2, half
  width each so the cost stays that of one encoder) produce CT and MRI features that are
  concatenated and reweighted by an SE channel-attention gate, so the network learns per channel
  how much to trust each modality (paper 000's "fusion block with channel attention"; its spatial
  attention is left out at 16^3, where it added cost but no accuracy on phantoms), then a shared
  trunk (blocks 3-4) as above. A missing or blank MRI still yields valid (if weaker) features.

``forward`` returns ``dict(logits=Tensor[B, 2], aux_logits=Tensor[B, 2])`` (and, with
``shell_stats``, ``shell_logits``: the shell path's own logits, trained with the same auxiliary
loss weight so that the path is a classifier on its own, not only a correction of the
convolutional head); class 1 = malignant.
``model.gradcam_layer`` is the module whose output Grad-CAM uses (the attention-reweighted last
conv block, 8^3).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

ARCHITECTURE = "hybrid3d"
CROP_SIZE = 64


def default_config(in_channels: int = 1) -> dict[str, Any]:
    """Default constructor kwargs of :class:`Hybrid3D` (the manifest's ``config``)."""
    return {
        "in_channels": int(in_channels),
        "num_classes": 2,
        "channels": [16, 32, 64, 128],
        "attention_reduction": 8,
        "fc_hidden": 128,
        "dropout": 0.3,
        "fusion": "early" if in_channels == 1 else "attention",
        "crop_size": CROP_SIZE,
        "input_pool": 2,
        "radial_prior": False,
        "shell_stats": False,
        "liver_context": False,
    }


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class ChannelAttention3D(nn.Module):
    """SE-style 3D channel attention: GAP -> FC(C->C/r) -> ReLU -> FC(C/r->C) -> sigmoid -> reweight.

    Keeps the pooled vector of its last call in ``self.last_pooled`` (the "global statistics" that
    the auxiliary head of :class:`Hybrid3D` classifies) and the gate in ``self.last_weights``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // max(int(reduction), 1), 4)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )
        self.last_pooled: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3, 4))
        w = self.fc(pooled)
        self.last_pooled, self.last_weights = pooled, w
        return x * w[:, :, None, None, None]


#: Shell edges in lesion radii (distance from the crop centre / expected lesion radius):
#: centre, inner lesion, outer lesion, rim, surrounding liver.
SHELL_EDGES = (0.0, 0.3, 0.7, 1.0, 1.3, 1.8)
#: With ``liver_context``: a shell with fewer liver voxels than this (a lesion outside the mask, or a
#: mask that missed it) falls back to the whole shell, so the statistics never rest on a handful.
MIN_LIVER_SHELL_VOXELS = 32


class ShellStatistics(nn.Module):
    """Per image channel: mean and std in each radial shell, and the centre/inner/outer contrasts to
    the rim shell (``len(SHELL_EDGES) - 1`` shells; the radial channel is the input's last). With
    ``liver``, channel ``image_channels`` is the liver mask: each shell is restricted to its liver
    voxels and the shells' liver fractions are appended."""

    def __init__(self, image_channels: int, liver: bool = False) -> None:
        super().__init__()
        self.image_channels = int(image_channels)
        self.liver = bool(liver)
        self.n_shells = len(SHELL_EDGES) - 1
        self.n_features = image_channels * (2 * self.n_shells + 3) + (self.n_shells if self.liver else 0)

    def _shell_weights(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per shell the voxel weights to average over, and the shell's liver fraction."""
        radius = x[:, -1] + 1.0
        liver = (x[:, self.image_channels] > 0.5).to(x.dtype) if self.liver else None
        weights, fractions = [], []
        for lo, hi in zip(SHELL_EDGES[:-1], SHELL_EDGES[1:]):
            w = ((radius >= lo) & (radius < hi)).to(x.dtype)
            if liver is not None:
                wl = w * liver
                n_l = wl.sum(dim=(1, 2, 3))
                fractions.append(n_l / w.sum(dim=(1, 2, 3)).clamp_min(1.0))
                use = (n_l >= MIN_LIVER_SHELL_VOXELS).to(x.dtype)[:, None, None, None]
                w = use * wl + (1.0 - use) * w
            weights.append(w)
        return weights, fractions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, fractions = self._shell_weights(x)
        feats = []
        for c in range(self.image_channels):
            img = x[:, c]
            means = []
            for w in weights:
                n = w.sum(dim=(1, 2, 3)).clamp_min(1.0)
                mean = (img * w).sum(dim=(1, 2, 3)) / n
                var = ((img - mean[:, None, None, None]) ** 2 * w).sum(dim=(1, 2, 3)) / n
                feats += [mean, var.clamp_min(1e-8).sqrt()]
                means.append(mean)
            feats += [means[i] - means[3] for i in range(3)]
        return torch.stack(feats + fractions, dim=1)


class Hybrid3D(nn.Module):
    """Hybrid 3D lesion classifier; see the module docstring for the layout and our reading of the paper."""

    architecture = ARCHITECTURE

    @classmethod
    def default_config(cls, in_channels: int = 1) -> dict[str, Any]:
        """Constructor kwargs by default (used by ``models.registry``)."""
        return default_config(in_channels)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        attention_reduction: int = 8,
        fc_hidden: int = 128,
        dropout: float = 0.3,
        fusion: str = "early",
        crop_size: int = CROP_SIZE,
        input_pool: int = 1,
        radial_prior: bool = False,
        shell_stats: bool = False,
        liver_context: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"hybrid3d: channels must have 4 entries, got {list(channels)}")
        if fusion not in ("early", "attention"):
            raise ValueError(f"hybrid3d: fusion must be 'early' or 'attention', got {fusion!r}")
        if fusion == "attention" and in_channels != 2:
            raise ValueError("hybrid3d: fusion='attention' needs in_channels=2 (CT + MRI)")
        self.in_channels = int(in_channels)
        self.crop_size = int(crop_size)
        if int(input_pool) not in (1, 2, 4):
            raise ValueError(f"hybrid3d: input_pool must be 1, 2 or 4, got {input_pool!r}")
        self.input_pool = nn.AvgPool3d(int(input_pool)) if int(input_pool) > 1 else nn.Identity()
        self.fusion = fusion
        if shell_stats and not radial_prior:
            raise ValueError("hybrid3d: shell_stats needs radial_prior (the shells are read from the radial channel)")
        if liver_context and not shell_stats:
            raise ValueError("hybrid3d: liver_context needs shell_stats (the liver mask restricts the shells)")
        self.radial_prior = bool(radial_prior)
        self.liver_context = bool(liver_context)
        extra = (1 if self.radial_prior else 0) + (1 if self.liver_context else 0)
        c1, c2, c3, c4 = (int(c) for c in channels)
        pool = nn.MaxPool3d(2)
        if fusion == "early":
            self.stem = nn.Sequential(*_conv_bn_relu(in_channels + extra, c1), pool, *_conv_bn_relu(c1, c2), nn.MaxPool3d(2))
            self.stem_mri = None
            self.fusion_attention = None
        else:
            h1, h2 = max(c1 // 2, 4), max(c2 // 2, 4)
            self.stem = nn.Sequential(
                *_conv_bn_relu(1 + extra, h1), nn.MaxPool3d(2), *_conv_bn_relu(h1, h2), nn.MaxPool3d(2)
            )
            self.stem_mri = nn.Sequential(
                *_conv_bn_relu(1 + extra, h1), nn.MaxPool3d(2), *_conv_bn_relu(h1, h2), nn.MaxPool3d(2)
            )
            self.fusion_attention = ChannelAttention3D(2 * h2, reduction=max(attention_reduction // 2, 1))
            c2 = 2 * h2
        self.block3 = nn.Sequential(*_conv_bn_relu(c2, c3), nn.MaxPool3d(2))
        self.block4 = nn.Sequential(*_conv_bn_relu(c3, c4), *_conv_bn_relu(c4, c4))
        self.attention = ChannelAttention3D(c4, reduction=attention_reduction)
        self.head = nn.Sequential(
            nn.MaxPool3d(2),
            nn.AdaptiveAvgPool3d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c4 * 8, fc_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_hidden, num_classes),
        )
        self.aux_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c4, num_classes))
        self.shell_stats = ShellStatistics(in_channels, liver=self.liver_context) if shell_stats else None
        self.shell_head = (
            nn.Sequential(
                nn.BatchNorm1d(self.shell_stats.n_features),  # learned standardisation of the statistics
                nn.Linear(self.shell_stats.n_features, 64),
                nn.ReLU(inplace=True),
                nn.Linear(64, num_classes),
            )
            if self.shell_stats is not None
            else None
        )

    @property
    def input_channels(self) -> int:
        """Channels ``forward`` expects: the image channels, then the liver mask and the radial
        channel when used."""
        return self.in_channels + (1 if self.liver_context else 0) + (1 if self.radial_prior else 0)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The layer Grad-CAM hooks: the attention-reweighted last conv block (8^3 for 64^3 input)."""
        return self.attention

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.input_channels:
            raise ValueError(
                f"hybrid3d expects Tensor[B, {self.input_channels}, D, H, W], got {tuple(x.shape)}"
            )
        shells = self.shell_stats(x) if self.shell_stats is not None else None
        x = self.input_pool(x)
        if self.fusion == "early":
            f = self.stem(x)
        else:
            extras = x[:, 2:]  # liver mask and/or radial channel, given to both modality stems
            f = torch.cat(
                [self.stem(torch.cat([x[:, :1], extras], 1)), self.stem_mri(torch.cat([x[:, 1:2], extras], 1))], dim=1
            )
            f = self.fusion_attention(f)
        f = self.block4(self.block3(f))
        f = self.attention(f)
        logits = self.head(f)
        aux_logits = self.aux_head(self.attention.last_pooled)
        if shells is None:
            return {"logits": logits, "aux_logits": aux_logits}
        shell_logits = self.shell_head(shells)
        return {"logits": logits + shell_logits, "aux_logits": aux_logits, "shell_logits": shell_logits}


#: For ``models.registry``: architecture name -> class (constructed with ``**config``).
MODELS = {ARCHITECTURE: Hybrid3D}


def build(config: dict[str, Any] | None = None) -> Hybrid3D:
    """Build a :class:`Hybrid3D` from ``default_config()`` updated with ``config``."""
    cfg = default_config(int((config or {}).get("in_channels", 1)))
    cfg.update(config or {})
    return Hybrid3D(**cfg)
