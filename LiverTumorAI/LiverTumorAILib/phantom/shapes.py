"""Signed-distance-like primitives evaluated on coordinate arrays (mm).

Every anatomical structure of the phantom is a signed distance-like function of
physical position (negative inside). Rendering a structure on any grid is then just
evaluating the function at the voxel centres, which is what keeps the CT and the MRI
aligned. The functions are approximate distances (exact on the zero level set, close
to Euclidean within a few mm of it), which is all partial-volume rendering needs.

All inputs are float32 arrays of equal (broadcastable) shape; parameters must be
Python floats so that numpy keeps float32 (NumPy 2 promotes with np.float64 scalars).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

Vec3 = Tuple[float, float, float]
Coords = Tuple[np.ndarray, np.ndarray, np.ndarray]


def vec(v: Sequence[float]) -> Vec3:
    """Plain-float 3-tuple (avoids float64 promotion of float32 arrays)."""
    return (float(v[0]), float(v[1]), float(v[2]))


def rotation(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def to_local(q: Coords, centre: Vec3, rot: np.ndarray | None = None) -> Coords:
    """Coordinates relative to `centre` in the frame whose axes are the columns of `rot`."""
    x = q[0] - centre[0]
    y = q[1] - centre[1]
    z = q[2] - centre[2]
    if rot is None:
        return x, y, z
    r = [[float(v) for v in row] for row in rot]
    return (
        r[0][0] * x + r[1][0] * y + r[2][0] * z,
        r[0][1] * x + r[1][1] * y + r[2][1] * z,
        r[0][2] * x + r[1][2] * y + r[2][2] * z,
    )


def ellipsoid_local(x: np.ndarray, y: np.ndarray, z: np.ndarray, radii: Vec3) -> np.ndarray:
    """Approximate SDF of an axis-aligned ellipsoid centred at 0 (Quilez' k0*(k0-1)/k1)."""
    rx, ry, rz = radii
    k0 = np.sqrt((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)
    k1 = np.sqrt((x / (rx * rx)) ** 2 + (y / (ry * ry)) ** 2 + (z / (rz * rz)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def ellipsoid(q: Coords, centre: Vec3, radii: Vec3, rot: np.ndarray | None = None) -> np.ndarray:
    """SDF of a (rotated) ellipsoid."""
    return ellipsoid_local(*to_local(q, centre, rot), vec(radii))


def ellipse2d(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """SDF of an ellipse in the x-y plane (infinite elliptic cylinder along z)."""
    k0 = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = np.sqrt((x / (rx * rx)) ** 2 + (y / (ry * ry)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def capsule(q: Coords, a: Vec3, b: Vec3, ra: float, rb: float) -> np.ndarray:
    """SDF of a tapered tube from a (radius ra) to b (radius rb)."""
    px, py, pz = q[0] - a[0], q[1] - a[1], q[2] - a[2]
    bx, by, bz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    bb = max(bx * bx + by * by + bz * bz, 1e-6)
    h = np.clip((px * bx + py * by + pz * bz) / bb, 0.0, 1.0)
    dx, dy, dz = px - bx * h, py - by * h, pz - bz * h
    return np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + (rb - ra) * h)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union (polynomial smooth minimum, blend width k mm)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * (k * 0.25)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection."""
    return -smin(-a, -b, k)


class FourierNoise:
    """Smooth random field as a sum of plane waves, unit standard deviation.

    Defined in physical (anatomical) mm, so the same perturbation appears on every
    grid the structure is rendered on. `lam` is the range of wavelengths in mm.
    """

    def __init__(self, rng: np.random.Generator, n: int = 8, lam: Tuple[float, float] = (40.0, 120.0)):
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lengths = np.exp(rng.uniform(np.log(lam[0]), np.log(lam[1]), size=n))
        k = dirs * (2 * np.pi / lengths)[:, None]
        self.k = [vec(v) for v in k]
        self.phase = [float(p) for p in rng.uniform(0, 2 * np.pi, size=n)]
        self.amp = float(np.sqrt(2.0 / n))

    def __call__(self, q: Coords) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(q[0].shape, q[1].shape, q[2].shape), np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.cos(q[0] * kx + q[1] * ky + q[2] * kz + ph)
        return out * self.amp
