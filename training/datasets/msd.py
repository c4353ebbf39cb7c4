"""Medical Segmentation Decathlon Task03_Liver: `dataset.json`, `imagesTr/`, `labelsTr/`.

Labels are 0 background / 1 liver / 2 cancer, i.e. already ours. dataset.json is the
source of truth for the pairs; without it, imagesTr/labelsTr are paired by file name.
macOS `._*` resource-fork files that ship in the official tar are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, finish


def _pairs(root: Path) -> List[Tuple[Path, Path]]:
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{meta}: not valid JSON ({exc})") from exc
        labels = {str(k): str(v).lower() for k, v in doc.get("labels", {}).items()}
        if labels and (labels.get("1") not in ("liver",) or "2" not in labels):
            raise InputError(f"{meta}: labels {labels} are not Task03_Liver's (1 liver, 2 cancer)")
        return [(root / e["image"], root / e["label"]) for e in doc.get("training", [])]
    images = sorted(p for p in (root / "imagesTr").glob("*.nii*") if not p.name.startswith("._"))
    return [(p, root / "labelsTr" / p.name) for p in images]


def load_msd(root: Path, *, skip_bad: bool = False, validate: bool = True) -> CaseList:
    root = Path(root)
    pairs = _pairs(root)
    if not pairs:
        raise InputError(f"{root}: no MSD training cases (dataset.json 'training' or imagesTr/)")
    cases = []
    for img, lab in pairs:
        cid = img.name.split(".")[0]
        case = Case(case_id=f"msd-{cid}", ct=img, label=lab, source="msd-task03")
        for p, what in ((img, "image"), (lab, "label")):
            if not p.exists():
                case.meta["error"] = f"{what} {p} not found"
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset="MSD Task03")
