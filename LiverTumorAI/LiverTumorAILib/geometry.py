"""Physical-space geometry helpers (ITK/LPS convention).

Every model runs on an *axis-aligned* grid (identity direction) in LPS: array axes
(z, y, x) point to patient Superior, Posterior and Left whatever the input's direction
matrix. So a flipped or oblique scan reaches the network in the same canonical
orientation the network was trained on, and results are resampled back onto the exact
input grid. This is where the classic LPS/RAS and flipped-axis bugs are kept out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class BoundingBox:
    """Axis-aligned physical box in LPS millimetres (inclusive corner points)."""

    lower: np.ndarray  # (3,) x, y, z
    upper: np.ndarray

    def expanded(self, margin_mm: float | Sequence[float]) -> BoundingBox:
        m = np.broadcast_to(np.asarray(margin_mm, dtype=float), (3,))
        return BoundingBox(self.lower - m, self.upper + m)

    def intersect(self, other: BoundingBox) -> BoundingBox:
        return BoundingBox(np.maximum(self.lower, other.lower), np.minimum(self.upper, other.upper))

    @property
    def size_mm(self) -> np.ndarray:
        return np.maximum(self.upper - self.lower, 0.0)

    def is_empty(self) -> bool:
        return bool(np.any(self.upper <= self.lower))


def lps_to_ras(point: Sequence[float]) -> list[float]:
    """Flip the first two axes: ITK's LPS to Slicer's RAS."""
    return [-float(point[0]), -float(point[1]), float(point[2])]


def index_to_physical_matrix(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return (M, origin) with physical = M @ (i, j, k) + origin (index order x, y, z)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return direction * spacing[None, :], np.asarray(image.GetOrigin(), dtype=float)


def voxel_indices_to_physical(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Physical LPS points (N, 3) of numpy (z, y, x) indices (N, 3)."""
    matrix, origin = index_to_physical_matrix(image)
    ijk = np.asarray(zyx, dtype=float)[:, ::-1]
    return ijk @ matrix.T + origin


def points_in_field_of_view(image: sitk.Image, points_lps: np.ndarray) -> bool:
    """Whether every physical LPS point (N, 3) lies within `image`'s voxel edges: what a check
    that an image (the MRI) covers a region needs, without resampling anything."""
    matrix, origin = index_to_physical_matrix(image)
    index = np.linalg.solve(matrix, (np.asarray(points_lps, dtype=float) - origin).T).T
    size = np.asarray(image.GetSize(), dtype=float)
    return bool(np.all(index >= -0.5) and np.all(index <= size - 0.5))


def head_foot_axis(image: sitk.Image) -> int:
    """The array axis (z, y, x order) of `image` whose index direction is closest to head-foot."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2])))


def ellipsoid_structure(radius_vox: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid with the given semi-axes in voxels (z, y, x): a structuring element for
    dilating by a distance in mm on an anisotropic grid."""
    r = [max(int(np.ceil(v)), 0) for v in radius_vox]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist = sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grids, radius_vox))
    return dist <= 1.0


def sphere_voxel_count(diameter_mm: float, spacing_zyx: Sequence[float]) -> float:
    """How many voxels of `spacing_zyx` (mm) a sphere `diameter_mm` across fills: the size bound
    for "at least this wide" in equivalent-sphere diameter."""
    return float(np.pi / 6.0 * diameter_mm ** 3 / float(np.prod(spacing_zyx)))


def equivalent_diameter_mm(voxels: float, spacing_zyx: Sequence[float]) -> float:
    """Diameter of the sphere with the volume of `voxels` voxels of `spacing_zyx` (mm): a lesion's
    size robust to a ragged outline (the inverse of `sphere_voxel_count`)."""
    volume = float(voxels) * float(np.prod(spacing_zyx))
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0)) if volume > 0 else 0.0


def image_bounding_box(image: sitk.Image) -> BoundingBox:
    """Physical bounding box of the voxel *edges* of an image of any direction."""
    size = np.asarray(image.GetSize(), dtype=float)
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in size])))
    matrix, origin = index_to_physical_matrix(image)
    points = corners @ matrix.T + origin
    return BoundingBox(points.min(axis=0), points.max(axis=0))


def mask_bounding_box(image: sitk.Image, mask: np.ndarray) -> BoundingBox | None:
    """Physical bounding box of the non-zero voxels of `mask` ((z, y, x) array on `image`'s grid)."""
    nz = np.nonzero(mask)
    if len(nz[0]) == 0:
        return None
    lo = np.array([n.min() for n in nz], dtype=float) - 0.5
    hi = np.array([n.max() for n in nz], dtype=float) + 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))  # (z, y, x)
    points = voxel_indices_to_physical(image, corners)
    return BoundingBox(points.min(axis=0), points.max(axis=0))


