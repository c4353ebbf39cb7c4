"""Synthetic phantoms: generated on the fly (`phantom:N`) or read from a `livertumorai phantom` folder.

On the fly, each case is generated on first access and kept (phantoms are small), so a
cohort of N costs nothing until the trainer touches it and is identical for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, finish

PHANTOM_FILES = ("ct.nii.gz", "mri.nii.gz", "label.nii.gz", "lesions.nii.gz", "truth.json")


def classes_from_truth(truth: Dict[str, Any]) -> Dict[int, str]:
    from LiverTumorAILib.evaluation import truth_classes

    return {k: ("malignant" if v else "benign") for k, v in truth_classes(truth).items()}


def _as_image(obj: Any) -> Optional[sitk.Image]:
    if obj is None or isinstance(obj, sitk.Image):
        return obj
    return sitk.GetImageFromArray(np.asarray(obj))


class _Generated:
    """Generates one phantom on first access and fills its Case's lesion classes from truth."""

    def __init__(self, case: Case, seed: int, kwargs: Dict[str, Any]):
        self.case, self.seed, self.kwargs = case, seed, kwargs
        self.generated: Any = None

    def loader(self, attr: str) -> Callable[[], sitk.Image]:
        def load() -> sitk.Image:
            if self.generated is None:
                from LiverTumorAILib.phantom import generate_case

                self.generated = generate_case(self.seed, **self.kwargs)
                truth = getattr(self.generated, "truth", None) or {}
                self.case.lesion_classes = classes_from_truth(truth)
                self.case.meta["truth"] = truth
            img = _as_image(getattr(self.generated, attr, None))
            if img is None:
                raise InputError(f"phantom seed {self.seed}: generator returned no {attr}")
            return img

        return load


def phantom_cases(count: int, *, seed: int = 0, size: int = 128, slices: int = 32, **overrides: Any) -> CaseList:
    """COUNT phantom cases with seeds seed, seed+1, ... (generated lazily, memoised).

    lesion_classes are filled in when a case is first loaded (its truth comes with it).
    """
    if count < 1:
        raise InputError(f"phantom:N needs N >= 1, got {count}")
    cases = []
    for i in range(count):
        kwargs = dict(size=size, slices=slices, **overrides)
        case = Case(case_id=f"phantom-{seed + i:04d}", ct=None, label=None, source="phantom",
                    meta={"seed": seed + i, "synthetic": True,
                          "generator": {"name": "LiverTumorAILib.phantom.generate_case", **kwargs}})
        gen = _Generated(case, seed + i, kwargs)
        case.ct, case.mri, case.label, case.lesions = (gen.loader(a) for a in ("ct", "mri", "label", "lesions"))
        cases.append(case)
    return CaseList(cases)


def load_phantom_dir(root: Path, *, skip_bad: bool = False, validate: bool = True) -> CaseList:
    """`root/case_XXX/{ct,mri,label,lesions}.nii.gz + truth.json` (or ROOT is one such case)."""
    root = Path(root)
    dirs = [root] if (root / "label.nii.gz").exists() else sorted(
        p for p in root.iterdir() if p.is_dir() and ((p / "ct.nii.gz").exists() or (p / "label.nii.gz").exists()))
    if not dirs:
        raise InputError(f"{root}: no phantom case folders (case_XXX/ct.nii.gz + label.nii.gz)")
    cases = []
    for d in dirs:
        mri, les = d / "mri.nii.gz", d / "lesions.nii.gz"
        case = Case(case_id=d.name, ct=d / "ct.nii.gz", mri=mri if mri.exists() else None, label=d / "label.nii.gz",
                    lesions=les if les.exists() else None, source="phantom-dir", meta={"synthetic": True})
        truth = d / "truth.json"
        if truth.exists():
            try:
                doc = json.loads(truth.read_text(encoding="utf-8"))
                case.lesion_classes = classes_from_truth(doc)
                case.meta["truth"] = doc
            except ValueError as exc:
                case.meta["error"] = f"{truth}: not valid JSON ({exc})"
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset=f"phantoms {root}")
