"""Lesion-centred 64^3 crops for the lesion classifiers, resampled in physical space.

Crop rule (documented contract, also recorded in the classifier manifests' ``preprocessing``):

* Centre: the lesion's physical centroid (LPS, mm) from the instance map.
* Grid: ``size``^3 voxels (64), isotropic spacing, identity direction (LPS axes), so every crop
  has the same orientation whatever the CT's direction matrix (flipped or oblique scans give the
  same crop for the same anatomy). Array axes are (z, y, x) = (S, P, L) like any SimpleITK array.
* Field of view (the side of the cube, mm) scales with lesion size::

      side = clamp(k * extent + margin, min_mm, max_mm),  k = 1.5, margin = 16 mm,
             min_mm = 32 mm, max_mm = 160 mm
      if side < 1.1 * extent: side = 1.1 * extent        # lesion larger than max_mm

  ``extent`` is the lesion's longest axis-aligned physical extent (LPS bounding box of its voxels,
  voxel size included). So a 10 mm lesion is seen at 0.5 mm/voxel in a 32 mm cube, a 40 mm lesion
  fills 2/3 of a 76 mm cube (1.2 mm/voxel), and a lesion larger than ``max_mm`` is scaled in whole
  with a 5 % rim of context. Why: the classifier sees every lesion with its rim and some
  surrounding liver at a similar scale; a fixed FOV would either crop large lesions or reduce small
  ones to a few voxels. Absolute size is then only implicit (via the min/max clamps); that is a
  deliberate choice: size alone is a weak and dataset-specific cue.
* Resampling: linear for images, nearest neighbour for the lesion mask. When the crop spacing is
  coarser than the image spacing, the image is Gaussian-smoothed first (anti-aliasing, sigma per
  axis = 0.5 * sqrt(crop_spacing^2 - image_spacing^2)) on a bounding region only.
* Outside the image (lesions at the border): CT is padded with air, -1000 HU (after windowing this
  equals the window minimum); MRI with its normalised minimum (its background).
* CT intensity: the engine's ``preprocess.normalize_ct``: clip to the window [-100, 400] HU
  (paper 001 writes "100 to 400 HU"; we read the lost minus sign: a soft-tissue window), then a
  *fixed* z-score, that of a uniform distribution over the window,
  ``(hu - 150) / (500 / sqrt(12))`` = ``(hu - 150) / 144.3``, so the window maps to [-1.73, 1.73].
  Fixed constants rather than per-crop statistics because absolute attenuation (enhancement,
  necrosis) is the diagnostic signal and a per-crop z-score would erase it; and the segmentation
  models use the same map. With ``raw_hu=True`` channel 0 is returned in HU (unclipped) so that
  training can apply the random-window augmentation before normalising (``normalise_ct``).
* MRI (optional second channel): the engine's ``preprocess.normalize_mri`` over the *whole* MRI
  volume (robust 1st-99th percentile clip of body voxels, then z-score with their mean/std; whole
  volume, so a crop's values do not depend on what else is in the crop), then resampled from its
  own grid onto the *same* physical crop grid, so CT and MRI voxels correspond (assumes the two
  are registered in patient space, as the phantoms and co-registered studies are).
* No lesion-mask channel: the mask comes from our own segmentation at inference but from the
  manual truth in training, so a mask channel would teach the classifier the shape of *truth*
  masks and transfer segmentation errors into the call; and paper 001 feeds intensity crops only.
  The mask crop is still returned (``LesionCrop.mask``) for evaluation and Grad-CAM checks.
  What models with ``radial_prior`` get instead is a smooth sphere of the lesion's equivalent
  diameter (``radial_prior_map``): where the lesion should end, from one number, not a mask shape.
* Liver mask (optional, ``liver=``): the organ (liver and its lesions, any non-zero label) on the
  crop grid, nearest neighbour, 0 outside the image. Models with ``liver_context`` take it as a
  channel and read their shell statistics inside it, so a lesion at the liver's edge is compared
  with liver parenchyma, not with the fat or bowel next to the liver. Unlike a lesion mask it is
  not a shape the classifier could learn from truth and miss at inference: our liver masks reach
  Dice 0.97-0.98 on held-out phantoms, and the mask says where the liver is, not where the lesion
  ends. ``LesionCrop.liver`` is None when no mask was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError

CROP_SIZE = 64
CT_WINDOW_HU = (-100.0, 400.0)
CT_PAD_HU = -1000.0
FOV_K = 1.5
FOV_MARGIN_MM = 16.0
FOV_MIN_MM = 32.0
FOV_MAX_MM = 160.0
LARGE_LESION_RIM = 1.1


def preprocessing_record() -> dict:
    """The crop and intensity rule as stored in a classifier manifest's ``preprocessing``."""
    return {
        "crop_size": CROP_SIZE,
        "crop_fov": {
            "rule": "side = clamp(k * extent + margin, min_mm, max_mm); side >= 1.1 * extent",
            "k": FOV_K,
            "margin_mm": FOV_MARGIN_MM,
            "min_mm": FOV_MIN_MM,
            "max_mm": FOV_MAX_MM,
        },
        "crop_direction": "identity (LPS)",
        "window_hu": list(CT_WINDOW_HU),
        "normalization": "zscore",
        "zscore": "fixed: (clip(hu, window) - centre) / (width / sqrt(12))",
        "pad_hu": CT_PAD_HU,
        "mri_normalization": "percentile-1-99",
        "mask_channel": False,
    }


