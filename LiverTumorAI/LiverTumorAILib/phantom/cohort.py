"""Cases and cohorts: sampling a patient, rendering CT + MRI, labels and truth.json.

Case-level flags: fatty liver 15 %, cirrhosis 15 % (never both), artefacts 35 %,
CT noise 8-25 HU. The patient frame is placed at a random table position
(x +-20, y -30..150, z -800..1600 mm) with a small roll/pitch/yaw (<= 3-5 degrees).
The CT field of view is centred near the body centre (+-20 mm in-plane) at the liver's
height (+-20 mm); the MRI's centre is shifted independently (+-30 mm).
Randomness: one numpy Generator per case from `seed` (anatomy, lesions, grids,
intensities in that order) and separate child generators for the CT and MRI
rendering/noise, so a case is bit-identical for a given seed and size/slices/overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .anatomy import build_anatomy
from .ct import acquire_ct
from .grid import Grid, Patient, View, sample_ct_grid, sample_mri_grid
from .lesions import CLASS, Lesion, lesion_structures, sample_lesions
from .mri import acquire_mri
from .render import render
from .shapes import rotation
from .tissues import sample_tissues

VERSION = "1.0"
GENERATOR = f"livertumorai-phantom/{VERSION}"
OVERRIDES = {"spacing", "n_lesions", "lesion_types", "flip", "direction", "mri_sequence", "with_mri", "noise",
             "fatty", "cirrhotic", "artefacts", "mri_spacing", "mri_direction", "debug", "lesion_diameters",
             "plain_lesions", "subtle_lesions", "bright_lesions"}


@dataclass
class PhantomCase:
    ct: sitk.Image  # int16 HU, CT grid
    mri: Optional[sitk.Image]  # float32, own grid (None when with_mri=False)
    label: sitk.Image  # uint8 on the CT grid: 0 background, 1 liver, 2 tumour
    lesions: sitk.Image  # uint16 instance map on the CT grid, k = truth lesion id k
    truth: Dict[str, Any]  # written as truth.json
    debug: Dict[str, Any] = field(default_factory=dict)  # with debug=True: tissue map + names


def case_seed(seed: int, index: int) -> int:
    """Seed of case `index` of a cohort made with `seed` (stable across versions)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint32)[0])


def _lps_to_ras(p) -> List[float]:
    return [round(-float(p[0]), 3), round(-float(p[1]), 3), round(float(p[2]), 3)]


def _lesion_truth(les: Lesion, new_id: int, mask: np.ndarray, grid: Grid, view: View) -> Dict[str, Any]:
    count = int(mask.sum())
    idx = np.argwhere(mask)[:, ::-1].mean(0)  # (i, j, k)
    centre = grid.index_to_physical(idx[None])[0]
    nominal = view.patient.to_physical(np.asarray(les.centre)[None])[0]
    # was it clipped (by the liver envelope or the field of view)?
    raw_crop = view.crop(np.asarray(les.centre) - les.bound - 1, np.asarray(les.centre) + les.bound + 1, pad=0)
    raw = 0
    if raw_crop is not None:
        raw = int((les.sdf(view.coords(raw_crop)) < 0).sum())
    ci = grid.physical_to_index(nominal[None])[0]
    margin = (les.bound + 2) / np.asarray(grid.spacing)
    fov_ok = bool(np.all(ci - margin >= -0.5) and np.all(ci + margin <= np.asarray(grid.size) - 0.5))
    return {
        "id": new_id,
        "type": les.type,
        "class": CLASS[les.type],
        "diameter_mm": round(les.diameter_mm, 3),
        "volume_ml": round(count * grid.voxel_ml, 4),
        "voxels": count,
        "centre_lps": [round(float(v), 3) for v in centre],
        "centre_ras": _lps_to_ras(centre),
        "nominal_centre_lps": [round(float(v), 3) for v in nominal],
        "clipped": bool((not fov_ok) or count < 0.97 * raw),
        "appearance": {k: round(float(v), 3) for k, v in les.look.items()},
    }


