"""CT acquisition model: scanner blur, correlated noise, streaks / beam hardening.

- Blur: Gaussian PSF, in-plane sigma 0.4-0.9 mm, slice profile sigma 0.3-0.45 of the
  slice spacing (on top of the partial-volume edges of the renderer).
- Noise: white Gaussian noise correlated by a 0.5-0.9 voxel Gaussian kernel (CT noise
  is not white), rescaled to a per-case standard deviation of 8-25 HU.
- Artefacts (35 % of cases): 1-3 streak sources with radial streaks over a slab of
  slices, a dark beam-hardening band between two dense points, and cupping
  (centre of the body 5-20 HU darker).
- 30 % of cases set the corners outside the circular reconstruction FOV to -1024.
Output int16, clipped to [-1024, 3071].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .grid import Grid


def acquire_ct(img: np.ndarray, grid: Grid, rng: np.random.Generator, noise_sd: float, artefacts: bool) -> np.ndarray:
    sx, sy, sz = grid.spacing
    psf = rng.uniform(0.4, 0.9)
    sig = (rng.uniform(0.3, 0.45), psf / sy, psf / sx)
    img = ndimage.gaussian_filter(img, sig, truncate=3.0)
    if artefacts:
        _artefacts(img, grid, rng)
    corr = rng.uniform(0.5, 0.9)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0.3, corr, corr), truncate=3.0)
    noise *= np.float32(noise_sd / max(float(noise.std()), 1e-6))
    img += noise
    if rng.random() < 0.3:
        ny, nx = img.shape[1:]
        yy, xx = np.ogrid[:ny, :nx]
        outside = ((yy - (ny - 1) / 2) / (ny / 2)) ** 2 + ((xx - (nx - 1) / 2) / (nx / 2)) ** 2 > 1.0
        img[:, outside] = -1024
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def _artefacts(img: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    nz, ny, nx = img.shape
    sx, sy, _ = grid.spacing
    yy, xx = np.mgrid[:ny, :nx].astype(np.float32)
    xmm, ymm = xx * sx, yy * sy
    cx, cy = nx * sx / 2, ny * sy / 2
    pattern = np.zeros((ny, nx), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        px, py = cx + rng.uniform(-60, 60), cy + rng.uniform(-40, 60)
        ang = np.arctan2(ymm - py, xmm - px)
        r = np.sqrt((xmm - px) ** 2 + (ymm - py) ** 2)
        m = int(rng.integers(6, 20))
        streak = np.cos(m * ang + rng.uniform(0, 2 * np.pi)) ** 15 * np.sign(np.cos((m // 2) * ang))
        pattern += rng.uniform(30, 120) * streak * np.exp(-r / rng.uniform(60, 150))
    # beam hardening: dark band between two dense points
    p1 = np.array([cx + rng.uniform(-80, -20), cy + rng.uniform(0, 60)])
    p2 = np.array([cx + rng.uniform(20, 80), cy + rng.uniform(0, 60)])
    dvec = p2 - p1
    t = np.clip(((xmm - p1[0]) * dvec[0] + (ymm - p1[1]) * dvec[1]) / float(dvec @ dvec), 0, 1)
    dist = np.sqrt((xmm - p1[0] - t * dvec[0]) ** 2 + (ymm - p1[1] - t * dvec[1]) ** 2)
    pattern -= rng.uniform(20, 60) * np.exp(-(dist / rng.uniform(3, 8)) ** 2)
    rr = ((xmm - cx) / cx) ** 2 + ((ymm - cy) / cy) ** 2
    pattern -= rng.uniform(5, 20) * np.clip(1 - rr, 0, 1)
    z0 = int(rng.integers(0, nz))
    z1 = min(nz, z0 + int(rng.integers(max(1, nz // 6), max(2, nz // 2))))
    body = img[z0:z1] > -500
    img[z0:z1] += pattern[None] * body
