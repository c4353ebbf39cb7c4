"""With an MRI, a CT-only model's lesions are checked against what the MRI shows.

Why: dual-stream and tam-unet read the CT alone (papers 001 and 004). Given the MRI, a
radiologist expects it to be read, and the independent phantoms (benchmarks/independent_phantom.py)
show three ways the CT alone falls short, each one the MRI settles:

1. Lesions the CT barely shows: 15-17 mm haemangiomas 25-35 HU brighter than a liver whose own HU
   spreads 35-40 HU, 15-24 mm metastases within 5 HU of it, all 5-20 robust SDs off the liver on
   the MRI. Both CT-only models gave them a tumour probability of 0.00-0.12.
2. Lesions whose edge the CT does not show: a metastasis's outer 3-4 mm (its rim) within a few HU
   of the liver on the CT, plainly brighter than the liver on the MRI. The CT-only models outline
   the hypodense core: recall 0.59-0.63 on 30-47 mm metastases, lesion Dice 0.70-0.74.
3. Bright vessels drawn as lesions: a contrast-filled vessel 50-110 HU above the liver on the
   portal-venous CT looks like a haemangioma to a CT-only model, yet is darker than the liver on
   the MRI (flow void, 1.9-2.6 robust SDs below it) where every lesion kind is brighter or near it.

So after the CT-only model, the fusion model (paper 000, CT+MRI; `MRI_ASSIST_MODEL`) segments
the same box, and, only where the MRI covers the finding (with `MRI_MARGIN_MM` around it; outside
it the fusion model reads the MRI's background fill, mri_coverage.py):

* `remove_vessels_seen_on_mri`: a CT-model lesion that overlaps no fusion lesion, whose median is
  at least `VESSEL_CT_SD_ABOVE_LIVER` robust SDs above the CT model's liver on the CT and at least
  `VESSEL_MRI_SD_BELOW_LIVER` below it on the MRI, becomes liver again; the report lists where
  it was and why, so it is checked. A lesion that only looks so on the CT is kept. Lesions drawn
  joined by a thin bridge are judged part by part (`postprocess.lesion_parts`, the parts the
  lesion table lists): an unseen phantom's 0.8 ml bright vessel piece, joined to a 26 ml cyst the
  fusion model found, passed with the cyst and was then listed as a lesion of its own. Not run
  when the fusion model's lesions are darker than the liver on the MRI (`vessel_check_reason`,
  a T1-like MRI: a haemangioma is dark there too; on independent T1 phantoms the check removed
  true lesions as vessels); the report and a warning say so.
* `extend_outlines_seen_on_mri`: a CT-model lesion overlapped by a fusion lesion that is larger
  than it (inside the CT model's liver) by more than 1 / `EXTEND_BELOW_VOLUME_RATIO` takes the
  union of both outlines. Where the two differ only by their edge voxels the CT model's outline
  stays as drawn (the union there would only add a shell: measured, mean Dice fell on one draw).
* `add_lesions_seen_on_mri`: a fusion lesion that overlaps no CT-model lesion and lies at least
  `MIN_FRACTION_IN_LIVER` inside the CT model's liver (the organ is the CT model's) is added whole,
  unless, against the CT model's liver around it, it lies in another tissue
  (`hu_guards.lesions_in_other_tissue`, with the MRI): the fusion model ran its checks against
  its own liver, which may not hold the neighbour the CT model drew as liver (a fresh phantom: a
  1.3 ml "lesion" inside a kidney 42 HU brighter than the liver, removed from fusion's own run,
  added to tam-unet's).

The fusion model's clean-up (HU and MRI checks, edges) has already run on its label map.
report.json names what was added (`found_by`), extended (`outline_extended_by`) and removed, and
warns, so each change is checked. Measured figures: README, "MRI lesion assist". Off with
`--no-mri-assist`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorAILib.geometry import (
    mri_signal_on_grid,
    points_in_field_of_view,
    region_reference,
    spacing_zyx,
    voxel_indices_to_physical,
)
from LiverTumorAILib.hu_guards import BESIDE_GAS_MM, LESION_RIM_MM, lesions_in_other_tissue
from LiverTumorAILib.measure import centroid_ras, robust_distance
from LiverTumorAILib.postprocess import lesion_parts

MRI_ASSIST_MODEL = "fusion"
MIN_FRACTION_IN_LIVER = 0.5
MRI_MARGIN_MM = 5.0
EXTEND_BELOW_VOLUME_RATIO = 0.9
VESSEL_CT_SD_ABOVE_LIVER = 2.0
VESSEL_MRI_SD_BELOW_LIVER = 1.0

_CONNECTIVITY = np.ones((3, 3, 3), bool)
Region = tuple[slice, slice, slice]


@dataclass
class LesionChanges:
    """Lesions the assist added or extended: how many, the tumour volume it added, and one voxel
    (z, y, x, CT grid) of each, by which the lesion instance map names them."""

    count: int = 0
    volume_ml: float = 0.0
    seeds: list[tuple[int, int, int]] = field(default_factory=list)
    #: fusion lesions not added because they lie in another tissue than the CT model's liver
    in_other_tissue: int = 0

    def record(self, component: np.ndarray, origin_zyx: np.ndarray, added_voxels: int, voxel_ml: float) -> None:
        self.count += 1
        self.volume_ml += added_voxels * voxel_ml
        self.seeds.append(tuple(int(v) for v in np.argwhere(component)[0] + origin_zyx))


@dataclass
class RemovedVessel:
    """A CT-model lesion the assist turned back into liver, with the evidence: its median's
    distance from the liver's in robust SDs on each image."""

    centroid_ras: list[float]
    volume_ml: float
    ct_sd_above_liver: float
    mri_sd_below_liver: float

    def as_report(self) -> dict[str, Any]:
        return {"centroid_ras": self.centroid_ras, "volume_ml": round(self.volume_ml, 3),
                "ct_sd_above_liver": round(self.ct_sd_above_liver, 1),
                "mri_sd_below_liver": round(self.mri_sd_below_liver, 1)}


