"""Dataset adapters: every source becomes a list of `Case` records.

`load_dataset(spec)` is what `livertumorai-train --data SPEC` calls. SPEC is
`phantom:N`, a phantom folder, a LiTS / MSD Task03 / 3D-IRCADb / CHAOS root
(auto-detected, or forced with ``fmt``), or a CSV manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from LiverTumorAILib.errors import InputError

from .base import Case, CaseList, read_image
from .chaos import load_chaos
from .ircadb import load_ircadb
from .lits import load_lits
from .manifest import load_manifest, parse_lesion_classes
from .msd import load_msd
from .phantom import load_phantom_dir, phantom_cases

FORMATS = ("phantom", "lits", "msd", "ircadb", "chaos-ct", "chaos-mr", "manifest")

__all__ = ["Case", "CaseList", "FORMATS", "detect_format", "load_dataset", "load_chaos", "load_ircadb",
           "load_lits", "load_manifest", "load_msd", "load_phantom_dir", "parse_lesion_classes",
           "phantom_cases", "read_image"]


def detect_format(path: Path) -> str:
    """Guess a dataset root's format from its layout (cheap: names only, bounded depth)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise InputError(f"{path}: a file; expected a dataset folder or a .csv manifest")
    if not path.is_dir():
        raise InputError(f"{path}: not found")
    names = {p.name for p in path.iterdir()}
    if "dataset.json" in names or "imagesTr" in names:
        return "msd"
    if "Train_Sets" in names or ({"CT", "MR"} & names and (path / "CT").is_dir()):
        return "chaos-ct"
    if path.name.lower().startswith("3dircadb") or any(n.lower().startswith("3dircadb") for n in names):
        return "ircadb"
    if (path / "label.nii.gz").exists() or any((path / n / "label.nii.gz").exists() for n in names):
        return "phantom"
    for depth in ("*", "*/*"):
        if any(p.name.startswith("volume-") and ".nii" in p.name for p in path.glob(depth)):
            return "lits"
    raise InputError(f"{path}: cannot tell the dataset format (LiTS, MSD, 3D-IRCADb, CHAOS, phantoms); "
                     f"pass --format")


def load_dataset(spec: str, *, fmt: Optional[str] = None, skip_bad: bool = False, seed: int = 0,
                 validate: bool = True, **kwargs: Any) -> CaseList:
    """Cases from SPEC (see module docstring). kwargs go to the adapter (e.g. phantom size)."""
    if str(spec).startswith("phantom:"):
        try:
            n = int(str(spec).split(":", 1)[1])
        except ValueError as exc:
            raise InputError(f"{spec}: expected phantom:N with an integer N") from exc
        return phantom_cases(n, seed=seed, **kwargs)
    path = Path(spec).expanduser()
    fmt = fmt or detect_format(path)
    common = dict(skip_bad=skip_bad, validate=validate)
    if fmt == "phantom":
        return load_phantom_dir(path, **common)
    if fmt == "lits":
        return load_lits(path, **common)
    if fmt == "msd":
        return load_msd(path, **common)
    if fmt == "ircadb":
        return load_ircadb(path, **common, **kwargs)
    if fmt in ("chaos", "chaos-ct"):
        return load_chaos(path, modality="CT", **common)
    if fmt == "chaos-mr":
        return load_chaos(path, modality="MR", **common, **kwargs)
    if fmt == "manifest":
        return load_manifest(path, **common)
    raise InputError(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
