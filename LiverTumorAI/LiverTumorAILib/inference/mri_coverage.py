"""Where the MRI does not cover the liver, the CT-only model segments instead of the fusion model.

Why: an MRI slab often covers less than the CT (fewer slices, a smaller field of view). The
fusion model was trained on MRIs that cover the whole liver; where its MRI input is the
background fill, it takes the liver for something else. On 6 independent phantoms with the MRI
cut to half the liver it lost 3 of 4 lesions in one case (tumour Dice 0.96 -> 0.08) and liver
Dice 0.96 -> 0.92-0.95 (`benchmarks/partial_mri.py`; with what follows: 16 of 17 lesions found
against 12, tumour Dice 0.80-0.97, liver Dice 0.95-0.97, no false positives). So each voxel of the model grid gets a
weight for the fusion model: 1 deeper than `MARGIN_MM + RAMP_MM` inside the MRI's field of
view, 0 within `MARGIN_MM` of its edge or outside, linear between (the margin keeps out what
the network reads across the edge: its convolutions see the fill beyond it); the rest of the
probability comes from a CT-only model (`CT_FALLBACK_MODEL`) run on the slices that need it:
those where the weight is under 1 inside the localiser's liver box (without its margin), so
an MRI that covers the liver but not the padding around it costs nothing.
The blend is per voxel on the model grid, before any post-processing, so the cleaned label
map, lesion table and heatmap are one result, not two pasted together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorAILib.geometry import spacing_zyx
from LiverTumorAILib.preprocess import field_of_view_mask

CT_FALLBACK_MODEL = "tam-unet"  # the best CT-only model on the held-out phantoms (README)
MARGIN_MM = 5.0
RAMP_MM = 10.0


def fusion_weight(mri: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """(z, y, x) float32 in [0, 1] on `reference`: how far the fusion model's output is trusted
    (the MRI covers the voxel and its surroundings); see the module docstring."""
    inside = sitk.GetArrayFromImage(field_of_view_mask(mri, reference)).astype(bool)
    if inside.all():
        return np.ones(inside.shape, np.float32)
    if not inside.any():
        return np.zeros(inside.shape, np.float32)
    depth_mm = ndimage.distance_transform_edt(inside, sampling=spacing_zyx(reference))
    return np.clip((depth_mm - MARGIN_MM) / RAMP_MM, 0.0, 1.0).astype(np.float32)


@dataclass
class SliceRange:
    """Slices [start, stop) of the model grid where the CT-only model is needed, and the wider
    range [context_start, context_stop) it must read for them (its slab offsets)."""

    start: int
    stop: int
    context_start: int
    context_stop: int


def slices_needing_ct(weight: np.ndarray, ct_offsets, where: tuple[slice, ...] | None = None) -> SliceRange | None:
    """The slice range where any voxel's fusion weight is under 1 (None: the MRI covers all);
    `where` (z, y, x slices): only voxels there count (where the liver may be)."""
    short_voxels = weight < 1.0
    if where is not None:
        inside = np.zeros(weight.shape, bool)
        inside[where] = True
        short_voxels &= inside
    short = np.flatnonzero(short_voxels.any(axis=(1, 2)))
    if short.size == 0:
        return None
    reach = max((abs(int(o)) for o in ct_offsets), default=0)
    start, stop = int(short[0]), int(short[-1]) + 1
    return SliceRange(start, stop, max(start - reach, 0), min(stop + reach, weight.shape[0]))


def box_on_grid(box, reference: sitk.Image) -> tuple[slice, ...]:
    """(z, y, x) index slices of an identity-direction `reference` inside the physical `box`."""
    lower = np.asarray(reference.TransformPhysicalPointToContinuousIndex([float(v) for v in box.lower]))
    upper = np.asarray(reference.TransformPhysicalPointToContinuousIndex([float(v) for v in box.upper]))
    size = np.asarray(reference.GetSize())
    start = np.clip(np.floor(np.minimum(lower, upper) + 0.5), 0, size).astype(int)
    stop = np.clip(np.ceil(np.maximum(lower, upper) + 0.5), 0, size).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


def blend(fused: np.ndarray, ct_only: np.ndarray, weight: np.ndarray) -> None:
    """`fused` <- weight * fused + (1 - weight) * ct_only, in place (same trailing shape)."""
    fused *= weight
    fused += (1.0 - weight) * ct_only


def liver_fraction_covered(mri: sitk.Image, liver: sitk.Image) -> float | None:
    """Fraction of the liver's voxels (non-zero in `liver`, a label map) inside the MRI's field of
    view; None without liver."""
    organ = sitk.GetArrayViewFromImage(liver) > 0
    count = int(np.count_nonzero(organ))
    if count == 0:
        return None
    inside = sitk.GetArrayFromImage(field_of_view_mask(mri, liver)).astype(bool)
    return float(np.count_nonzero(inside & organ)) / count
