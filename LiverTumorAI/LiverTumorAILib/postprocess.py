"""Clean-up of the network's label map on the CT grid.

* liver (label >= 1) = its largest 3D component, holes filled (3D, then slice by slice,
  so vessels and lesions inside the liver never punch holes in the organ);
* tumour kept only inside the liver dilated by `tumour_margin_mm` (a lesion at the
  capsule may bulge slightly);
* tumour components smaller than `min_lesion_mm3` are removed (default 65 mm^3, about a
  5 mm sphere: the smallest lesion the phantoms and LiTS annotate);
* lesions = 3D connected components (26-connectivity) of what remains, numbered by
  decreasing volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

MIN_LESION_MM3 = 65.0
TUMOUR_MARGIN_MM = 3.0


@dataclass
class PostprocessConfig:
    min_lesion_mm3: float = MIN_LESION_MM3
    tumour_margin_mm: float = TUMOUR_MARGIN_MM
    min_liver_ml: float = 10.0


def _ellipsoid(radius_vox: Sequence[float]) -> np.ndarray:
    r = [max(int(np.ceil(v)), 0) for v in radius_vox]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist = sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grids, radius_vox))
    return dist <= 1.0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    out = ndimage.binary_fill_holes(mask)
    for z in range(out.shape[0]):
        if out[z].any():
            out[z] = ndimage.binary_fill_holes(out[z])
    return out


def clean_label_map(label: np.ndarray, spacing_zyx: Sequence[float], config: PostprocessConfig | None = None) -> np.ndarray:
    """Return a cleaned uint8 label map (0 bg, 1 liver, 2 tumour) on the same grid."""
    from LiverTumorAILib.inference.localize import largest_component

    config = config or PostprocessConfig()
    voxel_mm3 = float(np.prod(spacing_zyx))
    organ = label >= 1
    if not organ.any():
        return np.zeros_like(label, dtype=np.uint8)
    organ = fill_holes(largest_component(organ))
    if organ.sum() * voxel_mm3 / 1000.0 < config.min_liver_ml:
        return np.zeros_like(label, dtype=np.uint8)
    radius = [config.tumour_margin_mm / s for s in spacing_zyx]
    envelope = ndimage.binary_dilation(organ, structure=_ellipsoid(radius)) if max(radius) >= 0.5 else organ
    tumour = (label == 2) & envelope
    tumour = remove_small_components(tumour, config.min_lesion_mm3 / voxel_mm3)
    out = organ.astype(np.uint8)
    out[tumour] = 2
    return out


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = sizes >= min_voxels
    return keep[labels]


def label_lesions(label: np.ndarray) -> np.ndarray:
    """uint16 instance map of tumour components, numbered 1..n by decreasing volume."""
    labels, count = ndimage.label(label == 2, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return np.zeros(label.shape, dtype=np.uint16)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    order = np.argsort(-sizes, kind="stable")
    remap = np.zeros(count + 1, dtype=np.uint16)
    remap[order + 1] = np.arange(1, count + 1, dtype=np.uint16)
    return remap[labels]