@dataclass
class LesionGeometry:
    """Physical size and position of one lesion of an instance map."""

    lesion_id: int
    centroid_lps: tuple[float, float, float]
    extent_mm: float  # longest axis-aligned (LPS) extent, voxel size included
    diameter_mm: float  # longest 3D diameter, same definition as measure.py's longest_diameter_mm
    n_voxels: int


@dataclass
class LesionCrop:
    """One lesion crop and its physical geometry (enough to map a crop-grid map back to the CT)."""

    lesion_id: int
    image: np.ndarray  # (C, size, size, size) float32; channel 0 CT (normalised, or HU if raw_hu)
    mask: np.ndarray  # (size, size, size) uint8: this lesion on the crop grid
    origin: tuple[float, float, float]
    spacing_mm: float
    geometry: LesionGeometry
    side_mm: float
    outside_fraction: float  # fraction of the crop outside the CT (padded)
    larger_than_max_fov: bool
    raw_hu: bool = False
    channels: tuple[str, ...] = field(default=("CT",))
    liver: np.ndarray | None = None  # (size, size, size) uint8: the organ on the crop grid, if given

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def reference(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty image on the crop grid (identity direction)."""
        img = sitk.Image([self.size] * 3, pixel_type)
        img.SetOrigin(self.origin)
        img.SetSpacing([self.spacing_mm] * 3)
        return img

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (size, size, size) array defined on the crop grid as a SimpleITK image."""
        if array.shape != self.mask.shape:
            raise ValueError(f"array shape {array.shape} is not the crop shape {self.mask.shape}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetOrigin(self.origin)
        img.SetSpacing([self.spacing_mm] * 3)
        return img

    def model_input(self, radial_prior: bool = False, liver_context: bool = False) -> np.ndarray:
        """Channel-stacked, normalised float32 input (normalises channel 0 if it is raw HU); with
        ``liver_context`` the liver mask follows the image channels (all ones, i.e. "no restriction",
        when the crop has none); with ``radial_prior`` the :func:`radial_prior_map` of this lesion
        is appended as the last channel."""
        out = self.image
        if self.raw_hu:
            out = out.copy()
            out[0] = normalise_ct(out[0])
        if liver_context:
            out = np.concatenate([out, liver_channel(self.liver, self.mask.shape)[None]], axis=0)
        if radial_prior:
            out = np.concatenate([out, radial_prior_map(self.geometry.diameter_mm, self.size)[None]], axis=0)
        return out


def liver_channel(liver: np.ndarray | None, shape: Sequence[int]) -> np.ndarray:
    """The liver-mask channel of a ``liver_context`` model's input, float32: the crop's mask, or all
    ones ("no restriction": whole shells, as a model without liver context reads them) when there
    is none. Inference and training both take it from here, so the two agree."""
    if liver is None:
        return np.ones(tuple(shape), np.float32)
    return np.asarray(liver, dtype=np.float32)


def radial_prior_map(diameter_mm: float, size: int = CROP_SIZE) -> np.ndarray:
    """Distance from the crop centre in units of the lesion's expected radius, minus 1, float32.

    0 on the surface of a sphere of the lesion's equivalent diameter as the FOV rule places it in
    the crop (its radius is ``size * d / crop_side_mm(d) / 2`` voxels, ``d`` standing in for the
    extent), -1 at the centre, clipped at 2 (three radii). Only the diameter enters, not the mask:
    the classifier is told where the lesion should end, not the shape of a (truth or predicted)
    mask; see the mask-channel note in the module docstring.
    """
    d = max(float(diameter_mm), 1e-3)
    radius_vox = max(size * d / crop_side_mm(d) / 2.0, 1.0)
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) ** 2
    dist = np.sqrt(axis[:, None, None] + axis[None, :, None] + axis[None, None, :])
    return (np.minimum(dist / radius_vox, 3.0) - 1.0).astype(np.float32)


def normalise_ct(hu: np.ndarray, window: Sequence[float] = CT_WINDOW_HU) -> np.ndarray:
    """Clip to ``window`` and apply the window's fixed z-score (``preprocess.normalize_ct``), float32."""
    from ..preprocess import normalize_ct

    return normalize_ct(np.asarray(hu, dtype=np.float32), window).astype(np.float32, copy=False)


def normalised_mri(mri: sitk.Image) -> tuple[sitk.Image, float]:
    """The whole MRI volume normalised (``preprocess.normalize_mri``) and its background value."""
    from ..preprocess import normalize_mri

    arr = normalize_mri(sitk.GetArrayFromImage(mri).astype(np.float32))
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(mri)
    return img, float(arr.min()) if arr.size else 0.0


def crop_side_mm(
    extent_mm: float,
    *,
    k: float = FOV_K,
    margin_mm: float = FOV_MARGIN_MM,
    min_mm: float = FOV_MIN_MM,
    max_mm: float = FOV_MAX_MM,
) -> float:
    """Side of the crop cube for a lesion of longest extent ``extent_mm`` (see module docstring)."""
    side = min(max(k * extent_mm + margin_mm, min_mm), max_mm)
    return float(max(side, LARGE_LESION_RIM * extent_mm))


def lesion_geometries(lesions: sitk.Image, ids: Iterable[int] | None = None) -> dict[int, LesionGeometry]:
    """Centroid, extent and diameter of each lesion (or of ``ids``) of a uint instance map."""
    if lesions.GetDimension() != 3:
        raise InputError(f"lesion map must be 3D, got {lesions.GetDimension()}D")
    lab = lesions if lesions.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32) else sitk.Cast(
        lesions, sitk.sitkUInt32
    )
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(lab)
    wanted = set(int(i) for i in ids) if ids is not None else None
    spacing = np.asarray(lesions.GetSpacing())
    arr = sitk.GetArrayViewFromImage(lab)
    to_phys = np.asarray(lesions.GetDirection()).reshape(3, 3) * spacing[None, :]
    out: dict[int, LesionGeometry] = {}
    for label in stats.GetLabels():
        if wanted is not None and int(label) not in wanted:
            continue
        bx = stats.GetBoundingBox(label)  # (x0, y0, z0, sx, sy, sz) in index space
        lo = np.asarray(bx[:3], dtype=float) - 0.5
        hi = np.asarray(bx[:3], dtype=float) + np.asarray(bx[3:], dtype=float) - 0.5
        corners = np.array(
            [
                lesions.TransformContinuousIndexToPhysicalPoint([c[0], c[1], c[2]])
                for c in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
            ]
        )
        extent = float((corners.max(axis=0) - corners.min(axis=0)).max())
        sub = arr[bx[2] : bx[2] + bx[5], bx[1] : bx[1] + bx[4], bx[0] : bx[0] + bx[3]] == label
        surface = sub & ~ndimage.binary_erosion(sub)
        zyx = np.argwhere(surface) + np.array([bx[2], bx[1], bx[0]])
        pts = (to_phys @ zyx[:, ::-1].T.astype(float)).T
        diameter = _max_pairwise_distance(pts) + float(spacing[:2].mean())
        out[int(label)] = LesionGeometry(
            lesion_id=int(label),
            centroid_lps=tuple(float(c) for c in stats.GetCentroid(label)),
            extent_mm=extent,
            diameter_mm=diameter,
            n_voxels=int(stats.GetNumberOfPixels(label)),
        )
    return out


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Diameter = this over the lesion's surface voxel centres + the mean in-plane voxel size: the
    same definition (and code) as ``measure.py``'s ``longest_diameter_mm``, so the "< 10 mm" rule
    here agrees with the lesion table."""
    from ..measure import max_pairwise_distance

    return max_pairwise_distance(points)


def _roi_for(image: sitk.Image, ref_lo: np.ndarray, ref_hi: np.ndarray, pad_vox: int = 3) -> tuple[sitk.Image, bool]:
    """Sub-image of ``image`` covering the physical box [ref_lo, ref_hi] (None-safe at borders)."""
    corners = np.array(np.meshgrid(*zip(ref_lo, ref_hi), indexing="ij")).reshape(3, -1).T
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
    size = np.asarray(image.GetSize())
    lo = np.floor(idx.min(axis=0)).astype(int) - pad_vox
    hi = np.ceil(idx.max(axis=0)).astype(int) + pad_vox
    lo_c, hi_c = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    if np.any(hi_c < lo_c) or np.any(hi < 0) or np.any(lo > size - 1):
        return image, False
    roi = sitk.RegionOfInterest(image, (hi_c - lo_c + 1).tolist(), lo_c.tolist())
    return roi, True


def _outside_fraction(image: sitk.Image, origin: np.ndarray, spacing: float, size: int) -> float:
    """Fraction of the crop grid's voxel centres that fall outside ``image`` (padded voxels)."""
    axis = np.arange(size) * spacing
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()]) + np.asarray(origin)[:, None]
    d = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())[None, :]
    idx = np.linalg.solve(d, pts - np.asarray(image.GetOrigin())[:, None])
    n = np.asarray(image.GetSize())[:, None]
    inside = np.all((idx >= -0.5) & (idx <= n - 0.5), axis=0)
    return float(1.0 - inside.mean())


