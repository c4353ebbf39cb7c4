"""Lesion boundaries moved to where the image changes (the network finds, the image draws).

Measured on phantoms from a generator the weights never saw (README "On data the weights were
not made from"), the 2.5D networks find the lesions but draw their edges 1-3 mm off: a small
cyst drawn three times its size, a partial-volume slice above and below a lesion on 5 mm
slices, a bright haemangioma drawn as its centre only. Per-case tumour Dice is ruled by those
edges. A reader draws an edge where the grey level crosses half-way between the lesion and the
liver around it; this module does that, only near the network's edge:

* per lesion (26-connected), the liver around it (2-10 mm outside, the network's liver label
  without any lesion) gives the liver's level and noise (median, 1.4826 x MAD); the lesion's
  core (deeper than 2 mm, or the whole lesion when smaller) gives its contrast (median minus
  the level, with its sign);
* within `band_mm` of the network's edge, inside and out (at least one voxel along every axis,
  so a whole thick slice above or below counts), a voxel of the organ is lesion when it lies
  beyond half the contrast from the level (and beyond `NOISE_FACTOR` x the noise): a drawn
  voxel off it either way stays (the bright rim of a dark-cored lesion), a new voxel joins only
  on the side of the lesion's core (a dark cyst does not take the bright vessel beside it).
  Voxels deeper inside keep the network's label, voxels beyond the band are not added (but
  see the growth below). Of the new lesion the largest piece holding its part beyond the band
  is kept (for a lesion within the band all through, holding part of it), with other such
  pieces of the smallest lesion size or more: no speck cut off at the edge becomes a lesion of
  its own. Holes are filled;
* a lesion the CT shows at least `GROW_MIN_DARK_HU` darker than the liver (a cyst, a necrotic
  metastasis) grows on past the band, through voxels beyond its half contrast, up to `GROW_MM`
  from the network's edge (never into another lesion, never out of the organ), when the CT
  shows it going on more than `GROW_MIN_MISSED_MM` past the band's edge, and only on grids with
  no slice thicker than `THICK_SLICE_MM`: a fusion model drew half of a 47 mm cyst on an unseen
  phantom, more than the band can mend. Bright lesions do not grow: the vessels beside them are
  as bright;
* the CT decides when its contrast is at least `MIN_CT_CONTRAST_HU` and 2 x `NOISE_FACTOR`
  noise sigmas; else the MRI (on the CT grid; NaN outside its field of view, which must cover
  90 % of the lesion and its ring) when its contrast is at least `MIN_MRI_CONTRAST` of the
  liver's signal; else the CT smoothed more (`SMOOTH_NOISY_MM`), when noise, not contrast, was
  what stopped it; else the network's edge stays. CT first: its voxels are finer than the MRI's
  and its edge is not blurred by the resampling; the MRI rescues lesions the CT barely shows.

The CT is lightly smoothed in-plane (Gaussian sigma `SMOOTH_MM`, not across slices thicker than
2 mm) so that noise does not fray the edge. Limits: an isodense part of a lesion (a rim that
matches the liver on the image that decides) is cut when the network drew it within the band,
and is not added when it missed it; a lesion touching a vessel of the same brightness may gain
the vessel's first `band_mm`; on the more smoothed CT a heterogeneous lesion (nodular
enhancement) loses its less enhanced edge. Measured effect: README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from LiverTumorAILib.measure import robust_level_and_noise

#: how far from the network's edge (mm, inside and out) a voxel may change label
BAND_MM = 3.0
#: the liver ring used as reference lies this far outside the lesion (mm)
RING_MM = (2.0, 10.0)
#: voxels deeper than this inside the lesion give its contrast (mm)
CORE_MM = 2.0
#: fewest voxels in the ring (and the lesion) to measure a contrast
MIN_RING_VOXELS = 50
MIN_LESION_VOXELS = 10
#: the CT decides when the lesion differs from the liver by at least this (HU, medians)
MIN_CT_CONTRAST_HU = 15.0
#: ... else the MRI, when the lesion differs by at least this fraction of the liver's signal
MIN_MRI_CONTRAST = 0.3
#: a voxel is lesion-like beyond half the contrast and beyond this many noise sigmas; the
#: contrast must exceed twice that for the image to decide at all
NOISE_FACTOR = 2.0
#: slices thicker than this (mm) are not smoothed across; on such grids no lesion grows (`GROW_MM`)
THICK_SLICE_MM = 2.0
#: in-plane smoothing of the CT before thresholding (mm); none across thick slices
SMOOTH_MM = 0.7
#: ... and, when neither that CT nor the MRI decides, a last try on the CT smoothed this much: the
#: half-way crossing of a smoothed edge stays where the edge is, while the noise falls
SMOOTH_NOISY_MM = 1.5
#: the fewest in-field MRI voxels (fraction) in the lesion and in its ring
MIN_MRI_COVERAGE = 0.9
#: a lesion darker than the liver by at least this on the CT (HU) may grow past the band, through
#: voxels beyond its half contrast, up to `GROW_MM` from where the network drew it; not on grids
#: with thick slices, whose partial volume shows a lesion wider than its truth mask on every slice
#: (measured: a 18 mm cyst on 5 mm slices grown from Dice 0.91 to 0.75)
GROW_MIN_DARK_HU = 40.0
GROW_MM = 10.0
#: ... and only when the image shows it going on further than this past the band's edge (mm):
#: a thinner fringe is partial volume, a deeper one a part the network missed
GROW_MIN_MISSED_MM = 2 * BAND_MM


@dataclass
class LesionLike:
    """Where the deciding image differs from the liver: by half the contrast either way (`keep`:
    a drawn voxel stays, so the bright rim of a dark-cored lesion is not cut) or the way the
    lesion's core does (`add`: a new voxel joins, so a dark cyst does not grow into a bright
    vessel beside it)."""

    keep: np.ndarray
    add: np.ndarray
    contrast: float = 0.0  # the lesion's core minus the liver's level, on the deciding image
    on_ct: bool = True  # the CT decided (else the MRI)


@dataclass
class RefineResult:
    """The new tumour mask and what changed (for report.json)."""

    tumour: np.ndarray
    refined: int = 0  # lesions whose edge an image decided
    added_ml: float = 0.0
    removed_ml: float = 0.0


def refine_lesion_boundaries(
    tumour: np.ndarray,
    organ: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    mri: np.ndarray | None = None,
    band_mm: float = BAND_MM,
    min_piece_mm3: float = 0.0,
) -> RefineResult:
    """`tumour` (bool) with each lesion's edge moved to the half-contrast level within `band_mm`
    of where the network drew it, on the CT or else the MRI (see module docstring). `organ` is
    the cleaned liver (lesions included); new lesion voxels stay inside it. A lesion the edge
    splits keeps its largest piece and any other of `min_piece_mm3` or more."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    out = tumour.copy()
    if band_mm <= 0 or not tumour.any():
        return RefineResult(out)
    labels, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    pad = [int(np.ceil((RING_MM[1] + band_mm) / s)) + 1 for s in spacing]
    sigmas = [[mm / s if s <= THICK_SLICE_MM else 0.0 for s in spacing] for mm in (SMOOTH_MM, SMOOTH_NOISY_MM)]
    band_spacing = np.minimum(spacing, band_mm)  # one voxel along a thick axis is within the band
    grows = bool(np.all(spacing <= THICK_SLICE_MM))  # see GROW_MM
    result = RefineResult(out)
    voxel_mm3 = float(np.prod(spacing))
    voxel_ml = voxel_mm3 / 1000.0
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(found, pad, tumour.shape))
        lesion = labels[box] == index
        if np.count_nonzero(lesion) < MIN_LESION_VOXELS:
            continue
        inside = organ[box]
        liver = inside & ~tumour[box]
        outside_mm = ndimage.distance_transform_edt(~lesion, sampling=spacing)
        inside_mm = ndimage.distance_transform_edt(lesion, sampling=spacing)
        lesion_like = _lesion_like(lesion, liver, outside_mm, inside_mm, ct_hu[box],
                                   None if mri is None else mri[box], sigmas)
        if lesion_like is None:
            continue
        reach = None
        if grows and lesion_like.on_ct and lesion_like.contrast <= -GROW_MIN_DARK_HU:  # never into another lesion
            others = ndimage.binary_dilation(tumour[box] & ~lesion, structure=np.ones((3, 3, 3), bool))
            reach = inside & ~others & lesion_like.add & (outside_mm <= GROW_MM)
        if not np.array_equal(band_spacing, spacing):  # a thick axis: distances with it capped at the band
            outside_mm = ndimage.distance_transform_edt(~lesion, sampling=band_spacing)
            inside_mm = ndimage.distance_transform_edt(lesion, sampling=band_spacing)
        band = ((outside_mm > 0) & (outside_mm <= band_mm) & inside) | (lesion & (inside_mm <= band_mm))
        drawn = (lesion & ~band) | (band & np.where(lesion, lesion_like.keep, lesion_like.add))
        drawn = _main_pieces(drawn, lesion & ~band, lesion, min_piece_mm3 / voxel_mm3)
        if drawn is None:
            continue  # the image sees none of it near the edge: the network's lesion stays
        if reach is not None:
            drawn = _grown(drawn, reach, spacing, GROW_MIN_MISSED_MM)
        drawn = ndimage.binary_fill_holes(drawn) & inside
        view = out[box]
        removed = lesion & ~drawn
        added = drawn & ~view
        view[removed] = False
        view[added] = True
        result.refined += 1
        result.added_ml += float(np.count_nonzero(added)) * voxel_ml
        result.removed_ml += float(np.count_nonzero(removed)) * voxel_ml
    return result


