"""Image grids (size, spacing, origin, direction) and the patient frame.

Anatomy is defined in a patient ("anatomical") frame q in mm with LPS-like axes
(x towards patient left, y posterior, z superior) centred near the liver. The patient
lies in physical LPS space at `Patient.centre`, slightly rotated (`Patient.rot`), so
p = centre + rot @ q. A grid maps voxel index (i, j, k) -> p = origin + D @ (s * idx).
Composing both gives an affine index -> q map, evaluated crop by crop.

Grid choices (documented because the models are judged on an unseen generator):
- CT in-plane field of view 300-450 mm (spacing = FOV / size, e.g. 1.2-1.75 mm at
  256 and 0.6-0.9 mm at 512); slice spacing chosen so that `slices` covers 150-250 mm
  (clipped to 1-5 mm); direction: identity 45 %, diag(-1,-1,1) 20 %, flipped z 10 %,
  diag(-1,1,1) 5 %, slightly oblique (2-8 degrees) 20 %.
- MRI: 1.2-1.6 mm in-plane at size 256 (scaled with size), rectangular FOV, 4-7 mm
  slices covering 180-260 mm, its own origin (centre shifted by up to 30 mm) and more
  often oblique (up to 12 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .shapes import Coords, rotation

DIRECTIONS = {
    "identity": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "flip_z": np.diag([1.0, 1.0, -1.0]),
    "flip_x": np.diag([-1.0, 1.0, 1.0]),
    "flip_all": np.diag([-1.0, -1.0, -1.0]),
}


@dataclass
class Grid:
    """A SimpleITK-style image geometry; shape is (nz, ny, nx) like sitk arrays."""

    size: Tuple[int, int, int]  # (nx, ny, nz)
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: np.ndarray  # 3x3, columns are the index axes in LPS

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_physical(self, idx: np.ndarray) -> np.ndarray:
        """(N,3) continuous (i,j,k) -> (N,3) LPS mm."""
        return np.asarray(self.origin) + (np.asarray(idx, float) * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, p: np.ndarray) -> np.ndarray:
        return ((np.asarray(p, float) - np.asarray(self.origin)) @ self.direction) / np.asarray(self.spacing)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction.ravel()])
        return img

    def describe(self) -> dict:
        return {
            "size": [int(s) for s in self.size],
            "spacing": [round(float(s), 6) for s in self.spacing],
            "origin": [round(float(o), 6) for o in self.origin],
            "direction": [round(float(d), 9) for d in self.direction.ravel()],
        }


@dataclass
class Patient:
    """Placement of the anatomical frame in physical LPS space."""

    centre: np.ndarray  # (3,) LPS mm of the anatomical origin
    rot: np.ndarray  # 3x3

    def to_physical(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(self.centre) + np.asarray(q, float) @ self.rot.T

    def to_anatomical(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - np.asarray(self.centre)) @ self.rot


class View:
    """A grid seen from the anatomical frame: crops and coordinate arrays."""

    def __init__(self, grid: Grid, patient: Patient):
        self.grid = grid
        self.patient = patient
        # q = M @ idx + t
        self.M = patient.rot.T @ grid.direction @ np.diag(grid.spacing)
        self.t = patient.rot.T @ (np.asarray(grid.origin) - patient.centre)
        self.h = float(np.prod(grid.spacing) ** (1.0 / 3.0))  # partial-volume edge width

    def crop(self, lo: Sequence[float], hi: Sequence[float], pad: int = 1) -> Optional[Tuple[slice, slice, slice]]:
        """Array slices (z, y, x) covering the anatomical box [lo, hi]; None if outside."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = (corners - self.t) @ np.linalg.inv(self.M).T
        i0 = np.floor(idx.min(0)).astype(int) - pad
        i1 = np.ceil(idx.max(0)).astype(int) + pad + 1
        n = np.asarray(self.grid.size)
        i0 = np.clip(i0, 0, n)
        i1 = np.clip(i1, 0, n)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))

    def full(self) -> Tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.grid.shape)  # type: ignore[return-value]

    def coords(self, crop: Tuple[slice, slice, slice]) -> Coords:
        """Anatomical x, y, z (float32, broadcast to the crop shape) of the crop's voxels."""
        k = np.arange(crop[0].start, crop[0].stop, dtype=np.float32)[:, None, None]
        j = np.arange(crop[1].start, crop[1].stop, dtype=np.float32)[None, :, None]
        i = np.arange(crop[2].start, crop[2].stop, dtype=np.float32)[None, None, :]
        out = []
        for r in range(3):
            m = [float(v) for v in self.M[r]]
            out.append(float(self.t[r]) + m[0] * i + m[1] * j + m[2] * k)
        return out[0], out[1], out[2]


