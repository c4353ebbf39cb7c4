"""Reading a `livertumorai segment` result folder for export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..scene import terminology as T
from ..scene.labels import merged_labels


@dataclass
class ResultData:
    """Everything the exporters need, already checked to lie on one grid."""

    folder: Path
    label: sitk.Image
    lesions: Optional[sitk.Image]
    report: dict
    ct_path: Optional[Path]
    merged: sitk.Image  # one value per segment, on the CT grid
    specs: list = field(default_factory=list)  # [(value, SegmentSpec)]
    _ct: Optional[sitk.Image] = None

    @property
    def ct(self) -> Optional[sitk.Image]:
        """The CT volume (read lazily: only the HTML report and derived DICOM need it)."""
        if self._ct is None and self.ct_path is not None and self.ct_path.exists():
            from ..io.image_io import read_image

            self._ct = read_image(self.ct_path, what="CT")
        return self._ct

    @property
    def synthetic(self) -> bool:
        return T.is_synthetic(self.report)


def _read(path: Path, what: str) -> sitk.Image:
    from ..io.image_io import read_image

    return read_image(path, what=what)


def load_result(result_dir: str | Path, ct_dicom: str | Path | None = None) -> ResultData:
    """Load segmentation.nii.gz, lesions.nii.gz and report.json; one clear InputError if unusable."""
    folder = Path(result_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: result folder not found")
    seg_path, report_path = folder / "segmentation.nii.gz", folder / "report.json"
    for p in (seg_path, report_path):
        if not p.is_file():
            raise InputError(f"{folder.name}: not a livertumorai result folder ({p.name} missing)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{report_path.name}: unreadable report ({exc})") from None
    if not isinstance(report, dict):
        raise InputError(f"{report_path.name}: report is not a JSON object")
    label = sitk.Cast(_read(seg_path, "segmentation"), sitk.sitkUInt8)
    values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
    if not values <= {0, 1, 2}:
        raise InputError(f"{seg_path.name}: labels {sorted(values)}; expected 0 background, 1 liver, 2 tumour")
    lesions = None
    if (folder / "lesions.nii.gz").is_file():
        lesions = sitk.Cast(_read(folder / "lesions.nii.gz", "lesion map"), sitk.sitkUInt16)
    array, specs = merged_labels(label, lesions, report.get("lesions") or ())
    merged = sitk.GetImageFromArray(array)
    merged.CopyInformation(label)
    ct_path = None
    if ct_dicom is not None:
        ct_path = Path(ct_dicom)
        if not ct_path.exists():
            raise InputError(f"{ct_path}: CT DICOM folder not found")
    else:
        recorded = (report.get("inputs") or {}).get("ct")
        if recorded:
            ct_path = Path(recorded) if Path(recorded).is_absolute() else folder / recorded
    return ResultData(folder, label, lesions, report, ct_path, merged, specs)