def _grown(drawn: np.ndarray, reach: np.ndarray, spacing: np.ndarray, min_missed_mm: float) -> np.ndarray:
    """`drawn` grown through `reach` (6-connected) when what it gains reaches further than
    `min_missed_mm` from it: the network missed a large part of the lesion. A thinner fringe is
    left alone, since there the image and the network's edge differ by partial volume only."""
    grown = ndimage.binary_propagation(drawn, mask=drawn | reach)
    gained = grown & ~drawn
    if not gained.any():
        return drawn
    missed_mm = ndimage.distance_transform_edt(~drawn, sampling=spacing)[gained].max()
    return grown if missed_mm > min_missed_mm else drawn


def _main_pieces(drawn: np.ndarray, deep: np.ndarray, lesion: np.ndarray, min_voxels: float) -> np.ndarray | None:
    """The largest piece of `drawn` that holds part of the lesion beyond the band (`deep`; for a
    lesion within the band all through, part of the lesion), with any other such piece of at
    least `min_voxels`: specks cut off at the edge do not become lesions of their own, a lobe
    does. None when nothing of the lesion is left."""
    pieces, _ = ndimage.label(drawn, structure=np.ones((3, 3, 3), bool))
    anchors = np.unique(pieces[deep])
    anchors = anchors[anchors > 0]
    if anchors.size == 0:
        anchors = np.unique(pieces[lesion & drawn])
        anchors = anchors[anchors > 0]
        if anchors.size == 0:
            return None
    sizes = np.atleast_1d(ndimage.sum_labels(drawn, pieces, anchors))
    keep = (sizes >= min_voxels) | (sizes == sizes.max())
    return np.isin(pieces, anchors[keep])


