"""`run_export`: a result folder -> planning formats, written atomically into OUT_DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from ..errors import InputError
from ..progress import Progress, as_progress

FORMATS = ("seg.nrrd", "nifti", "dicom-seg", "stl", "obj", "html")
_ALIASES = {"segnrrd": "seg.nrrd", "nrrd": "seg.nrrd", "nii": "nifti", "nii.gz": "nifti", "dicom": "dicom-seg",
            "seg": "dicom-seg", "dcm": "dicom-seg", "report": "html"}

PathLike = Union[str, Path]


def normalise_formats(formats: Union[str, Iterable[str]]) -> list[str]:
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for name in names:
        key = str(name).strip().lower()
        key = _ALIASES.get(key, key)
        if key not in FORMATS:
            raise InputError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise InputError("no export format given")
    return out


def run_export(
    result_dir: PathLike,
    out_dir: PathLike,
    formats: Union[str, Iterable[str]] = FORMATS,
    *,
    ct_dicom: Optional[PathLike] = None,
    coordinates: str = "LPS",
    deidentify: bool = False,
    overwrite: bool = False,
    progress: Union[Progress, str, None] = None,
) -> dict[str, list[Path]]:
    """Export a `livertumorai segment` result; returns the written paths by format (final locations).

    Surfaces default to LPS: 3D Slicer and most planning software read an untagged mesh as LPS.
    `progress` (a `Progress`, a mode name, or None for silence) gets a "read" stage, then one
    stage per format, named after it, as that format is written.
    """
    from ..io.atomic import atomic_output_dir
    from .result import load_result

    progress = as_progress(progress)
    wanted = normalise_formats(formats)
    if str(coordinates).upper() not in ("LPS", "RAS"):
        raise InputError(f"unknown coordinate system {coordinates!r}; use LPS or RAS")
    progress.stage("read", 0.0, f"reading {Path(result_dir).absolute().name}")
    data = load_result(result_dir, ct_dicom)
    written: dict[str, list[Path]] = {}
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        staging = Path(staging)
        for i, fmt in enumerate(wanted):
            progress.stage(fmt, i / len(wanted), f"writing {fmt}")
            written[fmt] = _export_one(fmt, data, staging, ct_dicom, coordinates, deidentify)
    final = Path(out_dir).absolute()
    return {k: [final / p.relative_to(staging) for p in v] for k, v in written.items()}


def _export_one(fmt: str, data, staging: Path, ct_dicom, coordinates: str, deidentify: bool) -> list[Path]:
    if fmt == "seg.nrrd":
        from .labelmap import write_seg_nrrd

        return write_seg_nrrd(data, staging)
    if fmt == "nifti":
        from .labelmap import write_nifti

        return write_nifti(data, staging)
    if fmt == "dicom-seg":
        from .dicom_seg import write_dicom_seg

        return write_dicom_seg(data, staging, ct_dicom=Path(ct_dicom) if ct_dicom else None, deidentify=deidentify)
    if fmt in ("stl", "obj"):
        from .surfaces import write_surfaces

        folder = staging / "surfaces"
        folder.mkdir(exist_ok=True)
        return write_surfaces(data, folder, fmt, coordinates)
    from .html_report import write_html

    return write_html(data, staging)
