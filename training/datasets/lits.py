"""LiTS (Liver Tumor Segmentation Challenge): `volume-N.nii` + `segmentation-N.nii`, labels 0/1/2.

The official archives unpack into "Training Batch 1/2" sub-folders, so files are found
recursively and paired by N.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, finish

_VOL = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_SEG = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")


def load_lits(root: Path, *, skip_bad: bool = False, validate: bool = True) -> CaseList:
    """One Case per `volume-N.nii[.gz]`; a volume without its segmentation is a bad case."""
    root = Path(root)
    vols: Dict[int, Path] = {}
    segs: Dict[int, Path] = {}
    for p in root.rglob("*.nii*"):
        if p.name.startswith("._"):
            continue
        if m := _VOL.match(p.name):
            vols[int(m.group(1))] = p
        elif m := _SEG.match(p.name):
            segs[int(m.group(1))] = p
    if not vols:
        raise InputError(f"{root}: no LiTS volume-N.nii files found")
    cases = []
    for n in sorted(vols):
        case = Case(case_id=f"lits-{n:03d}", ct=vols[n], label=segs.get(n), source="lits")
        if n not in segs:
            case.meta["error"] = f"{vols[n]}: segmentation-{n}.nii not found under {root}"
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset="LiTS")
