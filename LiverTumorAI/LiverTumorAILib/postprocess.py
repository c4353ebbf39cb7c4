"""Clean-up of the network's label map on the CT grid.

* liver (label >= 1) = its largest 3D component, holes filled (3D, then slice by slice,
  so vessels and lesions inside the liver never punch holes in the organ);
* tumour kept only inside the liver dilated by `tumour_margin_mm` (a lesion at the
  capsule may bulge slightly);
* tumour components smaller than `min_lesion_mm3` are removed (default 65 mm^3, about a
  5 mm sphere: the smallest lesion the phantoms and LiTS annotate);
* tumour components whose peak tumour probability stays below `min_tumour_peak` go back to
  liver (0 = off; each model's manifest carries its value under "postprocess", tuned on
  validation phantoms by training/tune_postprocess.py): uncertain blobs in vessels and at the
  liver edge were most of the false positives;
* tumour components thinner than `min_lesion_thickness_mm` along any axis (bounding-box extent)
  go back to liver (0 = off; tuned per model like the peak): a slice-wise (2.5D) network leaves
  confident blobs on one slice only, where no lesion of the smallest annotated size (5 mm)
  fits. On a CT whose slices are thicker than the threshold a one-slice blob is kept;
* lesions = 3D connected components (26-connectivity) of what remains, numbered by
  decreasing volume;
* with the CT's HU given, the organ and the lesions are checked against the liver's own HU
  level (hu_guards.py): head-foot stretches of slices unlike the liver are cut off
  (`max_slice_hu_shift` for `min_unlike_run_mm`), regions at the organ's surface unlike it are
  removed (`max_region_hu_shift`: kidney, stomach, heart drawn as liver), and lesions inside a
  tissue that is not liver are dropped (`max_lesion_rim_hu_shift`), and so are lesions that
  differ from the liver around them on neither the CT (`min_lesion_contrast_hu`) nor, when
  given, the MRI (`min_lesion_contrast_mri`). 0 turns a check off.
  Values: the organ and kidney checks' chosen on the project's held-out phantoms (no change to
  any found lesion) and the real CTs in ../shared/data/real (a network trained on phantoms draws
  the colon, kidney and heart of a real scan into the liver, and the largest component alone
  keeps them); the contrast check's on the independent phantoms (see hu_guards.py; on the
  project's held-out 16 it drops the one isodense FNH each model found, README);
* with the CT's HU given, each kept lesion's edge is then moved to where the CT (or, where the
  CT barely shows the lesion, the MRI) crosses half-way between lesion and liver, within
  `lesion_edge_band_mm` of the network's edge (lesion_boundary.py; 0 = off), and a lesion
  more than `max_lesion_elongation` times longer than it is thin (principal axes) goes back to
  liver: a vessel or a fissure, not a lesion (0 = off), unless opened by `SHAPE_OPENING_MM` it
  leaves round parts holding most of it (two lesions drawn joined by a thin bridge, or a round
  lesion with a thin tail). A lesion at the scan's edge (within
  `FOV_EDGE_GAP_VOXELS` of its first or last slice, or of a side it cuts) is measured longest
  against middle axis instead: the scan may have cut its thinnest axis (a 30 mm metastasis of
  which the first slices show 12 mm is a plate, not a vessel), so there only a tube counts;
* with the CT's HU given, a region the network labelled background that its liver encloses in
  3D, 10 mm or more across and 30 HU or more darker than the liver, becomes a lesion instead of
  being filled in as liver (`min_enclosed_hole_darker_hu`, 0 = off; hu_guards.dark_enclosed_holes):
  a missed cyst or metastasis, not parenchyma; its edge is refined like the others', and neither
  it nor a lesion it joins is judged by the elongation check (a vessel is bright or runs out of
  the liver, never enclosed and dark).

Every step works inside the bounding box of what it labels (the organ, the tumour), so a
long scan costs what its liver costs: connected-component labels are int32, and a
whole-scan label image of them would be 4 bytes per CT voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from LiverTumorAILib.geometry import ellipsoid_structure, sphere_voxel_count
from LiverTumorAILib.hu_guards import (
    MIN_ENCLOSED_HOLE_DARKER_HU,
    MIN_LESION_CONTRAST_HU,
    MIN_LESION_CONTRAST_MRI,
    WiderCT,
    bright_enclosed_holes,
    dark_enclosed_holes,
    drop_regions_unlike_liver,
    lesion_rims,
    lesions_in_other_tissue,
    lesions_without_contrast,
    liver_level_hu,
    regrow_trimmed_ends,
    trim_slices_unlike_liver,
)
from LiverTumorAILib.lesion_boundary import BAND_MM, refine_lesion_boundaries

MIN_LESION_MM3 = 65.0
TUMOUR_MARGIN_MM = 3.0
#: a "lesion" this many times longer than it is thin (principal axes) is a vessel or a fissure:
#: the vessel-shaped false positives left on unseen phantoms (straight portal branches, 2.7-3.2)
#: and on the real CHAOS CT (2.8-8.5); the phantoms' true lesions 1.7 at most, the independent
#: phantoms' found ones 1.6. On the project's held-out 16 it also drops a cholangiocarcinoma drawn
#: with an 18 mm tail (3.1) and a large cyst drawn as two crescents (README)
MAX_LESION_ELONGATION = 2.5
#: ... measured only on lesions at least this many voxels across on every axis
MIN_SHAPE_VOXELS = 3
#: ... and kept when, opened by a ball of this radius (thin bridges and tails cut away), round parts
#: (elongation at most `ROUND_PART_ELONGATION`, the phantoms' true lesions' most) hold
#: `ROUND_PART_FRACTION` of its volume: two lesions drawn joined by a thin bridge. On a fresh
#: independent draw a 33 mm metastasis and a 23 mm HCC drawn as one (3.1 as drawn; once opened two
#: parts, 1.2 each, 94 % of it) were dropped whole; of the 29 components dropped as vessels on five
#: sets of 16 (three models), no other kept more than 16 % of its volume in such parts
SHAPE_OPENING_MM = 3.0
ROUND_PART_ELONGATION = 1.7
ROUND_PART_FRACTION = 0.6
#: a lesion that the same opening parts into pieces at least this wide (equivalent sphere, mm; the
#: size from which detection is judged) is that many lesions in the table: a fresh unseen draw's
#: metastasis and HCC, drawn joined, were one lesion (and one of two found)
MIN_SPLIT_PART_MM = 10.0
#: a lesion this close (voxels) to a face where the scan ends may be cut by it: 2.5D networks often
#: leave the scan's very first or last slice unlabelled (its slab is padded) and the edge refinement
#: may trim the next as partial volume (a 29 mm metastasis cut by an unseen phantom's first slice:
#: drawn from the second slice, refined from the third)
FOV_EDGE_GAP_VOXELS = 2

#: per array axis (z, y, x): whether the (low, high) face is where the scan ends
Faces = Sequence[tuple[bool, bool]]


@dataclass
class PostprocessConfig:
    min_lesion_mm3: float = MIN_LESION_MM3
    tumour_margin_mm: float = TUMOUR_MARGIN_MM
    min_liver_ml: float = 10.0
    min_tumour_peak: float = 0.0
    min_lesion_thickness_mm: float = 0.0
    max_slice_hu_shift: float = 30.0
    min_unlike_run_mm: float = 10.0
    max_region_hu_shift: float = 40.0
    #: give back the liver the slice check cut beyond its kept stretch's ends where it goes on
    #: (hu_guards.regrow_trimmed_ends)
    regrow_trimmed_ends: bool = True
    max_lesion_rim_hu_shift: float = 40.0
    min_lesion_contrast_hu: float = MIN_LESION_CONTRAST_HU
    min_lesion_contrast_mri: float = MIN_LESION_CONTRAST_MRI
    lesion_edge_band_mm: float = BAND_MM
    max_lesion_elongation: float = MAX_LESION_ELONGATION
    #: regions enclosed by the liver that the network left background and that are this much darker
    #: than the liver become lesions (hu_guards.dark_enclosed_holes; 0 = off: they become liver)
    min_enclosed_hole_darker_hu: float = MIN_ENCLOSED_HOLE_DARKER_HU
    #: the tuned peak / thickness rules for lesions mostly outside the MRI's field of view, where
    #: the CT-only fallback drew them (inference/mri_coverage.py); None: `self`'s rules everywhere
    outside_mri: PostprocessConfig | None = None

    @classmethod
    def from_manifest(cls, manifest: dict) -> PostprocessConfig:
        """Defaults, with the model's tuned `min_tumour_peak` / `min_lesion_thickness_mm` where its
        manifest has them (a value that is not a finite number means off)."""
        tuned = manifest.get("postprocess", {}) if isinstance(manifest, dict) else {}
        tuned = tuned if isinstance(tuned, dict) else {}
        return cls(min_tumour_peak=min(_tuned_value(tuned, "min_tumour_peak"), 1.0),
                   min_lesion_thickness_mm=min(_tuned_value(tuned, "min_lesion_thickness_mm"), 50.0))


def _tuned_value(tuned: dict, key: str) -> float:
    """A non-negative finite float from the manifest's postprocess block, else 0 (off)."""
    try:
        value = float(tuned.get(key, 0.0))
    except (TypeError, ValueError):
        return 0.0
    return max(value, 0.0) if np.isfinite(value) else 0.0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    return fill_slice_holes(ndimage.binary_fill_holes(mask))