def _direction(rng: np.random.Generator, probs: Sequence[float], max_oblique: float, override=None) -> np.ndarray:
    """Random direction; always consumes the same draws so overrides keep the rest of a case."""
    kind = str(rng.choice(["identity", "ras", "flip_z", "flip_x", "oblique"], p=probs))
    angles = rng.uniform(-1, 1, size=3) * np.array([max_oblique * 0.5, max_oblique * 0.5, max_oblique])
    base = DIRECTIONS["identity"] if rng.random() < 0.6 else DIRECTIONS["ras"]
    if override is not None:
        if isinstance(override, str) and override == "oblique":
            kind = "oblique"
            angles = np.sign(angles) * np.maximum(np.abs(angles), 2.0)
        else:
            return parse_direction(override)
    if kind != "oblique":
        return DIRECTIONS[kind].copy()
    return rotation(*angles) @ base


def parse_direction(value) -> np.ndarray:
    """Override `flip`/`direction`: a name from DIRECTIONS, 'oblique' handled by caller, or 9 numbers."""
    if isinstance(value, str):
        if value not in DIRECTIONS:
            raise ValueError(f"unknown direction {value!r}; use one of {sorted(DIRECTIONS)} or 9 numbers")
        return DIRECTIONS[value].copy()
    d = np.asarray(value, float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ValueError("direction must be orthonormal")
    return d


def make_grid(size: Tuple[int, int, int], spacing: Sequence[float], direction: np.ndarray, centre_lps: np.ndarray) -> Grid:
    """Grid whose centre voxel lies at `centre_lps`."""
    sp = np.asarray(spacing, float)
    half = (np.asarray(size, float) - 1) / 2 * sp
    origin = np.asarray(centre_lps, float) - direction @ half
    return Grid(tuple(int(s) for s in size), tuple(float(s) for s in sp), tuple(float(o) for o in origin), direction)


def sample_ct_grid(rng: np.random.Generator, size: int, slices: int, fov_centre: np.ndarray,
                   spacing: Optional[Sequence[float]] = None, direction=None) -> Grid:
    fov = rng.uniform(300.0, 450.0)
    sxy = round(fov / size, 4)
    sz = float(np.clip(round(rng.uniform(150.0, 250.0) / slices, 1), 1.0, 5.0))
    d = _direction(rng, [0.45, 0.2, 0.1, 0.05, 0.2], 8.0, direction)
    sp = [sxy, sxy, sz] if spacing is None else [float(v) for v in spacing]
    return make_grid((size, size, slices), sp, d, fov_centre)


def sample_mri_grid(rng: np.random.Generator, size: int, fov_centre: np.ndarray,
                    spacing: Optional[Sequence[float]] = None, direction=None) -> Grid:
    sxy = rng.uniform(1.2, 1.6) * max(1.0, 256.0 / size) * (1.0 if size >= 256 else 0.9)
    nx = int(round(rng.uniform(340.0, 420.0) / sxy))
    ny = int(round(nx * rng.uniform(0.75, 1.0)))
    sz = rng.uniform(4.0, 7.0)
    sp = [round(sxy, 4), round(sxy, 4), round(sz, 2)]
    if spacing is not None:
        sp = [float(v) for v in spacing]
    nz = int(round(rng.uniform(180.0, 260.0) / sp[2]))
    d = _direction(rng, [0.4, 0.2, 0.05, 0.05, 0.3], 12.0, direction)
    return make_grid((nx, ny, nz), sp, d, fov_centre)
