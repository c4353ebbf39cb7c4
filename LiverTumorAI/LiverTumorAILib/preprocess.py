"""Intensity preprocessing and resampling onto a model's grid, shared by training and inference.

Papers 001/004/000 all say: resample (001: 1 x 1 x 2.5 mm), window ([-100, 400] HU, 001)
and z-score. Choices where they are vague, written down here:

* z-score: after clipping to the window we apply a *fixed* affine map, the z-score of
  a uniform distribution over the window: (x - centre) / (width / sqrt(12)). Per-image
  statistics would change with the crop (the cascade crops to the liver), a fixed map
  does not, and training and inference then see identical scales. The random-window
  augmentation (001) changes only the clip bounds, and the same map is taken over the
  sampled window, so a narrow window spreads soft tissue wider - the contrast variation
  the augmentation is meant to teach.
* MRI: robust percentile normalisation: clip to the 1st-99th percentiles of the
  voxels inside the body (intensity above the 5th percentile of non-zero voxels), then
  z-score with the mean and standard deviation of those voxels. MRI has no absolute
  scale, so per-image statistics are the only sensible choice here.
* MRI onto the CT: resampled in physical space (any grid, any direction), linear, with
  the area outside the MRI's field of view set to the normalised background value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.geometry import BoundingBox, axis_aligned_grid, resample_like

DEFAULT_SPACING_MM = (1.0, 1.0, 2.5)
DEFAULT_WINDOW_HU = (-100.0, 400.0)
AIR_HU = -1000.0


def normalize_ct(hu: np.ndarray, window: Sequence[float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Clip HU to `window` and map it to zero mean / unit variance of a uniform window."""
    lo, hi = float(window[0]), float(window[1])
    centre = 0.5 * (lo + hi)
    scale = (hi - lo) / math.sqrt(12.0)
    out = np.clip(hu.astype(np.float32, copy=False), lo, hi)
    out -= centre
    out /= scale
    return out


def normalize_mri(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Robust percentile normalisation of an MR volume (see module docstring)."""
    data = values.astype(np.float32, copy=False)
    pool = data[valid] if valid is not None else data
    pool = pool[np.isfinite(pool)]
    nonzero = pool[pool > 0] if np.any(pool > 0) else pool
    if nonzero.size == 0:
        return np.zeros_like(data, dtype=np.float32)
    body_threshold = np.percentile(nonzero, 5)
    body = nonzero[nonzero >= body_threshold]
    p1, p99 = np.percentile(body, [1, 99])
    clipped_body = np.clip(body, p1, p99)
    mean, std = float(clipped_body.mean()), float(clipped_body.std()) or 1.0
    out = (np.clip(data, p1, p99) - mean) / std
    return out.astype(np.float32)


@dataclass
class ModelGrid:
    """A model's input grid: identity-direction reference at the model spacing, plus its arrays."""

    reference: sitk.Image
    ct_hu: np.ndarray  # (z, y, x) float32 HU on the grid
    mri: np.ndarray | None = None  # (z, y, x) normalised MRI on the grid
    extra: dict = field(default_factory=dict)


def ct_on_grid(ct: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """CT resampled (linear) onto `reference`, outside the scan filled with air.

    No float cast of the whole CT first: resampling straight to a float32 output keeps a
    1000-slice scan from being held twice in memory."""
    out = resample_like(ct, reference, default=AIR_HU, output_type=sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def mri_on_grid(mri: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """MRI resampled onto `reference` in physical space and percentile-normalised."""
    mri_f = sitk.Cast(mri, sitk.sitkFloat32)
    resampled = sitk.GetArrayFromImage(resample_like(mri_f, reference, default=0.0, output_type=sitk.sitkFloat32))
    inside = sitk.GetArrayFromImage(field_of_view_mask(mri, reference))
    norm = normalize_mri(resampled, inside.astype(bool) if inside.any() else None)
    background = float(norm[inside == 0].min()) if np.any(inside == 0) else float(norm.min())
    norm[inside == 0] = min(background, float(norm.min()))
    return norm


def field_of_view_mask(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """1 where `reference` voxels fall inside `image`'s field of view (uint8, on `reference`)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(image)
    ones = ones + 1
    return resample_like(ones, reference, label=True, default=0)


def mri_overlap_fraction(mri: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference grid covered by the MRI's field of view (0 = no overlap)."""
    mask = sitk.GetArrayFromImage(field_of_view_mask(mri, reference))
    return float(mask.mean()) if mask.size else 0.0


def make_model_grid(
    ct: sitk.Image,
    box: BoundingBox,
    spacing: Sequence[float] = DEFAULT_SPACING_MM,
    *,
    mri: sitk.Image | None = None,
    multiple_xy: int = 32,
) -> ModelGrid:
    """Resample the CT (and MRI) inside `box` onto an axis-aligned grid at `spacing`."""
    reference = axis_aligned_grid(box, spacing, multiple_xy=multiple_xy)
    ct_hu = ct_on_grid(ct, reference)
    mri_arr = mri_on_grid(mri, reference) if mri is not None else None
    return ModelGrid(reference=reference, ct_hu=ct_hu, mri=mri_arr)