def fill_slice_holes(filled_3d: np.ndarray) -> np.ndarray:
    """`filled_3d` (a mask already filled in 3D) with each slice's own holes filled too, in place."""
    for z in range(filled_3d.shape[0]):
        if filled_3d[z].any():
            filled_3d[z] = ndimage.binary_fill_holes(filled_3d[z])
    return filled_3d


@dataclass
class TissueContext:
    """What the lesion checks against the images need, on the lesion mask's grid: the network's
    liver label (before any organ check), the CT in HU, the liver's level and the MRI if given."""

    parenchyma: np.ndarray
    ct_hu: np.ndarray
    level: float
    notes: dict | None = None  # receives "lesions_in_other_tissue_removed" and "lesions_without_contrast_removed"
    outside: np.ndarray | None = None  # voxels outside the organ (after the organ checks)
    mri: np.ndarray | None = None  # the MRI on the same grid (NaN outside its field of view), when given
    wider: WiderCT | None = None  # the CT this grid was cut from (gas just past its faces)


def _organ_checked_against_hu(organ, parenchyma, ct_hu, spacing_zyx, axis, config,
                              notes: dict) -> tuple[np.ndarray, float | None]:
    """`organ` after the slice and region checks of hu_guards.py, and the liver's HU level
    (None when the organ has no liver-labelled voxel to take it from). `notes` receives the
    level and the volume (ml) each check removed."""
    from LiverTumorAILib.inference.localize import largest_component

    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    if config.max_slice_hu_shift > 0:
        trimmed = trim_slices_unlike_liver(organ, parenchyma, ct_hu, spacing_zyx, axis,
                                           config.max_slice_hu_shift, config.min_unlike_run_mm)
        if trimmed is not organ:
            before = np.count_nonzero(organ)
            trimmed = largest_component(trimmed)
            level = liver_level_hu(ct_hu[parenchyma & trimmed])
            if config.regrow_trimmed_ends and np.isfinite(level):
                trimmed = regrow_trimmed_ends(trimmed, organ, parenchyma, ct_hu, spacing_zyx, level, axis,
                                              config.max_region_hu_shift)
            organ = trimmed
            notes["slices_unlike_liver_removed_ml"] = round((before - np.count_nonzero(organ)) * voxel_ml, 1)
    liver = parenchyma & organ
    if not liver.any():
        return organ, None
    level = liver_level_hu(ct_hu[liver])
    if not np.isfinite(level):
        return organ, None
    notes["liver_level_hu"] = level
    if config.max_region_hu_shift > 0:
        kept = drop_regions_unlike_liver(organ, parenchyma, ct_hu, spacing_zyx, level, config.max_region_hu_shift)
        if kept is not organ:
            before = np.count_nonzero(organ)
            organ = fill_holes(largest_component(kept))
            notes["regions_unlike_liver_removed_ml"] = round((before - np.count_nonzero(organ)) * voxel_ml, 1)
    return organ, level


