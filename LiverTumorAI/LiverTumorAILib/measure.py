"""Per-lesion and organ measurements for the lesion table and report.json.

* volume: voxel count x voxel volume;
* longest diameter: the largest 3D distance between two lesion voxel centres, plus one
  mean in-plane voxel size so a one-voxel lesion is not 0 mm (the distance between
  centres underestimates the extent by about a voxel); also the longest *axial*
  diameter (RECIST measures in the axial plane);
* centroid in RAS mm (Slicer's convention), mean HU of the CT inside the lesion.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from LiverTumorAILib.geometry import lps_to_ras, voxel_indices_to_physical


def robust_level_and_noise(values: np.ndarray) -> tuple[float, float]:
    """Median and robust SD (1.4826 x median absolute deviation) of `values`: a tissue's level and
    noise that a few outliers (a vessel, a lesion edge) do not move."""
    level = float(np.median(values))
    return level, 1.4826 * float(np.median(np.abs(values - level)))


def robust_distance(values: np.ndarray, reference: np.ndarray) -> float:
    """(median(values) - median(reference)) in robust SDs (`robust_level_and_noise`) of `reference`:
    how far a lesion lies from the tissue around it, in that tissue's own noise."""
    centre, spread = robust_level_and_noise(reference)
    return (float(np.median(values)) - centre) / max(spread, 1e-6)


def centroid_ras(points_lps: np.ndarray) -> list[float]:
    """RAS centroid (mm, 2 decimals; Slicer's convention) of physical LPS points (N, 3)."""
    return [round(v, 2) for v in lps_to_ras(np.asarray(points_lps).mean(axis=0))]


def max_pairwise_distance(points: np.ndarray) -> float:
    """Largest distance between two points (convex-hull vertices only, so large lesions stay cheap)."""
    if len(points) < 2:
        return 0.0
    candidates = points
    if len(points) > 8:
        try:
            candidates = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # flat or degenerate lesion: fall back to extreme points
            candidates = points[np.unique(np.concatenate([np.argmin(points, 0), np.argmax(points, 0)]))]
            if len(points) <= 2000:
                candidates = points
    diff = candidates[:, None, :] - candidates[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def lesion_measurements(ct: sitk.Image, ct_array: np.ndarray, lesions: np.ndarray) -> list[dict]:
    """One dict per lesion id in `lesions` ((z, y, x) instance map on the CT grid)."""
    spacing = np.asarray(ct.GetSpacing(), dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    in_plane = float(spacing[:2].mean())
    out = []
    objects = ndimage.find_objects(lesions)
    for index, region in enumerate(objects, start=1):
        if region is None:
            continue
        local = lesions[region] == index
        zyx = np.argwhere(local) + np.array([s.start for s in region])
        points = voxel_indices_to_physical(ct, zyx)
        surface = local & ~ndimage.binary_erosion(local)
        surface_zyx = np.argwhere(surface) + np.array([s.start for s in region])
        surface_points = voxel_indices_to_physical(ct, surface_zyx) if len(surface_zyx) else points
        axial = 0.0
        for z in np.unique(surface_zyx[:, 0]) if len(surface_zyx) else []:
            axial = max(axial, max_pairwise_distance(surface_points[surface_zyx[:, 0] == z]))
        out.append(
            {
                "id": int(index),
                "volume_ml": round(len(zyx) * voxel_ml, 3),
                "longest_diameter_mm": round(max_pairwise_distance(surface_points) + in_plane, 1),
                "longest_axial_diameter_mm": round(axial + in_plane, 1),
                "centroid_ras": centroid_ras(points),
                "mean_hu": round(float(ct_array[region][local].mean()), 1),
                "voxels": int(len(zyx)),
            }
        )
    return out


def organ_summary(ct: sitk.Image, label: np.ndarray) -> dict:
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    liver_ml = float((label >= 1).sum()) * voxel_ml
    tumour_ml = float((label == 2).sum()) * voxel_ml
    return {
        "liver_volume_ml": round(liver_ml, 2),
        "tumour_volume_ml": round(tumour_ml, 3),
        "tumour_burden_percent": round(100.0 * tumour_ml / liver_ml, 3) if liver_ml > 0 else 0.0,
    }
