"""Combine per-source attention maps into ``heatmap.nii.gz`` (and ``heatmap_<source>.nii.gz``).

Sources are SimpleITK images, e.g. ``{"segmentation": <attention of the segmentation model>,
"gradcam": <classify.gradcam_on_grid(results, ct)>}``. What the output means is explained for
users in ``docs/heatmaps.md``: network attention, not a probability of cancer.

Combination rule (``combine_heatmaps``):

1. Each source is brought onto the CT's exact grid (linear resampling in physical space, 0 outside
   the source) unless it already is on it; NaN/Inf and negative values become 0.
2. Each source is normalised on its own by its maximum (``x / max(x)``), so sources with different
   scales (sigmoid gates around 0.5, Grad-CAM in [0, 1]) are comparable; an all-zero source stays
   zero. Max, not a percentile: the brightest voxel of each map keeps value 1, which is what a
   reader expects of a per-map colour scale; maps are already smooth so single hot voxels are rare.
3. Combined map = voxel-wise **maximum** over the normalised sources. Max rather than mean: a
   region that one source attends to strongly (e.g. a lesion Grad-CAM looked at) must not be
   halved because the other source is cold there; the heatmap answers "where did any model look".
4. Optionally masked to the segmented liver (which includes its lesions), dilated by ``dilate_mm``
   (default 0: the segmented liver itself). Attention outside the liver (spine, bowel edges, the
   outer side of the liver boundary) is mostly boundary noise of the segmentation network and
   distracts. Measured on the 8 held-out phantoms (benchmarks/heldout_eval.py), heatmap mass
   inside the *true* liver: 10 mm margin 0.54-0.64, 3 mm margin 0.60-0.87, no margin 0.93-0.99
   (0.78 on the one case whose liver was under-segmented). Lesions are part of the segmented
   liver, so subcapsular lesions keep their attention. The per-source maps of ``--heatmaps all``
   are written unmasked unless ``mask_sources=True``, so they show each model's raw attention.

Output: float32 in [0, 1] on the exact CT grid (size, spacing, origin, direction). With no source
at all the combined map is all zeros (still a valid file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

DEFAULT_DILATE_MM = 0.0
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]+")


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def on_grid(source: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``source`` as a float32 array on ``reference``'s grid (resampled if the grids differ)."""
    if not _same_grid(source, reference):
        source = sitk.Resample(sitk.Cast(source, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(source).astype(np.float32, copy=False)
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


def normalise(arr: np.ndarray) -> np.ndarray:
    """Negative values to 0, then divide by the maximum (all-zero stays zero); float32 in [0, 1]."""
    a = np.clip(arr.astype(np.float32, copy=False), 0.0, None)
    peak = float(a.max()) if a.size else 0.0
    return (a / peak).astype(np.float32) if peak > 0 else np.zeros_like(a, dtype=np.float32)


def dilated_mask(mask: sitk.Image, reference: sitk.Image, dilate_mm: float = DEFAULT_DILATE_MM) -> np.ndarray:
    """Boolean array on ``reference``'s grid: ``mask > 0`` dilated by ``dilate_mm`` (ball, per-axis radius in voxels)."""
    m = mask if _same_grid(mask, reference) else sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    m = sitk.Cast(m > 0, sitk.sitkUInt8)
    radius = [int(np.ceil(dilate_mm / s)) for s in reference.GetSpacing()]
    if dilate_mm > 0 and any(r > 0 for r in radius):
        m = sitk.BinaryDilate(m, radius, sitk.sitkBall)
    return sitk.GetArrayViewFromImage(m) > 0


def source_name(name: str) -> str:
    """File-safe source name for ``heatmap_<source>.nii.gz``."""
    clean = _NAME_OK.sub("-", str(name)).strip("-").lower()
    return clean or "source"


def _to_image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(np.clip(arr, 0.0, 1.0).astype(np.float32))
    img.CopyInformation(reference)
    return img


def combine_heatmaps(
    sources: Mapping[str, sitk.Image],
    reference: sitk.Image,
    *,
    liver_mask: sitk.Image | None = None,
    dilate_mm: float = DEFAULT_DILATE_MM,
) -> sitk.Image:
    """The combined heatmap (float32 [0, 1] on ``reference``'s grid); see the module docstring."""
    size = reference.GetSize()
    out = np.zeros((size[2], size[1], size[0]), dtype=np.float32)
    for img in sources.values():
        if img is not None:
            np.maximum(out, normalise(on_grid(img, reference)), out=out)
    if liver_mask is not None:
        out[~dilated_mask(liver_mask, reference, dilate_mm)] = 0.0
    return _to_image(out, reference)


def heatmap_images(
    sources: Mapping[str, sitk.Image],
    reference: sitk.Image,
    *,
    mode: str = "combined",
    liver_mask: sitk.Image | None = None,
    dilate_mm: float = DEFAULT_DILATE_MM,
    mask_sources: bool = False,
) -> dict[str, sitk.Image]:
    """File name -> image: ``heatmap.nii.gz`` always, plus ``heatmap_<source>.nii.gz`` per source when
    ``mode == "all"`` (``--heatmaps all``)."""
    if mode not in ("combined", "all"):
        raise ValueError(f"heatmap mode must be 'combined' or 'all', got {mode!r}")
    files = {"heatmap.nii.gz": combine_heatmaps(sources, reference, liver_mask=liver_mask, dilate_mm=dilate_mm)}
    if mode == "all":
        keep = dilated_mask(liver_mask, reference, dilate_mm) if (mask_sources and liver_mask is not None) else None
        for name, img in sources.items():
            if img is None:
                continue
            arr = normalise(on_grid(img, reference))
            if keep is not None:
                arr[~keep] = 0.0
            fname = f"heatmap_{source_name(name)}.nii.gz"
            if fname in files:
                raise ValueError(f"two heatmap sources map to the same file name {fname!r}")
            files[fname] = _to_image(arr, reference)
    return files


def write_heatmaps(
    sources: Mapping[str, sitk.Image],
    reference: sitk.Image,
    outdir: str | Path,
    *,
    mode: str = "combined",
    liver_mask: sitk.Image | None = None,
    dilate_mm: float = DEFAULT_DILATE_MM,
) -> list[Path]:
    """Write ``heatmap_images(...)`` into ``outdir`` (atomic per file via ``io.image_io.write_image``)."""
    from ..io.image_io import write_image

    outdir = Path(outdir)
    written = []
    for fname, img in heatmap_images(sources, reference, mode=mode, liver_mask=liver_mask, dilate_mm=dilate_mm).items():
        written.append(Path(write_image(img, outdir / fname)))
    return written