@dataclass
class MriAssistResult:
    added: LesionChanges = field(default_factory=LesionChanges)
    extended: LesionChanges = field(default_factory=LesionChanges)
    removed: list[RemovedVessel] = field(default_factory=list)
    #: why the vessel check was not run (empty: it was)
    vessels_not_checked: str = ""


def _box_inside_mri(ct: sitk.Image, mri: sitk.Image, offset: np.ndarray, box: Region) -> bool:
    """Whether the box `box` of CT voxels (slices of a sub-grid starting at `offset`, z y x), grown
    by `MRI_MARGIN_MM`, lies in the MRI's field of view: all 8 corners do (the box is convex, so is
    the MRI's grid)."""
    grow = MRI_MARGIN_MM / np.asarray(spacing_zyx(ct))
    lo = offset + np.array([s.start for s in box], dtype=float) - grow
    hi = offset + np.array([s.stop - 1 for s in box], dtype=float) + grow
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    return points_in_field_of_view(mri, voxel_indices_to_physical(ct, corners))


def segmentation_model_name(report: Mapping[str, Any]) -> str | None:
    """The model that drew the segmentation (report.json `models.segmentation.name`), or None
    (a `classify` report names none)."""
    return ((report.get("models") or {}).get("segmentation") or {}).get("name")


def mri_assist_note(lesion: Mapping[str, Any], report: Mapping[str, Any]) -> str | None:
    """What the MRI assist did to `lesion` (a report.json lesion row), in words: "found on the MRI
    by fusion", "outline extended on the MRI by fusion", or None when the segmentation model
    drew it alone (or the report predates these fields). What the lesion table and the CLI's
    summary show."""
    found_by = lesion.get("found_by")
    if found_by and found_by != segmentation_model_name(report):
        return f"found on the MRI by {found_by}"
    extended_by = lesion.get("outline_extended_by")
    return f"outline extended on the MRI by {extended_by}" if extended_by else None


def _full_region(label: np.ndarray, region: Region | None) -> Region:
    return region or tuple(slice(0, n) for n in label.shape)


def _voxel_ml(ct: sitk.Image) -> float:
    return float(np.prod(ct.GetSpacing())) / 1000.0


