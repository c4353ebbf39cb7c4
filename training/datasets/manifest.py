"""A CSV manifest: one row per case, columns `ct,mri,label,lesion_classes` (+ optional
`case_id`, `lesions`). Paths are relative to the CSV's folder unless absolute; `mri`,
`lesions` and `lesion_classes` may be empty. lesion_classes reads "1:malignant;2:benign"
(instance id in the lesion map : class) -- the way to bring your own cohort.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, finish

CLASSES = ("benign", "malignant")


def parse_lesion_classes(text: str) -> Dict[int, str]:
    """"1:malignant;2:benign" -> {1: "malignant", 2: "benign"}; ValueError on anything else."""
    out: Dict[int, str] = {}
    for item in filter(None, (t.strip() for t in (text or "").replace(",", ";").split(";"))):
        key, sep, cls = item.partition(":")
        cls = cls.strip().lower()
        if not sep or not key.strip().isdigit() or cls not in CLASSES:
            raise ValueError(f"bad lesion_classes entry {item!r} (expected e.g. '1:malignant;2:benign')")
        out[int(key)] = cls
    return out


def load_manifest(csv_path: Path, *, skip_bad: bool = False, validate: bool = True) -> CaseList:
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot read manifest ({exc})") from exc
    if not rows:
        raise InputError(f"{csv_path}: manifest has no rows")
    cols = set(rows[0])
    if not {"ct", "label"} <= cols and not {"mri", "label"} <= cols:
        raise InputError(f"{csv_path}: manifest needs columns ct (or mri) and label; has {sorted(cols)}")

    def path(val: Optional[str]) -> Optional[Path]:
        val = (val or "").strip()
        if not val:
            return None
        p = Path(val)
        return p if p.is_absolute() else csv_path.parent / p

    cases = []
    for i, row in enumerate(rows, start=1):
        cid = (row.get("case_id") or "").strip() or f"row{i:03d}"
        case = Case(case_id=cid, ct=path(row.get("ct")), mri=path(row.get("mri")), label=path(row.get("label")),
                    lesions=path(row.get("lesions")), source=f"manifest:{csv_path.name}")
        try:
            case.lesion_classes = parse_lesion_classes(row.get("lesion_classes", ""))
        except ValueError as exc:
            case.meta["error"] = f"{csv_path} row {i}: {exc}"
        if case.label is None and not case.meta.get("error"):
            case.meta["error"] = f"{csv_path} row {i}: empty label column"
        cases.append(case)
    return finish(cases, skip_bad=skip_bad, validate=validate, dataset=str(csv_path))