def clean_label_map(
    label: np.ndarray,
    spacing_zyx: Sequence[float],
    config: PostprocessConfig | None = None,
    tumour_probability: np.ndarray | None = None,
    ct_hu: np.ndarray | None = None,
    head_foot_axis: int = 0,
    notes: dict | None = None,
    mri: np.ndarray | None = None,
    scan_faces: Faces | None = None,
) -> np.ndarray:
    """Return a cleaned uint8 label map (0 bg, 1 liver, 2 tumour) on the same grid.

    `tumour_probability` (same grid; float in [0, 1] or uint8 as 255 x p) enables the
    `min_tumour_peak` filter; without it that step is skipped. `ct_hu` (same grid, HU) enables
    the checks of hu_guards.py (the slice check along `head_foot_axis`, array axis in z y x
    order); `mri` (same grid, float, NaN outside its field of view) lets the lesion contrast check
    keep a lesion the MRI shows, and the other-tissue check drop one inside a neighbour near the
    liver's level that it does not show; `notes`, if given, receives what they found and removed (for
    report.json). `scan_faces` says which faces of `label` are the scan's own edges (None: all, the
    label covering the whole scan; the engine passes a sub-region's), for the elongation check.

    Computed inside the organ's bounding box (+ the tumour margin): components, holes and
    the dilated envelope are the same there as on the whole grid, since nothing of the
    organ lies outside it."""
    from LiverTumorAILib.geometry import nonzero_slices
    from LiverTumorAILib.inference.localize import largest_component

    config = config or PostprocessConfig()
    voxel_mm3 = float(np.prod(spacing_zyx))
    out = np.zeros(label.shape, dtype=np.uint8)
    box = nonzero_slices(label)  # label >= 1
    if box is None:
        return out
    organ = largest_component(label[box] >= 1)
    organ_box = nonzero_slices(organ)
    radius = [config.tumour_margin_mm / s for s in spacing_zyx]
    dilate = max(radius) >= 0.5
    pad = [int(np.ceil(r)) + 1 if dilate else 1 for r in radius]  # room for the holes' border and the envelope
    crop = tuple(
        slice(max(b.start + o.start - p, 0), min(b.start + o.stop + p, n))
        for b, o, p, n in zip(box, organ_box, pad, label.shape)
    )
    inner = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(crop, box))
    organ_crop = np.zeros(tuple(c.stop - c.start for c in crop), dtype=bool)
    src = tuple(slice(max(i.start, 0), min(i.stop, n)) for i, n in zip(inner, organ.shape))
    dst = tuple(slice(s.start - i.start, s.stop - i.start) for s, i in zip(src, inner))
    organ_crop[dst] = organ[src]
    del organ
    organ = ndimage.binary_fill_holes(organ_crop)
    holes_3d = organ & ~organ_crop if ct_hu is not None and config.min_enclosed_hole_darker_hu > 0 else None
    del organ_crop
    organ = fill_slice_holes(organ)
    tissue = None
    if ct_hu is not None:
        parenchyma = label[crop] == 1
        organ, level = _organ_checked_against_hu(organ, parenchyma, ct_hu[crop], spacing_zyx, head_foot_axis, config,
                                                 notes if notes is not None else {})
        tissue = None if level is None else TissueContext(parenchyma, ct_hu[crop], level, notes, ~organ,
                                                               None if mri is None else mri[crop],
                                                               WiderCT(ct_hu, tuple(c.start for c in crop)))
    if organ.sum() * voxel_mm3 / 1000.0 < config.min_liver_ml:
        return out
    missed = None
    shown = None  # enclosed regions bright on the CT and the MRI: judged by their shape like a drawn lesion
    if tissue is not None and holes_3d is not None:
        enclosed = holes_3d & organ
        missed = dark_enclosed_holes(enclosed, tissue.ct_hu, tissue.level, spacing_zyx,
                                     min_darker_hu=config.min_enclosed_hole_darker_hu)
        if tissue.mri is not None:
            shown = bright_enclosed_holes(enclosed, tissue.ct_hu, tissue.level, spacing_zyx, tissue.parenchyma, tissue.mri)
        del enclosed
    del holes_3d
    envelope = ndimage.binary_dilation(organ, structure=ellipsoid_structure(radius)) if dilate else organ
    tumour = (label[crop] == 2) & envelope
    tumour = filter_lesions(tumour, spacing_zyx, config, None if tumour_probability is None else tumour_probability[crop],
                            tissue)
    if missed is not None:
        found = missed | shown if shown is not None else missed
        _note_enclosed_holes(notes, found, tumour, spacing_zyx)
        tumour |= found
    if tissue is not None and config.lesion_edge_band_mm > 0:
        edges = refine_lesion_boundaries(tumour, organ, tissue.ct_hu, spacing_zyx, tissue.mri, config.lesion_edge_band_mm,
                                         config.min_lesion_mm3)
        tumour = edges.tumour
        if notes is not None:
            notes["lesion_edges_refined"] = edges.refined
            notes["lesion_edges_added_ml"] = round(edges.added_ml, 2)
            notes["lesion_edges_removed_ml"] = round(edges.removed_ml, 2)
    if tissue is not None and config.max_lesion_elongation > 0:
        faces = [(True, True)] * 3 if scan_faces is None else scan_faces
        cut = [(c.start == 0 and low, c.stop == n and high) for c, (low, high), n in zip(crop, faces, label.shape)]
        tumour = _drop_elongated_lesions(tumour, spacing_zyx, config.max_lesion_elongation, notes, cut, keep=missed)
    cleaned = organ.astype(np.uint8)
    cleaned[tumour] = 2
    out[crop] = cleaned
    _shift_dropped(notes, [c.start for c in crop])
    return out


