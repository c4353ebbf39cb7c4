"""A second CT + MRI phantom generator, written independently of `LiverTumorAILib.phantom`.

Why: every held-out case in `heldout_eval.py` comes from the generator the demo weights were
trained on (other seeds and parameters). A model can learn that generator's habits, so its
held-out figures say little about other data. This generator shares no code, shapes or
intensities with it: analytic shapes in patient LPS millimetres (body ellipse with fat and
muscle, spine, aorta, lungs and heart above a diaphragm, bowel loops with gas, kidneys,
spleen, a liver made of two deformed ellipsoids with straight portal branches), flat tissue
intensities with Gaussian blur and noise, 0-4 lesions (metastasis with an enhancing rim and
HCC: malignant; cyst and haemangioma: benign). The MRI is a T2 (or, with `--t1`, a plain T1,
where every lesion is darker than the liver) on its own coarser, rotated and shifted grid with a
bias field and Rician noise. It is deliberately cruder than the
training generator; it is never used for training.

    python benchmarks/independent_phantom.py OUT N [FIRST_SEED] [--t1]
    python benchmarks/heldout_eval.py --generator independent -o OUT ...

Each case folder has the phantom layout `evaluate_dirs` reads (ct, mri, label, lesions,
truth.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

FIRST_SEED = 7100
LESION_KINDS = ("metastasis", "hcc", "cyst", "haemangioma")
MALIGNANT = {"metastasis", "hcc"}
AIR, FAT, MUSCLE, BOWEL, BONE, AORTA, LIVER, SPLEEN, KIDNEY, VESSEL, LUNG, HEART, GAS = range(13)
CT_HU = {AIR: -1000, FAT: -100, MUSCLE: 50, BOWEL: 25, BONE: 450, AORTA: 170, KIDNEY: 160, VESSEL: 180,
         LUNG: -850, HEART: 140, GAS: -900}
T2_SIGNAL = {AIR: 0, FAT: 300, MUSCLE: 55, BOWEL: 160, BONE: 90, AORTA: 30, LIVER: 90, SPLEEN: 170, KIDNEY: 210,
             VESSEL: 60, LUNG: 15, HEART: 40, GAS: 5}
LESION_T2 = {"metastasis": 170, "hcc": 145, "cyst": 650, "haemangioma": 480}
#: a plain T1 (gradient echo) instead, `--mri t1`: fat and liver bright, flowing blood dark, every
#: lesion kind darker than the liver (cysts darkest, HCC nearest the liver); the same shapes and
#: grid, so a T1 draw differs from the T2 one of its seed only in the MRI's signal
T1_SIGNAL = {AIR: 0, FAT: 420, MUSCLE: 120, BOWEL: 110, BONE: 260, AORTA: 25, LIVER: 210, SPLEEN: 150, KIDNEY: 140,
             VESSEL: 50, LUNG: 10, HEART: 70, GAS: 5}
LESION_T1 = {"metastasis": 115, "hcc": 165, "cyst": 45, "haemangioma": 85}
MRI_SIGNALS = {"t2": (T2_SIGNAL, LESION_T2), "t1": (T1_SIGNAL, LESION_T1)}


def smooth_field(rng: np.random.Generator, amplitude: float, waves: int = 6,
                 wavelength_mm: tuple[float, float] = (60, 160)) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random function of LPS points (sum of plane waves), the same on any grid."""
    terms = []
    for _ in range(waves):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        terms.append((d * 2 * np.pi / rng.uniform(*wavelength_mm), rng.uniform(0, 2 * np.pi),
                      rng.normal() * amplitude / np.sqrt(waves)))

    def field(points: np.ndarray) -> np.ndarray:
        out = np.zeros(points.shape[:-1], np.float32)
        for k, phase, a in terms:
            out += a * np.sin(points @ k + phase)
        return out

    return field


