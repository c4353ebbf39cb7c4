"""Engine label map + lesion instances -> one value per output segment (no slicer import).

Shared by the scene bridge and by export (NIfTI labelmap, DICOM SEG, surfaces) so every
format lists the same segments with the same codes.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from . import terminology as T


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def merged_labels(
    label: sitk.Image, lesions: Optional[sitk.Image], lesion_info: Sequence[Mapping[str, Any]] = ()
) -> tuple[np.ndarray, list[tuple[int, T.SegmentSpec]]]:
    """(z, y, x) map with one value per output segment, and (value, spec) pairs.

    Liver = label 1; lesion k = instance k; tumour voxels outside every instance (should not
    happen, but the map is the engine's word) go to a 'Tumour' segment rather than vanish.
    """
    lab = sitk.GetArrayViewFromImage(label)
    out = np.zeros(lab.shape, np.uint16)
    specs: list[tuple[int, T.SegmentSpec]] = []
    if np.any(lab == 1):
        out[lab == 1] = 1
        specs.append((1, T.liver_spec()))
    classes = {int(d["id"]): d.get("predicted_class") for d in lesion_info if "id" in d}
    inst = None
    if lesions is not None:
        if not _same_grid(label, lesions):
            raise InputError("lesion map is not on the segmentation's grid")
        inst = sitk.GetArrayViewFromImage(lesions)
        ids = [int(i) for i in np.unique(inst) if i != 0]
        for n, k in enumerate(ids):
            value = n + 2
            out[inst == k] = value
            specs.append((value, T.lesion_spec(k, n, classes.get(k))))
    rest = (lab == 2) & ((inst == 0) if inst is not None else True)
    if np.any(rest):
        value = len(specs) + 2
        out[rest] = value
        specs.append((value, T.SegmentSpec("Tumour", T.MORPHOLOGICALLY_ALTERED, T.NEOPLASM,
                                           T.LESION_COLORS[0], T.LIVER)))
    return out, specs
