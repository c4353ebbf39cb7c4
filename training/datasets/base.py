"""The `Case` record every dataset adapter returns, and the shared read/validate helpers.

Why lazy sources: a LiTS root is ~50 GB; adapters only list and check headers, and the
trainer (or `training.cache`) reads the pixels once. A source is a path (file or DICOM
folder), an in-memory `sitk.Image`, or a zero-argument callable returning one (used
where a label must be assembled, e.g. 3D-IRCADb masks or CHAOS PNG stacks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError
from LiverTumorAILib.io.image_io import probe_image

log = logging.getLogger("training.datasets")

ImageSource = Union[str, Path, sitk.Image, Callable[[], sitk.Image]]


@dataclass
class Case:
    """One training/evaluation case.

    label: uint8 0 background / 1 liver / 2 tumour on the CT grid (for MR-only CHAOS
    cases, on the MRI grid). ``labels_present`` says which classes the annotation
    actually covers, so CHAOS (liver only) is never read as "no tumour here".
    lesion_classes: {instance id: "benign" | "malignant"} where known.
    """

    case_id: str
    ct: Optional[ImageSource]
    label: Optional[ImageSource]
    mri: Optional[ImageSource] = None
    lesions: Optional[ImageSource] = None
    lesion_classes: Dict[int, str] = field(default_factory=dict)
    source: str = ""
    labels_present: Tuple[int, ...] = (0, 1, 2)
    meta: Dict[str, Any] = field(default_factory=dict)

    # -- loading ------------------------------------------------------------------
    def _load(self, what: str, src: Optional[ImageSource]) -> Optional[sitk.Image]:
        if src is None:
            return None
        try:
            if isinstance(src, sitk.Image):
                return src
            if callable(src):
                return src()
            return read_image(Path(src))
        except InputError as exc:
            if str(exc).startswith(f"case {self.case_id}"):
                raise
            raise InputError(f"case {self.case_id}: {what}: {exc}") from exc
        except (RuntimeError, OSError, ValueError) as exc:
            raise InputError(f"case {self.case_id}: {what} {src}: {_short(exc)}") from exc

    def load_ct(self) -> Optional[sitk.Image]:
        return self._load("ct", self.ct)

    def load_mri(self) -> Optional[sitk.Image]:
        return self._load("mri", self.mri)

    def load_label(self) -> Optional[sitk.Image]:
        img = self._load("label", self.label)
        if img is None:
            return None
        arr = sitk.GetArrayViewFromImage(img)
        bad = np.setdiff1d(np.unique(arr), [0, 1, 2])
        if bad.size:
            raise InputError(f"case {self.case_id}: label has values {bad.tolist()[:5]} outside 0/1/2")
        return sitk.Cast(img, sitk.sitkUInt8)

    def load_lesions(self) -> Optional[sitk.Image]:
        """Instance map; connected components of label == 2 when the dataset has none."""
        if self.lesions is not None:
            return self._load("lesions", self.lesions)
        label = self.load_label()
        if label is None or 2 not in self.labels_present:
            return None
        cc = sitk.ConnectedComponent(sitk.Equal(label, 2), True)
        return sitk.Cast(cc, sitk.sitkUInt16)

    def reference(self) -> Optional[sitk.Image]:
        """The image the label lives on (CT, or MRI for MR-only cases)."""
        return self.load_ct() if self.ct is not None else self.load_mri()

    # -- validation ---------------------------------------------------------------
    def check(self) -> None:
        """Cheap check (headers only for files): sources exist, are readable, grids agree."""
        if self.meta.get("error"):
            raise InputError(f"case {self.case_id}: {self.meta['error']}")
        sizes = {}
        for what in ("ct", "mri", "label", "lesions"):
            src = getattr(self, what)
            if src is None:
                continue
            size = _source_size(src)
            if size is not None:
                sizes[what] = size
        if self.ct is None and self.mri is None:
            raise InputError(f"case {self.case_id}: no image (neither CT nor MRI)")
        ref = "ct" if "ct" in sizes else "mri"
        for what in ("label", "lesions"):
            if what in sizes and ref in sizes and sizes[what] != sizes[ref]:
                raise InputError(
                    f"case {self.case_id}: {what} size {sizes[what]} differs from {ref} size {sizes[ref]}"
                )


class CaseList(list):
    """A list of cases that also remembers what was skipped (with why), so nothing is silent."""

    skipped: List[Tuple[str, str]]

    def __init__(self, items: Iterable[Case] = (), skipped: Optional[List[Tuple[str, str]]] = None):
        super().__init__(items)
        self.skipped = list(skipped or [])


def _short(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def dicom_files(folder: Path) -> List[str]:
    """File names of the largest DICOM series in FOLDER, in GDCM's (position) order."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    best: List[str] = []
    for sid in ids:
        names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
        if len(names) > len(best):
            best = names
    if not best:
        raise InputError(f"{folder}: no DICOM series found")
    if len(ids) > 1:
        log.info("%s: %d DICOM series, using the largest (%d slices)", folder, len(ids), len(best))
    return best


def read_image(path: Path) -> sitk.Image:
    """A file SimpleITK reads, or a DICOM folder (largest series)."""
    if not path.exists():
        raise InputError(f"{path}: not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_files(path))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image ({_short(exc)})") from exc


def _source_size(src: ImageSource) -> Optional[Tuple[int, ...]]:
    """Voxel size of a source without reading its pixels (the engine's header probe)."""
    if isinstance(src, sitk.Image):
        return tuple(src.GetSize())
    if callable(src):
        return None  # assembled lazily; its adapter checks the parts
    return probe_image(Path(src), "image").size


def finish(cases: Iterable[Case], *, skip_bad: bool = False, validate: bool = True,
           dataset: str = "") -> CaseList:
    """Validate each case; raise on the first bad one, or (skip_bad) log it and go on."""
    good: List[Case] = []
    skipped: List[Tuple[str, str]] = []
    for case in cases:
        try:
            if validate:
                case.check()
        except InputError as exc:
            msg = str(exc) if str(exc).startswith(f"case {case.case_id}") else f"case {case.case_id}: {exc}"
            if not skip_bad:
                raise InputError(msg) from exc
            log.warning("%s: skipping bad case: %s", dataset or "dataset", msg)
            skipped.append((case.case_id, msg))
            continue
        good.append(case)
    if skipped:
        log.warning("%s: %d case(s) skipped, %d usable", dataset or "dataset", len(skipped), len(good))
    return CaseList(good, skipped)


def copy_geometry(arr: np.ndarray, ref: sitk.Image, pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """numpy (z, y, x) array -> image with REF's grid."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return sitk.Cast(img, pixel)
