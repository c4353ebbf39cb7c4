"""CHAOS (Combined Healthy Abdominal Organ Segmentation): liver-only labels, CT or MR.

CT: `Train_Sets/CT/N/DICOM_anon/*.dcm` + `Ground/*.png` (liver = non-zero).
MR: `Train_Sets/MR/N/T2SPIR/DICOM_anon/*.dcm` or `T1DUAL/DICOM_anon/{InPhase,OutPhase}/`
+ `<sequence>/Ground/*.png`, where the liver is grey level 63 (any of 55..70; kidneys
and spleen have other levels and become background).

PNG k (sorted by the number in its name) belongs to the DICOM slice with the k-th
smallest InstanceNumber, as in the challenge's own evaluation; the volume itself is
assembled in GDCM's position order, so each mask slice is moved to its DICOM slice
rather than assuming the two orders agree. CHAOS has no tumour annotation:
`labels_present = (0, 1)` so trainers do not learn "no tumour" from it. MR cases carry
the image in `mri` (no CT).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, copy_geometry, dicom_files, finish

MR_LIVER_RANGE = (55, 70)


def _num(p: Path) -> int:
    nums = re.findall(r"\d+", p.stem)
    return int(nums[-1]) if nums else -1


def _pngs(ground: Path) -> List[Path]:
    return sorted((p for p in ground.glob("*.png") if not p.name.startswith("._")), key=_num)


def _label_builder(dicom_dir: Path, ground: Path, mr: bool, case_id: str) -> Callable[[], sitk.Image]:
    def build() -> sitk.Image:
        from PIL import Image

        files = dicom_files(dicom_dir)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        ref = reader.Execute()
        inst = []
        for f in files:
            r = sitk.ImageFileReader()
            r.SetFileName(f)
            r.ReadImageInformation()
            inst.append(int(r.GetMetaData("0020|0013").strip()) if r.HasMetaDataKey("0020|0013") else len(inst))
        rank = np.argsort(np.argsort(inst, kind="stable"), kind="stable")
        pngs = _pngs(ground)
        if len(pngs) != len(files):
            raise InputError(f"case {case_id}: {ground} has {len(pngs)} PNG masks for {len(files)} DICOM slices")
        label = np.zeros(ref.GetSize()[::-1], np.uint8)
        for z, k in enumerate(rank):
            arr = np.asarray(Image.open(pngs[k]).convert("L"))
            if arr.shape != label.shape[1:]:
                raise InputError(f"case {case_id}: {pngs[k]} is {arr.shape[::-1]}, slices are {label.shape[:0:-1]}")
            liver = (arr >= MR_LIVER_RANGE[0]) & (arr <= MR_LIVER_RANGE[1]) if mr else arr > 0
            label[z][liver] = 1
        return copy_geometry(label, ref)

    return build


def _problem(dicom_dir: Path, ground: Path) -> str:
    if not dicom_dir.is_dir():
        return f"{dicom_dir} not found"
    if not ground.is_dir():
        return f"{ground} not found"
    n_dcm = len([p for p in dicom_dir.iterdir() if p.is_file() and not p.name.startswith("._")])
    n_png = len(_pngs(ground))
    if n_dcm == 0:
        return f"{dicom_dir} is empty"
    if n_dcm != n_png:
        return f"{ground} has {n_png} PNG masks for {n_dcm} DICOM files in {dicom_dir}"
    return ""


def _modality_root(root: Path, modality: str) -> Path:
    for cand in (root / "Train_Sets" / modality, root / modality, root):
        if cand.is_dir() and cand.name == modality:
            return cand
    raise InputError(f"{root}: no CHAOS Train_Sets/{modality} folder")


def load_chaos(root: Path, *, modality: str = "CT", mr_sequence: str = "T2SPIR", t1_phase: str = "InPhase",
               skip_bad: bool = False, validate: bool = True) -> CaseList:
    """CHAOS CT (modality="CT") or MR (modality="MR", T2SPIR or T1DUAL) liver cases."""
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise InputError(f"CHAOS modality must be CT or MR, not {modality!r}")
    base = _modality_root(Path(root), modality)
    patients = sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not patients:
        raise InputError(f"{base}: no numbered patient folders")
    cases = []
    for p in patients:
        if modality == "CT":
            dicom_dir, ground = p / "DICOM_anon", p / "Ground"
        else:
            seq = p / mr_sequence
            dicom_dir = seq / "DICOM_anon" / t1_phase if mr_sequence.upper() == "T1DUAL" else seq / "DICOM_anon"
            ground = seq / "Ground"
        cid = f"chaos-{modality.lower()}-{p.name}" + ("" if modality == "CT" else f"-{mr_sequence.lower()}")
        label = _label_builder(dicom_dir, ground, modality == "MR", cid)
        case = Case(case_id=cid, ct=dicom_dir if modality == "CT" else None,
                    mri=dicom_dir if modality == "MR" else None, label=label, source=f"chaos-{modality.lower()}",
                    labels_present=(0, 1), meta={"sequence": mr_sequence if modality == "MR" else "CT"})
        problem = _problem(dicom_dir, ground)
        if problem:
            case.meta["error"] = problem
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset=f"CHAOS {modality}")
