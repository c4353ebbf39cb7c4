"""MRI acquisition model: blur, smooth bias field, Rician noise, arbitrary scaling.

- Blur: in-plane 0.3-0.6 voxel, through-plane 0.25-0.4 slice (thick slices already
  average through the partial-volume width h of the renderer).
- Bias field: exp(beta * smooth field), beta 0.06-0.18, field clipped to +-2 SD,
  wavelengths 250-600 mm, defined in the anatomical frame (coil sensitivity), so
  intensity varies by up to about +-30 % across the volume.
- Rician noise: magnitude of a complex signal with Gaussian noise per channel,
  sigma 1.5-5 % of the liver signal; background air becomes a Rayleigh floor.
- 15 % of cases: faint motion ghost (shifted copy along the phase-encoding axis).
- Global gain 0.5-3: MRI has no absolute units; models must normalise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .grid import View
from .shapes import FourierNoise


def acquire_mri(img: np.ndarray, view: View, rng: np.random.Generator, liver_signal: float) -> np.ndarray:
    sig = (rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6))
    img = ndimage.gaussian_filter(img, sig, truncate=3.0)
    field = FourierNoise(rng, 4, (250, 600))
    beta = rng.uniform(0.06, 0.18)
    # evaluate the bias on a decimated grid (it is very smooth), then upsample
    nz, ny, nx = img.shape
    k = np.arange(0, nz, 2, dtype=np.float32)[:, None, None]
    j = np.arange(0, ny, 4, dtype=np.float32)[None, :, None]
    i = np.arange(0, nx, 4, dtype=np.float32)[None, None, :]
    q = [float(view.t[r]) + float(view.M[r, 0]) * i + float(view.M[r, 1]) * j + float(view.M[r, 2]) * k for r in range(3)]
    small = field((q[0], q[1], q[2]))
    zoom = [n / m for n, m in zip(img.shape, small.shape)]
    bias = np.exp(beta * np.clip(ndimage.zoom(small, zoom, order=1, mode="nearest"), -2.0, 2.0))
    img *= bias[: img.shape[0], : img.shape[1], : img.shape[2]].astype(np.float32)
    if rng.random() < 0.15:
        shift = int(img.shape[1] * rng.uniform(0.2, 0.5))
        img += rng.uniform(0.03, 0.08) * np.roll(img, shift, axis=1)
    sigma = np.float32(rng.uniform(0.015, 0.05) * liver_signal)
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return (img * np.float32(rng.uniform(0.5, 3.0))).astype(np.float32)