def _note_enclosed_holes(notes: dict | None, missed: np.ndarray, tumour: np.ndarray,
                         spacing_zyx: Sequence[float]) -> None:
    """Count the enclosed regions marked as lesions (dark, or with an MRI bright on both images;
    those not touching a lesion already kept) and their volumes, for report.json and its warning."""
    if notes is None or not missed.any():
        return
    labels, _ = ndimage.label(missed, structure=np.ones((3, 3, 3), bool))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    volumes = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[box] == i
        if not tumour[box][component].any():
            volumes.append(round(float(np.count_nonzero(component)) * voxel_ml, 2))
    notes["enclosed_regions_marked_as_lesions"] = len(volumes)
    notes["enclosed_regions_ml"] = volumes


def filter_lesions(mask: np.ndarray, spacing_zyx: Sequence[float], config: PostprocessConfig,
                   probability: np.ndarray | None = None, tissue: TissueContext | None = None) -> np.ndarray:
    """`mask` without the 26-connected components that fail `config`'s lesion criteria: volume below
    `min_lesion_mm3`, peak `probability` below `min_tumour_peak` (when a probability is given;
    float in [0, 1] or uint8 holding round(255 p)), bounding box thinner than
    `min_lesion_thickness_mm` on an axis (`config.outside_mri`'s values for a lesion mostly
    outside the MRI, when `tissue` holds one), inside a tissue that is not liver or unlike the liver
    around it on every image (when `tissue` is given; `lesions_in_other_tissue`,
    `lesions_without_contrast`). One labelling serves every criterion: dropping whole
    components never changes the others, so the order of the criteria does not matter."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    voxel_mm3 = float(np.prod(spacing_zyx))
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1)) >= config.min_lesion_mm3 / voxel_mm3
    tuned = _passes_tuned_rules(labels, count, spacing_zyx, config, probability)
    if config.outside_mri is not None and tissue is not None and tissue.mri is not None:
        outside = ndimage.mean(~np.isfinite(tissue.mri), labels, index=np.arange(1, count + 1)) > 0.5
        if outside.any():
            tuned = np.where(outside, _passes_tuned_rules(labels, count, spacing_zyx, config.outside_mri, probability),
                             tuned)
    keep[1:] &= tuned
    rims = None
    if tissue is not None and config.max_lesion_rim_hu_shift > 0 and config.min_lesion_contrast_hu > 0:
        rims = list(lesion_rims(labels, spacing_zyx, keep[1:].copy()))  # both checks read the same rims
    if tissue is not None and config.max_lesion_rim_hu_shift > 0:
        other = lesions_in_other_tissue(labels, count, tissue.parenchyma, tissue.ct_hu, spacing_zyx, tissue.level,
                                        config.max_lesion_rim_hu_shift, tissue.outside, candidates=keep[1:],
                                        rims=rims, mri=tissue.mri, min_mri_fraction=config.min_lesion_contrast_mri,
                                        wider=tissue.wider)
        _note_dropped(tissue.notes, "lesions_in_other_tissue", mask, labels, other, voxel_mm3)
        keep[1:] &= ~other
    if tissue is not None and config.min_lesion_contrast_hu > 0:
        unseen = lesions_without_contrast(labels, count, tissue.parenchyma, tissue.ct_hu, spacing_zyx,
                                          config.min_lesion_contrast_hu, tissue.mri, config.min_lesion_contrast_mri,
                                          tissue.outside, candidates=keep[1:], rims=rims)
        _note_dropped(tissue.notes, "lesions_without_contrast", mask, labels, unseen, voxel_mm3)
        keep[1:] &= ~unseen
    return keep[labels]


def _passes_tuned_rules(labels: np.ndarray, count: int, spacing_zyx: Sequence[float], config: PostprocessConfig,
                        probability: np.ndarray | None) -> np.ndarray:
    """Per component 1..count: peak `probability` >= `min_tumour_peak` (when given) and bounding
    box >= `min_lesion_thickness_mm` on every axis, the rules tuned per model."""
    keep = np.ones(count, dtype=bool)
    if config.min_tumour_peak > 0 and probability is not None:
        peak = round(config.min_tumour_peak * 255) if probability.dtype == np.uint8 else config.min_tumour_peak
        keep &= component_peaks(labels, count, probability) >= peak
    if config.min_lesion_thickness_mm > 0:
        keep &= component_thickness_mm(labels, spacing_zyx) >= config.min_lesion_thickness_mm
    return keep


def drop_uncertain_lesions(mask: np.ndarray, probability: np.ndarray, min_peak: float) -> np.ndarray:
    """`mask` without the 26-connected components whose maximum `probability` is below `min_peak`.

    `probability` is float in [0, 1] or uint8 holding round(255 p)."""
    return filter_lesions(mask, (1.0, 1.0, 1.0), PostprocessConfig(min_lesion_mm3=0.0, min_tumour_peak=min_peak),
                          probability)


def drop_thin_lesions(mask: np.ndarray, spacing_zyx: Sequence[float], min_mm: float) -> np.ndarray:
    """`mask` without the 26-connected components whose bounding box is thinner than `min_mm` on an axis."""
    return filter_lesions(mask, spacing_zyx, PostprocessConfig(min_lesion_mm3=0.0, min_lesion_thickness_mm=min_mm))


def component_thickness_mm(labels: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Smallest bounding-box extent (voxels x spacing, mm) of each component 1..n of `labels`."""
    boxes = ndimage.find_objects(labels)
    return np.array([min((b.stop - b.start) * float(s) for b, s in zip(box, spacing_zyx)) if box else 0.0
                     for box in boxes], dtype=float)


