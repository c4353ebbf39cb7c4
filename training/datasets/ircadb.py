"""3D-IRCADb-01: `3Dircadb1.N/PATIENT_DICOM/` + `MASKS_DICOM/<structure>/` binary DICOM masks.

The masks are combined into our 0/1/2 label (liver = `liver`, tumour = every
`livertumor*` structure, painted over the liver) and an instance map (one instance per
numbered `livertumorNN` structure, in name order; an aggregated `livertumors` mask is
split into connected components). Cysts (`liverkyst`/`livercyst`) are benign lesions but
not "tumour" in LiTS' sense, so they are left out unless `include_cysts=True`.
The official download ships PATIENT_DICOM.zip / MASKS_DICOM.zip: unzip them first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, copy_geometry, dicom_files, finish, read_image

_TUMOUR = re.compile(r"^livertumou?r(s|_?\d+)?$", re.IGNORECASE)
_CYST = re.compile(r"^liver(kyst|cyst)s?_?\d*$", re.IGNORECASE)


def _mask(folder: Path, ref: sitk.Image) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_files(folder))
    img = reader.Execute()
    if img.GetSize() != ref.GetSize():
        raise InputError(f"{folder}: mask size {img.GetSize()} differs from PATIENT_DICOM {ref.GetSize()}")
    return sitk.GetArrayFromImage(img) > 0


def _structures(patient: Path, include_cysts: bool) -> Tuple[Path, List[Path]]:
    masks = patient / "MASKS_DICOM"
    liver = masks / "liver"
    lesions = sorted(p for p in masks.iterdir() if p.is_dir() and (
        _TUMOUR.match(p.name) or (include_cysts and _CYST.match(p.name))))
    return liver, lesions


def _label_builder(patient: Path, include_cysts: bool) -> Tuple[Callable[[], sitk.Image], Callable[[], sitk.Image]]:
    cache: dict = {}

    def build() -> None:
        if cache:
            return
        ct = read_image(patient / "PATIENT_DICOM")
        liver_dir, lesion_dirs = _structures(patient, include_cysts)
        label = np.zeros(ct.GetSize()[::-1], np.uint8)
        label[_mask(liver_dir, ct)] = 1
        inst = np.zeros(label.shape, np.uint16)
        k = 0
        for d in lesion_dirs:
            m = _mask(d, ct)
            if not m.any():
                continue
            label[m] = 2
            if d.name.lower() in ("livertumors", "livertumours"):
                from scipy import ndimage

                cc, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
                for j in range(1, n + 1):
                    k += 1
                    inst[(cc == j) & (inst == 0)] = k
            else:
                k += 1
                inst[m & (inst == 0)] = k
        cache["label"] = copy_geometry(label, ct)
        cache["lesions"] = copy_geometry(inst, ct, sitk.sitkUInt16)

    def label() -> sitk.Image:
        build()
        return cache["label"]

    def lesions() -> sitk.Image:
        build()
        return cache["lesions"]

    return label, lesions


def _problem(patient: Path) -> str:
    for sub in ("PATIENT_DICOM", "MASKS_DICOM"):
        if not (patient / sub).is_dir():
            if (patient / f"{sub}.zip").is_file():
                return f"{patient / sub}.zip is still zipped: unzip it in place"
            return f"{patient / sub} not found"
    if not (patient / "MASKS_DICOM" / "liver").is_dir():
        return f"{patient / 'MASKS_DICOM' / 'liver'} not found"
    n_ct = len([p for p in (patient / "PATIENT_DICOM").iterdir() if p.is_file()])
    n_liv = len([p for p in (patient / "MASKS_DICOM" / "liver").iterdir() if p.is_file()])
    if n_ct == 0:
        return f"{patient / 'PATIENT_DICOM'} is empty"
    if n_ct != n_liv:
        return f"{patient / 'MASKS_DICOM' / 'liver'} has {n_liv} slices, PATIENT_DICOM has {n_ct}"
    return ""


def load_ircadb(root: Path, *, include_cysts: bool = False, skip_bad: bool = False,
                validate: bool = True) -> CaseList:
    root = Path(root)
    pats = [root] if root.name.lower().startswith("3dircadb") and root.is_dir() else sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("3dircadb")),
        key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
    if not pats:
        raise InputError(f"{root}: no 3Dircadb1.N folders found")
    cases = []
    for p in pats:
        label, lesions = _label_builder(p, include_cysts)
        case = Case(case_id=f"ircadb-{p.name.split('.')[-1]}", ct=p / "PATIENT_DICOM", label=label,
                    lesions=lesions, source="3d-ircadb")
        problem = _problem(p)
        if problem:
            case.meta["error"] = problem
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset="3D-IRCADb")
