"""With an MRI, lesions that only the MRI shows are added to a CT-only model's segmentation.

Why: dual-stream and tam-unet read the CT alone (papers 001 and 004). Some lesions barely
differ from the liver on a contrast CT while the MRI shows them plainly: on the independent
phantoms (benchmarks/independent_phantom.py) 15-17 mm haemangiomas 25-35 HU brighter than a
liver whose own HU spreads 35-40 HU, and 15-24 mm metastases within 5 HU of it, all 5-20 robust
SDs off the liver on the MRI. Both CT-only models gave them a tumour probability of 0.00-0.12;
they missed 10 and 7 of 30 such lesions on one draw. Given the MRI, a radiologist expects it to
be read. So after the CT-only model, the fusion model (paper 000, CT+MRI; `MRI_ASSIST_MODEL`)
segments the same box, and each lesion it finds that

* overlaps no lesion of the CT-only model (where both found one, the CT-only model's outline
  stays: the result is that model's, completed, not a blend),
* lies at least `MIN_FRACTION_IN_LIVER` inside the CT-only model's liver (the organ is the
  CT-only model's), and
* lies, with `MRI_MARGIN_MM` around it, inside the MRI's field of view (outside it the fusion
  model reads the MRI's background fill; mri_coverage.py)

is added as tumour, whole. The fusion model's clean-up (HU and MRI checks, edges) has already
run on it. report.json names the lesions added (`found_by`) and warns, so they are checked.
Measured (README, "MRI lesion assist"): on three independent draws of 16 phantoms, detection of
lesions >= 10 mm 67-95 % -> 97-100 % for both CT-only models, false positives per case unchanged on
two draws and +0.12 on the third; on the project's own held-out 16, detection 66 -> 72-75 % and the
fusion model's own false positives come along (+0.06 / +0.12 per case). Off with `--no-mri-assist`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorAILib.geometry import points_in_field_of_view, voxel_indices_to_physical

MRI_ASSIST_MODEL = "fusion"
MIN_FRACTION_IN_LIVER = 0.5
MRI_MARGIN_MM = 5.0


@dataclass
class AddedLesions:
    """What the assist added: how many lesions, their volume, and one voxel (z, y, x) of each,
    by which the lesion instance map names them."""

    count: int = 0
    volume_ml: float = 0.0
    seeds: list[tuple[int, int, int]] = field(default_factory=list)


def _inside_mri(ct: sitk.Image, mri: sitk.Image, lo_zyx, hi_zyx, margin_mm: float) -> bool:
    """Whether the box of CT voxels [lo, hi] (z, y, x, inclusive), grown by `margin_mm`, lies in
    the MRI's field of view: all 8 corners do (the box is convex, so is the MRI's grid)."""
    grow = margin_mm / np.asarray(ct.GetSpacing(), dtype=float)[::-1]
    lo = np.asarray(lo_zyx, dtype=float) - grow
    hi = np.asarray(hi_zyx, dtype=float) + grow
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    return points_in_field_of_view(mri, voxel_indices_to_physical(ct, corners))


def found_on_mri_by(lesion: Mapping[str, Any], report: Mapping[str, Any]) -> str | None:
    """The model that added `lesion` (a report.json lesion row) from the MRI, or None when the
    segmentation model drew it (or the report predates `found_by`): what the lesion table and the
    CLI's summary name."""
    found_by = lesion.get("found_by")
    segmented_by = ((report.get("models") or {}).get("segmentation") or {}).get("name")
    return found_by if found_by and segmented_by and found_by != segmented_by else None


def add_lesions_seen_on_mri(label: np.ndarray, assist_label: np.ndarray, ct: sitk.Image, mri: sitk.Image,
                            region: tuple[slice, slice, slice] | None = None) -> AddedLesions:
    """Add to `label` (CT grid, 0/1/2, changed in place) each tumour component of `assist_label`
    (the fusion model's cleaned label map on the same grid) that passes the module's three tests.
    `region`: where `assist_label` can be non-zero (the fusion model's segmented sub-grid), so a
    long scan is searched only there."""
    region = region or tuple(slice(0, n) for n in label.shape)
    assist_tumour = assist_label[region] == 2
    if not assist_tumour.any():
        return AddedLesions()
    components, _ = ndimage.label(assist_tumour, structure=np.ones((3, 3, 3), bool))
    offset = np.array([s.start for s in region])
    ours = label[region]
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    added = AddedLesions()
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == number
        mine = ours[box][component]
        if (mine == 2).any() or (mine >= 1).mean() < MIN_FRACTION_IN_LIVER:
            continue
        lo = offset + [s.start for s in box]
        hi = offset + [s.stop - 1 for s in box]
        if not _inside_mri(ct, mri, lo, hi, MRI_MARGIN_MM):
            continue
        ours[box][component] = 2
        added.count += 1
        added.volume_ml += float(component.sum()) * voxel_ml
        seed = np.argwhere(component)[0] + lo
        added.seeds.append(tuple(int(v) for v in seed))
    return added