def component_elongation(labels: np.ndarray, spacing_zyx: Sequence[float],
                         against_middle: np.ndarray | bool = False) -> np.ndarray:
    """sqrt(largest / smallest principal variance) of each component 1..n of `labels`, in mm,
    each voxel counted as the box it is (s^2 / 12 added along each axis: a blob one voxel deep
    has that voxel's thickness, not none): 1 for a ball, a / c for a solid ellipsoid.
    Where `against_middle` (per component, or for all) holds, largest / middle instead: a / b,
    large only for a tube."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    middle = np.broadcast_to(np.asarray(against_middle, dtype=bool), (int(labels.max(initial=0)),))
    out = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            out.append(0.0)
            continue
        points = np.argwhere(labels[box] == index) * spacing
        covariance = np.diag(spacing**2 / 12.0)
        if len(points) > 1:
            covariance = covariance + np.cov(points, rowvar=False)
        variances = np.linalg.eigvalsh(covariance)
        out.append(float(np.sqrt(variances[-1] / variances[1 if middle[index - 1] else 0])))
    return np.array(out, dtype=float)


def _opened_parts(component: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, int]:
    """The parts (labelled 1..n, on `component`'s box) left of `component` opened by a ball of
    `SHAPE_OPENING_MM` (in-plane only where slices are thicker than twice that): what is thinner
    than the ball (a bridge, a tail, a thin vessel) is gone."""
    ball = ellipsoid_structure([SHAPE_OPENING_MM / float(s) for s in spacing_zyx])
    pad = [(k // 2, k // 2) for k in ball.shape]
    opened = ndimage.binary_opening(np.pad(component, pad), structure=ball)
    return ndimage.label(opened[tuple(slice(a, -a or None) for a, _ in pad)], structure=np.ones((3, 3, 3), bool))


def _round_once_opened(component: np.ndarray, spacing_zyx: Sequence[float]) -> bool:
    """Whether `component` (one lesion on its box), opened (`_opened_parts`), leaves round parts
    (`ROUND_PART_ELONGATION`) holding `ROUND_PART_FRACTION` of its voxels: lesions joined by a thin
    bridge, not a vessel, which stays a tube or goes."""
    parts, count = _opened_parts(component, spacing_zyx)
    if count == 0:
        return False
    round_parts = np.flatnonzero(component_elongation(parts, spacing_zyx) <= ROUND_PART_ELONGATION) + 1
    return np.isin(parts, round_parts).sum() >= ROUND_PART_FRACTION * component.sum()


def near_scan_edge(labels: np.ndarray, cut_faces: Faces) -> np.ndarray:
    """Per component 1..n of `labels`: whether its bounding box comes within `FOV_EDGE_GAP_VOXELS`
    of a face in `cut_faces` (per axis, low and high face: where the scan ends)."""
    near = []
    for box in ndimage.find_objects(labels):
        near.append(box is not None and any(
            (low and b.start <= FOV_EDGE_GAP_VOXELS) or (high and b.stop >= n - FOV_EDGE_GAP_VOXELS)
            for b, (low, high), n in zip(box, cut_faces, labels.shape)))
    return np.array(near, dtype=bool)


def _drop_elongated_lesions(tumour: np.ndarray, spacing_zyx: Sequence[float], max_elongation: float,
                            notes: dict | None, cut_faces: Faces = ((False, False),) * 3,
                            keep: np.ndarray | None = None) -> np.ndarray:
    """`tumour` without the components more elongated than `max_elongation` (vessels, fissures);
    `notes` receives how many and their volumes (ml). A component fewer than `MIN_SHAPE_VOXELS`
    voxels across on an axis is kept: its shape along that axis is not resolved (a round lesion
    drawn on one 5 mm slice looks like a plate). A component near a face in `cut_faces` (the
    scan's end) is measured longest against middle axis: only a tube is dropped there. A
    component touching `keep` (the enclosed dark regions marked as lesions) is never dropped: the
    rule judges what the network drew, and a region joined to a lesion may make the whole look
    long (a 24 mm lesion + a 0.6 ml region beside it was dropped whole on a held-out phantom);
    vessels and fissures are bright or open to the surface, never enclosed and dark."""
    labels, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    voxels_across = component_thickness_mm(labels, np.ones(3))  # bounding-box extent in voxels
    elongation = component_elongation(labels, spacing_zyx, against_middle=near_scan_edge(labels, cut_faces))
    tubular = (elongation > max_elongation) & (voxels_across >= MIN_SHAPE_VOXELS)
    if tubular.any():
        boxes = ndimage.find_objects(labels)
        for index in np.flatnonzero(tubular):
            tubular[index] = not _round_once_opened(labels[boxes[index]] == index + 1, spacing_zyx)
    if keep is not None and tubular.any():
        tubular[np.unique(labels[keep & tumour]) - 1] = False  # labels >= 1 there
    _note_dropped(notes, "elongated_lesions", tumour, labels, tubular, float(np.prod(spacing_zyx)))
    if not tubular.any():
        return tumour
    return np.concatenate([[False], ~tubular])[labels]


#: suffix of the notes' keys listing where each dropped lesion was: voxel centres (z, y, x) of the
#: array `clean_label_map` was given; the engine turns them into RAS (`DROPPED_AT_RAS`)
DROPPED_AT_ZYX = "_centroids_zyx"
DROPPED_AT_RAS = "_centroids_ras"


def _note_dropped(notes: dict | None, check: str, mask: np.ndarray, labels: np.ndarray, dropped: np.ndarray,
                  voxel_mm3: float) -> None:
    """`notes[check + "_removed"]` = how many components (1..n of `labels`) `dropped` flags,
    `notes[check + "_ml"]` their volumes (ml, 2 decimals) and `notes[check + DROPPED_AT_ZYX]` their
    centres (voxels of `mask`'s array), for report.json, its warnings and the scene's markups of
    removed findings (nothing dropped without saying where, so a reader can look)."""
    if notes is None:
        return
    index = np.flatnonzero(dropped) + 1
    notes[f"{check}_removed"] = int(len(index))
    volumes = ndimage.sum_labels(mask, labels, index=index) * voxel_mm3 / 1000.0
    notes[f"{check}_ml"] = [round(float(v), 2) for v in np.atleast_1d(volumes)]
    centres = ndimage.center_of_mass(mask, labels, index) if len(index) else []
    notes[f"{check}{DROPPED_AT_ZYX}"] = [[float(c) for c in centre] for centre in centres]


def _shift_dropped(notes: dict | None, offset_zyx: Sequence[int]) -> None:
    """Move the dropped lesions' centres noted on a crop (`_note_dropped`) to the array it was cut
    from, whose voxel `offset_zyx` is the crop's first."""
    for key, centres in (notes or {}).items():
        if key.endswith(DROPPED_AT_ZYX):
            notes[key] = [[c + o for c, o in zip(centre, offset_zyx)] for centre in centres]


def component_peaks(labels: np.ndarray, count: int, probability: np.ndarray) -> np.ndarray:
    """Maximum of `probability` in each component 1..count of the instance map `labels`."""
    if count == 0:
        return np.zeros(0, dtype=probability.dtype)
    return np.atleast_1d(np.asarray(ndimage.maximum(probability, labels, index=np.arange(1, count + 1))))


def split_at_thin_bridges(component: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, int]:
    """`component` (one lesion on its box) as parts 1..n: opened (`_opened_parts`), the parts of at
    least `MIN_SPLIT_PART_MM` across (equivalent sphere) each take the voxels nearest to them, so
    two lesions drawn joined by a thin bridge are two lesions in the table.
    n = 1 (the component whole) when fewer than two such parts are left, or when one of them is
    not round (`ROUND_PART_ELONGATION`): a lesion with a lobe drawn through a narrow neck (an
    unseen phantom: 33 ml + a 7 ml part 2.6 times longer than thin, one lesion) stays whole."""
    parts, count = _opened_parts(component, spacing_zyx)
    sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
    big = np.flatnonzero(sizes >= sphere_voxel_count(MIN_SPLIT_PART_MM, spacing_zyx)) + 1
    if len(big) < 2 or np.any(component_elongation(parts, spacing_zyx)[big - 1] > ROUND_PART_ELONGATION):
        return component.astype(np.int32), 1
    seeds = np.isin(parts, big)
    nearest = ndimage.distance_transform_edt(~seeds, sampling=spacing_zyx, return_distances=False, return_indices=True)
    owner = parts[tuple(nearest)]
    renumber = np.zeros(count + 1, dtype=np.int32)
    renumber[big] = np.arange(1, len(big) + 1)
    return np.where(component, renumber[owner], 0), len(big)


def lesion_instances(label: np.ndarray, spacing_zyx: Sequence[float] | None = None
                     ) -> tuple[np.ndarray, tuple[slice, slice, slice] | None]:
    """Tumour components of `label` numbered 1..n by decreasing volume, as (instance map, box):
    the uint16 map covers only the tumour's bounding box `box` ((z, y, x) slices of `label`;
    None and an empty map when there is no tumour). Same numbering as on the whole grid:
    components and their raster order do not change inside a box that holds them all. With
    `spacing_zyx`, a component that `split_at_thin_bridges` parts is numbered as its parts."""
    from LiverTumorAILib.geometry import nonzero_slices

    box = nonzero_slices(label, value=2)
    if box is None:
        return np.zeros((0, 0, 0), dtype=np.uint16), None
    if spacing_zyx is None:
        labels, count = ndimage.label(label[box] == 2, structure=np.ones((3, 3, 3), bool))
    else:
        labels, count = lesion_parts(label[box] == 2, spacing_zyx)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    remap = np.zeros(count + 1, dtype=np.uint16)
    remap[order + 1] = np.arange(1, count + 1, dtype=np.uint16)
    return remap[labels], box


def lesion_parts(tumour: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, int]:
    """The lesions of the mask `tumour` as (labels 1..n, n): its 26-connected components, each that
    `split_at_thin_bridges` parts numbered as its parts, so a check that judges lesions one by one
    judges each lesion the table will list (a bright vessel piece drawn joined to a lesion is
    judged alone, not passed with the lesion beside it)."""
    labels, count = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    return _split_joined_lesions(labels, count, spacing_zyx)


def _split_joined_lesions(labels: np.ndarray, count: int, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, int]:
    """`labels` (components 1..count) with each component that `split_at_thin_bridges` parts
    renumbered as its parts (new numbers after `count`)."""
    min_voxels = 2 * sphere_voxel_count(MIN_SPLIT_PART_MM, spacing_zyx)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == index
        if np.count_nonzero(component) < min_voxels:  # too small to hold two parts
            continue
        parts, n = split_at_thin_bridges(component, spacing_zyx)
        if n > 1:
            labels[box][parts > 1] = count + parts[parts > 1] - 1
            count += n - 1
    return labels, count


def label_lesions(label: np.ndarray, spacing_zyx: Sequence[float] | None = None) -> np.ndarray:
    """uint16 instance map of tumour components on `label`'s grid, numbered 1..n by decreasing
    volume (with `spacing_zyx`, lesions joined by a thin bridge apart: `lesion_instances`)."""
    crop, box = lesion_instances(label, spacing_zyx)
    out = np.zeros(label.shape, dtype=np.uint16)
    if box is not None:
        out[box] = crop
    return out