def _resample(
    image: sitk.Image, ref: sitk.Image, *, linear: bool, default: float, antialias: bool
) -> np.ndarray:
    spacing = float(ref.GetSpacing()[0])
    lo = np.asarray(ref.GetOrigin())
    hi = lo + spacing * (np.asarray(ref.GetSize()) - 1)
    roi, ok = _roi_for(image, lo - spacing, hi + spacing)
    src = roi if ok else image
    if linear and antialias:
        sp = np.asarray(src.GetSpacing())
        sigma = 0.5 * np.sqrt(np.clip(spacing**2 - sp**2, 0.0, None))
        if np.any(sigma > 0.25 * sp):
            src = sitk.SmoothingRecursiveGaussian(sitk.Cast(src, sitk.sitkFloat32), np.maximum(sigma, 1e-3).tolist())
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out_type = sitk.sitkFloat32 if linear else src.GetPixelID()
    res = sitk.Resample(src, ref, sitk.Transform(), interp, float(default), out_type)
    return sitk.GetArrayFromImage(res)


def extract_lesion_crops(
    ct: sitk.Image,
    lesions: sitk.Image,
    mri: sitk.Image | None = None,
    *,
    ids: Iterable[int] | None = None,
    size: int = CROP_SIZE,
    raw_hu: bool = False,
    antialias: bool = True,
    geometries: dict[int, LesionGeometry] | None = None,
    liver: sitk.Image | None = None,
) -> list[LesionCrop]:
    """One crop per lesion of ``lesions`` (instance map on the CT grid), ordered by id.

    ``image`` has 1 channel (CT) or 2 (CT, MRI) when ``mri`` is given; channel 0 is normalised
    (``normalise_ct``) unless ``raw_hu`` (then HU, for training-time random windowing).
    ``liver``: a label map whose non-zero voxels are the organ (liver + lesions), on the CT grid
    or any sub-grid of it in the same physical space; each crop then carries it as ``liver``.
    """
    if ct.GetDimension() != 3:
        raise InputError(f"CT must be 3D, got {ct.GetDimension()}D")
    if lesions.GetSize() != ct.GetSize():
        raise InputError(f"lesion map size {lesions.GetSize()} differs from the CT size {ct.GetSize()}")
    geos = geometries if geometries is not None else lesion_geometries(lesions, ids)
    mri_n, mri_bg = normalised_mri(mri) if mri is not None else (None, 0.0)
    lab = lesions if lesions.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32) else sitk.Cast(
        lesions, sitk.sitkUInt32
    )
    wanted = None if ids is None else {int(i) for i in ids}
    crops: list[LesionCrop] = []
    for lid in sorted(geos):
        if wanted is not None and lid not in wanted:
            continue
        g = geos[lid]
        side = crop_side_mm(g.extent_mm)
        spacing = side / size
        origin = np.asarray(g.centroid_lps) - spacing * (size - 1) / 2.0
        ref = sitk.Image([size] * 3, sitk.sitkUInt8)
        ref.SetOrigin(origin.tolist())
        ref.SetSpacing([spacing] * 3)
        hu = _resample(ct, ref, linear=True, default=CT_PAD_HU, antialias=antialias)
        outside = _outside_fraction(ct, origin, spacing, size)
        mask = (_resample(lab, ref, linear=False, default=0, antialias=False) == lid).astype(np.uint8)
        organ = None
        if liver is not None:
            organ = (_resample(liver, ref, linear=False, default=0, antialias=False) > 0).astype(np.uint8)
        channels = [hu if raw_hu else normalise_ct(hu)]
        names = ["CT"]
        if mri is not None:
            channels.append(_resample(mri_n, ref, linear=True, default=mri_bg, antialias=antialias))
            names.append("MRI")
        crops.append(
            LesionCrop(
                lesion_id=lid,
                image=np.stack(channels).astype(np.float32),
                mask=mask,
                origin=tuple(float(v) for v in origin),
                spacing_mm=float(spacing),
                geometry=g,
                side_mm=float(side),
                outside_fraction=outside,
                larger_than_max_fov=bool(LARGE_LESION_RIM * g.extent_mm > FOV_MAX_MM),
                raw_hu=raw_hu,
                channels=tuple(names),
                liver=organ,
            )
        )
    return crops
