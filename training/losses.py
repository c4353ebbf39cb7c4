"""Loss functions named by the papers, built from MONAI where it has them.

* `dice_bce` (paper 001, fusion of paper 000): soft Dice (MONAI `DiceLoss`, softmax,
  background excluded) + one-vs-rest BCE on the softmax probabilities. With 3
  mutually exclusive classes BCE on softmax keeps one output head for all of them.
* `ce_dice` (paper 004): MONAI `DiceCELoss` (softmax Dice + cross-entropy).
* `weighted_ce` (paper 001 Hybrid 3D classifier): cross-entropy with class weights,
  by default inverse class frequency, to handle the benign/malignant imbalance.
Targets are class-index tensors (B, H, W[, D]) as the trainers produce them.
"""

from __future__ import annotations

from typing import Optional, Sequence


def _onehot(target, n: int):
    import torch.nn.functional as F

    dims = list(range(target.ndim + 1))
    return F.one_hot(target.long(), n).permute(0, dims[-1], *dims[1:-1]).float()


class DiceBCELoss:
    """Dice (MONAI) + BCE on softmax probabilities; `include_background=False` for the Dice."""

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0):
        from monai.losses import DiceLoss

        self.dice = DiceLoss(include_background=False, softmax=True, to_onehot_y=False)
        self.lambda_dice, self.lambda_bce = lambda_dice, lambda_bce

    def __call__(self, logits, target):
        import torch
        import torch.nn.functional as F

        onehot = _onehot(target, logits.shape[1])
        probs = torch.softmax(logits.float(), dim=1).clamp(1e-6, 1 - 1e-6)
        return self.lambda_dice * self.dice(logits.float(), onehot) + self.lambda_bce * F.binary_cross_entropy(
            probs, onehot)


class CEDiceLoss:
    """MONAI DiceCELoss on class-index targets (adds the channel dim MONAI expects)."""

    def __init__(self, lambda_ce: float = 1.0, lambda_dice: float = 1.0, weight: Optional[Sequence[float]] = None):
        import torch
        from monai.losses import DiceCELoss

        w = torch.tensor(weight, dtype=torch.float32) if weight is not None else None
        self.loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                               lambda_ce=lambda_ce, lambda_dice=lambda_dice, weight=w)

    def __call__(self, logits, target):
        return self.loss(logits.float(), target[:, None].long())


def class_weights(counts: Sequence[int]) -> list:
    """Inverse-frequency weights normalised to mean 1 (an absent class gets weight 1 before normalising)."""
    total = float(sum(counts))
    raw = [total / (len(counts) * c) if c > 0 else 1.0 for c in counts]
    m = sum(raw) / len(raw)
    return [r / m for r in raw]


def weighted_ce(weights: Optional[Sequence[float]] = None, label_smoothing: float = 0.0):
    import torch

    w = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    return torch.nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)


def build_loss(name: str, **kwargs):
    """Loss by config name: dice_bce | ce_dice | weighted_ce | ce."""
    if name == "dice_bce":
        return DiceBCELoss(**kwargs)
    if name == "ce_dice":
        return CEDiceLoss(**kwargs)
    if name in ("weighted_ce", "ce"):
        return weighted_ce(**kwargs)
    raise ValueError(f"unknown loss {name!r} (dice_bce, ce_dice, weighted_ce, ce)")