def ellipsoid(points: np.ndarray, centre: Sequence[float], radii: Sequence[float],
              rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised squared distance: <= 1 inside the (rotated) ellipsoid."""
    q = points - np.asarray(centre)
    if rotation is not None:
        q = q @ rotation
    return ((q / np.asarray(radii)) ** 2).sum(-1)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


class Anatomy:
    """One patient's analytic anatomy; `tissues(points)` evaluates it on any set of LPS points."""

    def __init__(self, rng: np.random.Generator):
        s = rng.uniform(0.85, 1.15)
        self.body = (rng.uniform(140, 175) * s, rng.uniform(100, 130) * s)
        self.fat = rng.uniform(8, 30)
        self.liver_main = ((-55 * s, -5, 0), (rng.uniform(60, 80) * s, rng.uniform(70, 90) * s, rng.uniform(65, 85)),
                           random_rotation(rng, 15))
        self.liver_left = ((rng.uniform(0, 25) * s, -35 * s, 15),
                           (rng.uniform(40, 60) * s, rng.uniform(30, 45) * s, rng.uniform(35, 50)), random_rotation(rng, 20))
        self.deform = smooth_field(rng, rng.uniform(4, 10))
        self.spleen = ((90 * s, 35 * s, 20), (30, 45, 55), random_rotation(rng, 20))
        self.kidneys = [((side * 65 * s, 60 * s, -70), (28, 25, 55), random_rotation(rng, 15)) for side in (-1, 1)]
        self.vessels = []
        for _ in range(rng.integers(4, 8)):  # straight portal branches through the liver
            d = rng.normal(size=3)
            self.vessels.append((np.array(self.liver_main[0]) + rng.normal(0, 25, 3), d / np.linalg.norm(d),
                                 rng.uniform(2.5, 6)))
        self.lesions: list[dict] = []
        self.dome = self.liver_main[0][2] + 0.75 * self.liver_main[1][2]
        self.dome_field = smooth_field(rng, 8, wavelength_mm=(80, 200))
        self.bowel = smooth_field(rng, 1.0, waves=10, wavelength_mm=(25, 60))
        self.gas = smooth_field(rng, 1.0, waves=10, wavelength_mm=(10, 30))
        self.heart = ((20 * s, -25 * s, self.dome + 55), (55 * s, 48 * s, 45), random_rotation(rng, 15))

    def liver(self, points: np.ndarray) -> np.ndarray:
        d = self.deform(points) / 60
        return (ellipsoid(points, *self.liver_main[:2], self.liver_main[2]) + d <= 1) | (
            ellipsoid(points, *self.liver_left[:2], self.liver_left[2]) + d <= 1)

    def tissues(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue map, lesion instance map) at `points` (..., 3)."""
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        t = np.zeros(points.shape[:-1], np.uint8)
        a, b = self.body
        t[(x / a) ** 2 + (y / b) ** 2 <= 1] = MUSCLE
        t[(x / (a - 6)) ** 2 + (y / (b - 6)) ** 2 <= 1] = FAT
        inner = (x / (a - 6 - self.fat)) ** 2 + (y / (b - 6 - self.fat)) ** 2 <= 1
        thorax = inner & (z > self.dome + self.dome_field(points))
        bowel = inner & ~thorax & (self.bowel(points) > 0.2)
        t[bowel] = BOWEL
        t[bowel & (self.gas(points) > 0.9)] = GAS
        t[thorax] = LUNG
        t[thorax & (ellipsoid(points, *self.heart[:2], self.heart[2]) <= 1)] = HEART
        t[(x ** 2 + (y - 0.72 * b) ** 2) <= 22 ** 2] = BONE
        t[((x - 18) ** 2 + (y - 0.72 * b + 38) ** 2) <= 12 ** 2] = AORTA
        for centre, radii, rotation in self.kidneys:
            t[(ellipsoid(points, centre, radii, rotation) <= 1) & inner & ~thorax] = KIDNEY
        t[(ellipsoid(points, *self.spleen[:2], self.spleen[2]) <= 1) & inner & ~thorax] = SPLEEN
        liver = self.liver(points) & inner
        t[liver] = LIVER
        for origin, direction, radius in self.vessels:
            q = points - origin
            t[liver & (np.linalg.norm(q - (q @ direction)[..., None] * direction, axis=-1) <= radius)] = VESSEL
        lesions = np.zeros(points.shape[:-1], np.uint8)
        for i, lesion in enumerate(self.lesions, 1):
            lesions[(ellipsoid(points, lesion["centre"], lesion["radii"], lesion["rotation"]) <= 1) & liver] = i
        return t, lesions


def place_lesions(anatomy: Anatomy, rng: np.random.Generator, points: np.ndarray, liver: np.ndarray,
                  spacing_zyx: Sequence[float]) -> None:
    """0-4 lesions of 10-45 mm, each wholly inside the liver and apart from the others."""
    depth = ndimage.distance_transform_edt(liver, sampling=spacing_zyx)
    for _ in range(rng.integers(0, 5)):
        for _attempt in range(40):
            diameter = rng.uniform(10, 45)
            candidates = np.argwhere(depth > diameter / 2 + 2)
            if len(candidates) == 0:
                break
            centre = points[tuple(candidates[rng.integers(len(candidates))])]
            if any(np.linalg.norm(centre - other["centre"]) < (diameter + 2 * max(other["radii"])) / 2 + 4
                   for other in anatomy.lesions):
                continue
            radii = np.array([diameter / 2 * rng.uniform(0.85, 1.15) for _ in range(3)])
            anatomy.lesions.append({"centre": centre, "radii": radii, "rotation": random_rotation(rng, 45),
                                    "kind": LESION_KINDS[rng.integers(len(LESION_KINDS))],
                                    "diameter_mm": float(2 * radii.max())})
            break


def render_ct(t: np.ndarray, lesions: np.ndarray, anatomy: Anatomy, rng: np.random.Generator,
              liver_hu: float) -> np.ndarray:
    image = np.zeros(t.shape, np.float32)
    for tissue, hu in CT_HU.items():
        image[t == tissue] = hu
    image[t == BOWEL] += rng.normal(0, 15, size=int((t == BOWEL).sum()))
    image[t == LIVER] = liver_hu
    image[t == SPLEEN] = liver_hu + 12
    for i, lesion in enumerate(anatomy.lesions, 1):
        inside = lesions == i
        image[inside] = {"metastasis": liver_hu - rng.uniform(35, 70), "hcc": liver_hu - rng.uniform(20, 40),
                         "cyst": rng.uniform(0, 15), "haemangioma": liver_hu + rng.uniform(25, 50)}[lesion["kind"]]
        if lesion["kind"] == "metastasis":  # enhancing rim
            image[inside & ~ndimage.binary_erosion(inside, iterations=2)] = liver_hu + 10
    image = ndimage.gaussian_filter(image, 0.7)
    return image + rng.normal(0, rng.uniform(8, 20), image.shape).astype(np.float32)


def render_mri(t: np.ndarray, lesions: np.ndarray, anatomy: Anatomy, rng: np.random.Generator,
               sequence: str = "t2") -> np.ndarray:
    tissue_signal, lesion_signal = MRI_SIGNALS[sequence]
    image = np.zeros(t.shape, np.float32)
    for tissue, signal in tissue_signal.items():
        image[t == tissue] = signal
    for i, lesion in enumerate(anatomy.lesions, 1):
        image[lesions == i] = lesion_signal[lesion["kind"]] * rng.uniform(0.85, 1.15)
    return ndimage.gaussian_filter(image, 0.8)


def grid_points(size, spacing, origin, direction) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre of an ITK grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]
    return np.asarray(origin) + (index.astype(np.float32) * np.asarray(spacing)) @ np.asarray(direction).T


def _image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    return image


def make_case(seed: int, folder: Path, spacing_mm: Sequence[float] | None = None, mri_sequence: str = "t2") -> dict:
    """Write one case into `folder`; return its truth record. `spacing_mm` (x, y, z) overrides
    the random CT spacing (tests use a coarse one); `mri_sequence` "t2" or "t1" (`MRI_SIGNALS`)."""
    rng = np.random.default_rng(seed)
    anatomy = Anatomy(rng)
    in_plane, slice_mm = rng.uniform(0.7, 1.0), rng.choice([1.5, 2.5, 3.0, 5.0])
    spacing = np.array(spacing_mm if spacing_mm is not None else (in_plane, in_plane, slice_mm), float)
    fov = np.array([2 * anatomy.body[0] + 30, 2 * anatomy.body[0] + 30, rng.uniform(180, 240)])
    size = np.ceil(fov / spacing).astype(int)
    direction = [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])][rng.integers(3)]
    centre = np.array([0.0, 0.0, rng.uniform(0, 40)])  # from the lung bases to below the liver
    origin = centre - direction @ (size * spacing / 2)
    points = grid_points(size, spacing, origin, direction)
    tissue, _ = anatomy.tissues(points)
    if (tissue == LIVER).sum() < 1000:
        raise ValueError(f"seed {seed}: the liver is outside the field of view")
    place_lesions(anatomy, rng, points, tissue == LIVER, spacing[::-1])
    tissue, lesions = anatomy.tissues(points)
    liver_hu = rng.uniform(55, 125)
    ct = render_ct(tissue, lesions, anatomy, rng, liver_hu)
    label = np.zeros(tissue.shape, np.uint8)
    label[(tissue == LIVER) | (tissue == VESSEL) | (lesions > 0)] = 1
    label[lesions > 0] = 2

    mri_spacing = np.array([1.4, 1.4, 5.0])
    mri_size = np.ceil(fov * np.array([0.95, 0.9, 1.0]) / mri_spacing).astype(int)
    mri_direction = random_rotation(rng, 8)
    mri_origin = centre + rng.normal(0, 8, 3) - mri_direction @ (mri_size * mri_spacing / 2)
    mri_tissue, mri_lesions = anatomy.tissues(grid_points(mri_size, mri_spacing, mri_origin, mri_direction))
    mri = render_mri(mri_tissue, mri_lesions, anatomy, rng, mri_sequence)
    _, gy, gx = np.meshgrid(*[np.linspace(-1, 1, n) for n in mri_size[::-1]], indexing="ij")
    mri *= (1 + 0.25 * gx + 0.15 * gy).astype(np.float32)  # coil bias field
    mri = np.abs(mri + rng.normal(0, 8, mri.shape) + 1j * rng.normal(0, 8, mri.shape)).astype(np.float32)

    folder.mkdir(parents=True, exist_ok=True)
    grid = (spacing, origin, direction)
    sitk.WriteImage(_image(np.round(ct).astype(np.int16), *grid), str(folder / "ct.nii.gz"), True)
    sitk.WriteImage(_image(label, *grid), str(folder / "label.nii.gz"), True)
    sitk.WriteImage(_image(lesions, *grid), str(folder / "lesions.nii.gz"), True)
    sitk.WriteImage(_image(mri, mri_spacing, mri_origin, mri_direction), str(folder / "mri.nii.gz"), True)
    truth = {"seed": int(seed), "generator": "benchmarks/independent_phantom.py", "liver_hu": round(float(liver_hu), 1),
             "mri_sequence": mri_sequence,
             "ct": {"size": size.tolist(), "spacing": spacing.tolist()},
             "lesions": [{"id": i, "type": lesion["kind"],
                          "class": "malignant" if lesion["kind"] in MALIGNANT else "benign",
                          "diameter_mm": round(lesion["diameter_mm"], 1)}
                         for i, lesion in enumerate(anatomy.lesions, 1) if (lesions == i).any()]}
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sequence = "t1" if "--t1" in args else "t2"
    args = [a for a in args if a != "--t1"]
    if len(args) < 2:
        print(__doc__.split("\n\n")[2])
        return 2
    root, count = Path(args[0]), int(args[1])
    first = int(args[2]) if len(args) > 2 else FIRST_SEED
    for i in range(count):
        truth = make_case(first + i, root / f"case_{i:03d}", mri_sequence=sequence)
        print(f"case_{i:03d}", truth["liver_hu"], [(t["type"], t["diameter_mm"]) for t in truth["lesions"]], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