def _in_other_tissue(label: np.ndarray, component: np.ndarray, corner_zyx: np.ndarray, ct: sitk.Image,
                     mri: sitk.Image, level: float) -> bool:
    """Whether `component` (a lesion mask whose [0, 0, 0] is CT voxel `corner_zyx`) lies in a tissue
    that is not `label`'s liver (`hu_guards.lesions_in_other_tissue` with the MRI, against the
    liver level `level`), read on its box grown by the rim's width (and by the distance at which
    gas beside it counts)."""
    spacing = spacing_zyx(ct)
    pad = np.ceil(max(LESION_RIM_MM, BESIDE_GAS_MM) / np.asarray(spacing)).astype(int) + 1
    lo = np.maximum(corner_zyx - pad, 0)
    hi = np.minimum(corner_zyx + component.shape + pad, label.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    labels = np.zeros(tuple(hi - lo), dtype=np.int32)
    inner = tuple(slice(int(c - a), int(c - a + n)) for c, a, n in zip(corner_zyx, lo, component.shape))
    labels[inner][component] = 1
    ct_hu = sitk.GetArrayViewFromImage(ct)[box].astype(np.float32)
    mri_box = mri_signal_on_grid(mri, region_reference(ct, lo[::-1].tolist(), (hi - lo)[::-1].tolist()))
    return bool(lesions_in_other_tissue(labels, 1, label[box] == 1, ct_hu, spacing, level, mri=mri_box)[0])


def add_lesions_seen_on_mri(label: np.ndarray, assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image,
                            region: Region | None = None, level: float | None = None) -> LesionChanges:
    """Add to `label` (CT grid, 0/1/2, changed in place) each tumour component of `assist_label`
    (the fusion model's cleaned label map on the same grid) that overlaps none of `label`'s
    lesions, lies mostly in its liver and inside the MRI and, with `level` (the CT model's liver
    HU level; None: HU checks off), not in another tissue than that liver (`_in_other_tissue`).
    `region`: where `assist_label` can be non-zero (the fusion model's segmented sub-grid), so a
    long scan is searched only there."""
    region = _full_region(label, region)
    assist_tumour = assist_label[region] == 2
    if not assist_tumour.any():
        return LesionChanges()
    components, _ = ndimage.label(assist_tumour, structure=_CONNECTIVITY)
    offset = np.array([s.start for s in region])
    ours = label[region]
    added = LesionChanges()
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == number
        mine = ours[box][component]
        if (mine == 2).any() or (mine >= 1).mean() < MIN_FRACTION_IN_LIVER:
            continue
        if not _box_inside_mri(ct, mri, offset, box):
            continue
        corner = offset + [s.start for s in box]
        if level is not None and _in_other_tissue(label, component, corner, ct, mri, level):
            added.in_other_tissue += 1
            continue
        ours[box][component] = 2
        added.record(component, corner, int(component.sum()), _voxel_ml(ct))
    return added


def extend_outlines_seen_on_mri(label: np.ndarray, assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image,
                                region: Region | None = None) -> LesionChanges:
    """Where a fusion lesion overlaps `label`'s lesions and is clearly larger than them (they hold
    under `EXTEND_BELOW_VOLUME_RATIO` of its volume inside `label`'s liver), `label` takes the
    union of both outlines inside its liver (in place). Run before `add_lesions_seen_on_mri`."""
    region = _full_region(label, region)
    assist_tumour = assist_label[region] == 2
    if not assist_tumour.any():
        return LesionChanges()
    components, _ = ndimage.label(assist_tumour, structure=_CONNECTIVITY)
    ours = label[region]
    own_lesions, _ = ndimage.label(ours == 2, structure=_CONNECTIVITY)
    own_sizes = np.bincount(own_lesions.ravel())
    offset = np.array([s.start for s in region])
    extended = LesionChanges()
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == number
        touched = np.unique(own_lesions[box][component])
        touched = touched[touched > 0]
        if touched.size == 0:
            continue
        own_volume = int(own_sizes[touched].sum())
        in_organ = component & (ours[box] >= 1)
        if own_volume >= EXTEND_BELOW_VOLUME_RATIO * int(in_organ.sum()):
            continue
        if not _box_inside_mri(ct, mri, offset, box):
            continue
        grow = in_organ & (ours[box] == 1)
        ours[box][grow] = 2
        extended.record(component & (ours[box] == 2), offset + [s.start for s in box], int(grow.sum()),
                        _voxel_ml(ct))
    return extended


def remove_vessels_seen_on_mri(label: np.ndarray, assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image,
                               region: Region | None = None) -> list[RemovedVessel]:
    """Turn back into liver (in place) each of `label`'s lesions (`lesion_parts`) inside `region` that
    overlaps no fusion lesion, is bright on the CT and dark on the MRI against `label`'s liver (a
    contrast-filled vessel; module docstring). Run first, on the CT model's own lesions."""
    region = _full_region(label, region)
    ours = label[region]
    own_lesions, _ = lesion_parts(ours == 2, spacing_zyx(ct))  # each part judged alone
    fusion_tumour = assist_label[region] == 2
    liver = ours == 1
    candidates = [(number, box) for number, box in enumerate(ndimage.find_objects(own_lesions), start=1)
                  if box is not None and not fusion_tumour[box][own_lesions[box] == number].any()]
    if not candidates or not liver.any():
        return []
    offset = np.array([s.start for s in region])
    start_xyz = [int(v) for v in offset[::-1]]
    size_xyz = [int(v) for v in ours.shape[::-1]]
    ct_region = sitk.GetArrayViewFromImage(ct)[region]
    mri_region = mri_signal_on_grid(mri, region_reference(ct, start_xyz, size_xyz))  # NaN outside the MRI: not liver
    inside = liver & np.isfinite(mri_region)
    if not inside.any():
        return []
    ct_liver, mri_liver = ct_region[liver].astype(np.float32), mri_region[inside]
    removed: list[RemovedVessel] = []
    for number, box in candidates:
        lesion = own_lesions[box] == number
        if not _box_inside_mri(ct, mri, offset, box):
            continue
        above = robust_distance(ct_region[box][lesion].astype(np.float32), ct_liver)
        below = -robust_distance(mri_region[box][lesion], mri_liver)
        if above < VESSEL_CT_SD_ABOVE_LIVER or below < VESSEL_MRI_SD_BELOW_LIVER:
            continue
        ours[box][lesion] = 1
        points = np.argwhere(lesion) + offset + [s.start for s in box]
        removed.append(RemovedVessel(centroid_ras(voxel_indices_to_physical(ct, points)), float(lesion.sum()) * _voxel_ml(ct),
                                      above, below))
    return removed


def assist_with_mri(label: np.ndarray, assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image,
                    region: Region | None = None, level: float | None = None,
                    vessels_not_checked: str = "") -> MriAssistResult:
    """All three checks of the module docstring on `label` (changed in place), in the order that
    lets each see the CT model's own lesions: remove vessels, extend outlines, add lesions
    (`level`: the CT model's liver HU level, for the added lesions' tissue check).
    `vessels_not_checked`: a reason to skip the vessel check (`vessel_check_reason`)."""
    removed = [] if vessels_not_checked else remove_vessels_seen_on_mri(label, assist_label, ct, mri, region)
    extended = extend_outlines_seen_on_mri(label, assist_label, ct, mri, region)
    added = add_lesions_seen_on_mri(label, assist_label, ct, mri, region, level)
    return MriAssistResult(added=added, extended=extended, removed=removed, vessels_not_checked=vessels_not_checked)


def vessel_check_reason(assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image, region: Region | None = None) -> str:
    """Why the vessel check must not run on this MRI, or "" when it may: it reads "dark on the MRI"
    as a vessel, which holds where lesions are brighter than the liver (T2-like) and not where
    they are darker (T1-like: a CT-bright haemangioma is dark there too). Read on the fusion
    model's lesions (`mri_lesion_look.py`), not the CT model's: a CT model's only finding may be
    the very vessel the check is for, and would make a T2 look T1-like."""
    from LiverTumorAILib.mri_lesion_look import read_mri_lesion_look

    region = _full_region(assist_label, region)
    look = read_mri_lesion_look(ct, mri, assist_label[region], [s.start for s in region])
    return f"{look.describe()}: the MRI vessel check was not run" if look.darker else ""