def axis_aligned_grid(
    box: BoundingBox,
    spacing: Sequence[float],
    multiple_xy: int = 1,
    min_size: Sequence[int] = (1, 1, 1),
) -> sitk.Image:
    """An empty identity-direction reference image covering `box` at `spacing` (x, y, z).

    The in-plane size is rounded up to `multiple_xy` (network stride) by growing the box
    symmetrically, so padding never shifts the content.
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    extent = box.size_mm
    size = np.maximum(np.ceil(extent / spacing_arr).astype(int), np.asarray(min_size, dtype=int))
    if multiple_xy > 1:
        size[:2] = (np.ceil(size[:2] / multiple_xy) * multiple_xy).astype(int)
    covered = size * spacing_arr
    lower = box.lower - (covered - extent) / 2.0
    origin = lower + spacing_arr / 2.0  # centre of voxel 0
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing_arr])
    ref.SetOrigin([float(o) for o in origin])
    ref.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return ref


def resample_like(
    image: sitk.Image,
    reference: sitk.Image,
    *,
    label: bool = False,
    default: float = 0.0,
    output_type: int | None = None,
) -> sitk.Image:
    """Resample `image` onto `reference`'s grid in physical space (nearest for labels, else linear)."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel = output_type if output_type is not None else image.GetPixelID()
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), pixel)


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """`image`'s voxel spacing in numpy order (z, y, x), mm: SimpleITK gives (x, y, z)."""
    sx, sy, sz = image.GetSpacing()
    return (float(sz), float(sy), float(sx))


def mri_signal_on_grid(mri: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """The MRI's raw signal on `reference`'s grid (float32, linear; NaN outside the MRI's field of
    view, so a check never reads padding as tissue): what the lesion checks and the MRI assist
    read (preprocess.mri_on_grid is the network's normalised input, 0 outside)."""
    return sitk.GetArrayFromImage(resample_like(mri, reference, default=float("nan"), output_type=sitk.sitkFloat32))


def sub_grid_covering(image: sitk.Image, box: BoundingBox) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Index region (start xyz, size xyz) of `image` that covers the physical `box` (clipped)."""
    corners = np.array(list(itertools.product(*zip(box.lower, box.upper))))
    matrix, origin = index_to_physical_matrix(image)
    idx = np.linalg.solve(matrix, (corners - origin).T).T
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 1
    dims = np.asarray(image.GetSize())
    lo = np.clip(lo, 0, dims)
    hi = np.clip(hi + 1, 0, dims)
    size = hi - lo
    if np.any(size <= 0):
        return None
    return (tuple(int(v) for v in lo), tuple(int(v) for v in size))


def nonzero_slices(
    array: np.ndarray, value: int | None = None, chunk_voxels: int = 1 << 23
) -> tuple[slice, slice, slice] | None:
    """(z, y, x) slices of the smallest box holding every non-zero voxel of `array` (or every voxel
    equal to `value`); None if there is none.

    Scanned a few slices at a time, so a long scan's label map costs no full-size temporary."""
    depth = array.shape[0]
    step = max(1, chunk_voxels // max(1, int(np.prod(array.shape[1:]))))
    z_hit = np.zeros(depth, dtype=bool)
    y_hit = np.zeros(array.shape[1], dtype=bool)
    x_hit = np.zeros(array.shape[2], dtype=bool)
    for z0 in range(0, depth, step):
        chunk = array[z0 : z0 + step]
        mask = chunk != 0 if value is None else chunk == value
        in_plane = mask.any(axis=0)
        z_hit[z0 : z0 + step] = mask.any(axis=(1, 2))
        y_hit |= in_plane.any(axis=1)
        x_hit |= in_plane.any(axis=0)
    if not z_hit.any():
        return None
    return tuple(slice(int(np.argmax(h)), len(h) - int(np.argmax(h[::-1]))) for h in (z_hit, y_hit, x_hit))


def region_slices(start: Sequence[int], size: Sequence[int]) -> tuple[slice, slice, slice]:
    """(z, y, x) array slices of the index region start..start+size (given x, y, z, as ITK does)."""
    return tuple(slice(int(s), int(s) + int(n)) for s, n in zip(reversed(start), reversed(size)))


def region_start(image: sitk.Image, region: sitk.Image) -> tuple[int, int, int] | None:
    """Index (x, y, z) of `image` where `region`'s first voxel lies, if `region` is a sub-grid of
    `image` (same spacing and direction, voxel centres on `image`'s voxel centres, inside it);
    else None."""
    if region.GetDimension() != 3 or image.GetDimension() != 3:
        return None
    if not (np.allclose(region.GetSpacing(), image.GetSpacing(), rtol=1e-6, atol=1e-6)
            and np.allclose(region.GetDirection(), image.GetDirection(), atol=1e-6)):
        return None
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex(region.GetOrigin()))
    start = np.round(index).astype(int)
    if not np.allclose(index, start, atol=1e-3):
        return None
    if np.any(start < 0) or np.any(start + np.asarray(region.GetSize()) > np.asarray(image.GetSize())):
        return None
    return tuple(int(v) for v in start)


def paste_into_grid(region: sitk.Image, reference: sitk.Image, start: Sequence[int]) -> sitk.Image:
    """A new image on `reference`'s full grid, zero everywhere but the index region `start`
    (x, y, z) + `region`'s size, which holds `region` (same pixel type). The full-size image
    is allocated once and filled in place: no second full-size copy."""
    full = sitk.Image(reference.GetSize(), region.GetPixelID())
    full.CopyInformation(reference)
    end = [int(s) + int(n) for s, n in zip(start, region.GetSize())]
    full[start[0] : end[0], start[1] : end[1], start[2] : end[2]] = region
    return full


def region_reference(image: sitk.Image, start: Sequence[int], size: Sequence[int]) -> sitk.Image:
    """An empty image with `image`'s spacing/direction covering index region start..start+size."""
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(image.TransformIndexToPhysicalPoint([int(s) for s in start]))
    return ref


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array with `reference`'s geometry."""
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    return out