def _lesion_like(lesion: np.ndarray, liver: np.ndarray, outside_mm: np.ndarray, inside_mm: np.ndarray,
                 ct_hu: np.ndarray, mri: np.ndarray | None, sigmas: Sequence[Sequence[float]]) -> LesionLike | None:
    """Voxels beyond half the lesion's contrast on the image that decides (the CT smoothed with
    `sigmas[0]`, else the MRI, else the CT smoothed with `sigmas[1]`), or None when none shows
    the lesion well enough (or there is too little liver around it to tell). `outside_mm` /
    `inside_mm`: each voxel's distance (mm) to the lesion from outside / to its edge from inside."""
    ring = liver & (outside_mm > RING_MM[0]) & (outside_mm <= RING_MM[1])
    if np.count_nonzero(ring) < MIN_RING_VOXELS:
        return None
    core = lesion & (inside_mm > CORE_MM)
    if np.count_nonzero(core) < MIN_LESION_VOXELS:
        core = lesion
    ct = np.asarray(ct_hu, dtype=np.float32)

    def on_ct(sigma: Sequence[float]) -> LesionLike | None:
        return _beyond_half_contrast(ndimage.gaussian_filter(ct, sigma), core, ring,
                                     lambda contrast, level: contrast >= MIN_CT_CONTRAST_HU)

    like = on_ct(sigmas[0])
    if like is None and mri is not None:
        signal = np.asarray(mri, dtype=np.float32)
        finite = np.isfinite(signal)
        if finite[ring].mean() >= MIN_MRI_COVERAGE and finite[lesion].mean() >= MIN_MRI_COVERAGE:
            like = _beyond_half_contrast(signal, core, ring,
                                         lambda contrast, level: contrast >= MIN_MRI_CONTRAST * abs(level),
                                         on_ct=False)
    if like is None and list(sigmas[1]) != list(sigmas[0]):
        like = on_ct(sigmas[1])
    return like


def _beyond_half_contrast(image: np.ndarray, core: np.ndarray, ring: np.ndarray, enough,
                          on_ct: bool = True) -> LesionLike | None:
    """Voxels off the liver level by more than half the lesion's contrast and `NOISE_FACTOR`
    noise sigmas (either way to keep, the core's way to add); None when the contrast is not
    `enough(|contrast|, level)` or within twice that threshold of the noise. `on_ct`: whether
    `image` is the CT (recorded in the result: only a CT decision may grow the lesion)."""
    liver, lesion = image[ring], image[core]
    liver, lesion = liver[np.isfinite(liver)], lesion[np.isfinite(lesion)]
    if liver.size < MIN_RING_VOXELS or lesion.size < MIN_LESION_VOXELS:
        return None  # too little of either holds a number (NaN / inf in the image)
    level, noise = robust_level_and_noise(liver)
    contrast = float(np.median(lesion)) - level
    if not enough(abs(contrast), level) or abs(contrast) < 2 * NOISE_FACTOR * noise:
        return None
    threshold = max(abs(contrast) / 2.0, NOISE_FACTOR * noise)
    with np.errstate(invalid="ignore", over="ignore"):
        shift = np.nan_to_num((image - level) * np.sign(contrast), nan=0.0, posinf=0.0, neginf=0.0)
    return LesionLike(keep=np.abs(shift) > threshold, add=shift > threshold, contrast=contrast, on_ct=on_ct)