def generate_case(seed: int, size: int = 256, slices: int = 64, **overrides) -> PhantomCase:
    """One synthetic CT (+ MRI) case; see the package docstring for the overrides."""
    unknown = set(overrides) - OVERRIDES
    if unknown:
        raise TypeError(f"unknown phantom overrides: {sorted(unknown)}; allowed: {sorted(OVERRIDES)}")
    if size < 16 or slices < 4:
        raise ValueError("size must be >= 16 and slices >= 4")
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    rng = np.random.default_rng(seed)
    cirrhotic = bool(overrides.get("cirrhotic", rng.random() < 0.15))
    fatty = bool(overrides.get("fatty", (not cirrhotic) and rng.random() < 0.18))
    artefacts = bool(overrides.get("artefacts", rng.random() < 0.35))
    noise = float(overrides.get("noise", rng.uniform(8, 25)))
    anatomy = build_anatomy(rng, cirrhotic)
    patient = Patient(np.array([rng.uniform(-20, 20), rng.uniform(-30, 150), rng.uniform(-800, 1600)]),
                      rotation(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-5, 5)))
    lc = anatomy.liver_centre
    ct_centre = patient.to_physical(np.array([[rng.uniform(-20, 20), rng.uniform(-20, 20), lc[2] + rng.uniform(-20, 20)]]))[0]
    direction = overrides.get("direction", overrides.get("flip"))
    ct_grid = sample_ct_grid(rng, size, slices, ct_centre, overrides.get("spacing"), direction)
    mr_centre = patient.to_physical(np.array([[rng.uniform(-30, 30), rng.uniform(-30, 30), lc[2] + rng.uniform(-30, 30)]]))[0]
    mr_grid = sample_mri_grid(rng, size, mr_centre, overrides.get("mri_spacing"), overrides.get("mri_direction"))
    lesions = sample_lesions(rng, anatomy.liver_sdf, anatomy.liver_lo, anatomy.liver_hi, ct_grid, patient, cirrhotic,
                             overrides.get("n_lesions"), overrides.get("lesion_types"),
                             overrides.get("lesion_diameters"), float(overrides.get("plain_lesions", 0.0)),
                             float(overrides.get("subtle_lesions", 0.0)), float(overrides.get("bright_lesions", 0.0)))
    les_structs, liver_sdf = lesion_structures(rng, lesions, anatomy.liver_sdf)
    structures = list(anatomy.structures)
    for st in structures:
        if st.name == "liver":
            st.sdf = liver_sdf
    structures += les_structs
    tissues = sample_tissues(rng, fatty, cirrhotic)
    sequence = str(overrides.get("mri_sequence", "t2")).lower()
    if sequence not in ("t1", "t2"):
        raise ValueError(f"mri_sequence must be 't1' or 't2', not {sequence!r}")
    debug = bool(overrides.get("debug", False))

    # --- CT --------------------------------------------------------------------------
    ct_rng = np.random.default_rng([seed, 1])
    view = View(ct_grid, patient)
    r = render(view, structures, "ct", tissues, ct_rng, want_tissue=debug)
    ct = acquire_ct(r.image, ct_grid, ct_rng, noise, artefacts)
    les_map = r.lesions
    present = [les for les in lesions if np.any(les_map == les.id)]
    lut = np.zeros(len(lesions) + 1, np.uint16)
    for new_id, les in enumerate(present, start=1):
        lut[les.id] = new_id
    les_map = lut[les_map]
    label = r.liver.astype(np.uint8)
    label[les_map > 0] = 2
    truth_lesions = [_lesion_truth(les, k, les_map == k, ct_grid, view) for k, les in enumerate(present, start=1)]

    # --- MRI -------------------------------------------------------------------------
    mri_img = None
    if bool(overrides.get("with_mri", True)):
        mr_rng = np.random.default_rng([seed, 2])
        mview = View(mr_grid, patient)
        m = render(mview, structures, sequence, tissues, mr_rng)
        mri_img = mr_grid.to_image(acquire_mri(m.image, mview, mr_rng, tissues.get("liver", sequence)))

    truth: Dict[str, Any] = {
        "seed": seed,
        "generator": GENERATOR,
        "ct": ct_grid.describe(),
        "mri": (mr_grid.describe() | {"sequence": sequence}) if mri_img is not None else None,
        "liver_volume_ml": round(float((label > 0).sum()) * ct_grid.voxel_ml, 3),
        "lesions": truth_lesions,
        "flags": {"fatty": fatty, "cirrhotic": cirrhotic, "artefacts": artefacts},
        "ct_noise_hu": round(noise, 2),
        "tissue_means": {k: {m: round(v, 2) for m, v in t.items()} for k, t in tissues.table.items()},
        "patient": {"centre_lps": [round(float(v), 3) for v in patient.centre],
                    "rotation": [round(float(v), 6) for v in patient.rot.ravel()]},
    }
    case = PhantomCase(ct_grid.to_image(ct), mri_img, ct_grid.to_image(label), ct_grid.to_image(les_map.astype(np.uint16)), truth)
    if debug:
        case.debug = {"tissue": ct_grid.to_image(r.tissue), "tissue_names": r.tissue_names,
                      "clean_ct": ct_grid.to_image(r.image.astype(np.float32))}
    return case


def write_case(case: PhantomCase, folder: Path) -> None:
    """ct.nii.gz, mri.nii.gz (if any), label.nii.gz, lesions.nii.gz, truth.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(case.ct, str(folder / "ct.nii.gz"), True)
    if case.mri is not None:
        sitk.WriteImage(case.mri, str(folder / "mri.nii.gz"), True)
    sitk.WriteImage(case.label, str(folder / "label.nii.gz"), True)
    sitk.WriteImage(case.lesions, str(folder / "lesions.nii.gz"), True)
    (folder / "truth.json").write_text(json.dumps(case.truth, indent=1))


def generate_cohort(out_dir: Path, count: int, seed: int = 0, size: int = 256, slices: int = 64, **overrides) -> List[Path]:
    """out_dir/case_000 ... ; case i uses case_seed(seed, i) (recorded in truth.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(int(count)):
        folder = out_dir / f"case_{i:03d}"
        write_case(generate_case(case_seed(seed, i), size=size, slices=slices, **overrides), folder)
        paths.append(folder)
    return paths
