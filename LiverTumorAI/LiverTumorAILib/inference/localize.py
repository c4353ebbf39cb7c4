"""Coarse liver localisation: the first stage of the cascade.

A small 3D network runs on the whole CT at coarse spacing (4 x 4 x 5 mm by default:
a 512 x 512 x 200 scan becomes ~100^3 voxels, a fraction of a second on a CPU). The
largest liver component's physical bounding box, plus a margin, is the region the
fine 2.5D model then processes, so its cost scales with the liver, not the scan.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorAILib.geometry import BoundingBox, axis_aligned_grid, image_bounding_box, mask_bounding_box
from LiverTumorAILib.preprocess import ct_on_grid, normalize_ct

LOCALIZER_SPACING_MM = (4.0, 4.0, 5.0)
DEFAULT_MARGIN_MM = 20.0


def localizer_input(ct: sitk.Image, spacing=LOCALIZER_SPACING_MM, window=(-100.0, 400.0), multiple: int = 16):
    """(normalised array padded to multiples of `multiple`, reference grid) for the localizer."""
    reference = axis_aligned_grid(image_bounding_box(ct), spacing, multiple_xy=multiple)
    array = normalize_ct(ct_on_grid(ct, reference), window)
    depth = array.shape[0]
    pad = (-depth) % multiple
    if pad:
        array = np.concatenate([array, np.full((pad,) + array.shape[1:], array.min(), np.float32)], axis=0)
    return array, reference, depth


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def localize_liver(ct: sitk.Image, model, manifest: dict, device, margin_mm: float = DEFAULT_MARGIN_MM) -> BoundingBox | None:
    """Physical box around the liver (+margin), clipped to the scan; None if no liver is found."""
    import torch

    prep = manifest.get("preprocessing", {})
    spacing = prep.get("spacing_mm", LOCALIZER_SPACING_MM)
    window = prep.get("window_hu", (-100.0, 400.0))
    array, reference, depth = localizer_input(ct, spacing, window)
    with torch.inference_mode():
        x = torch.from_numpy(array)[None, None].to(device)
        prob = torch.softmax(model(x).float(), dim=1)[0, 1, :depth].cpu().numpy()
    mask = prob > 0.5
    if mask.sum() * np.prod(spacing) < 50_000:  # < 50 ml: no credible liver
        return None
    box = mask_bounding_box(reference, largest_component(mask))
    if box is None:
        return None
    return box.expanded(margin_mm).intersect(image_bounding_box(ct))
