"""DICOM SEG export with highdicom, referencing the source CT series.

A SEG must reference DICOM source images. A DICOM CT is used as is (in memory: an empty
SpecificCharacterSet is set to ISO_IR 100, which highdicom requires); a non-DICOM CT gets
a derived CT series written next to the SEG, and so does a DICOM CT whose files lack the
UIDs a reference needs (anonymisers that blank SOP/Study/Series UIDs), with a warning.
The mask is resampled (nearest neighbour) onto the DICOM frames, so the result grid and
the DICOM slice order need not agree.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..scene import terminology as T
from .result import ResultData

DUMMY_PATIENT_NAME = "ANONYMOUS^PATIENT"
DUMMY_PATIENT_ID = "ANON"
#: Patient/visit attributes blanked when de-identifying (PS3.15 basic profile, the ones CT carries).
_IDENTIFYING = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs",
    "OtherPatientNames", "OtherPatientIDsSequence", "EthnicGroup", "PatientComments", "AccessionNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "StudyID", "DeviceSerialNumber",
    "RequestingPhysician", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestAttributesSequence", "ReferencedStudySequence", "ReferencedPatientSequence",
]
_UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"]
#: UIDs shared by every frame of one source series (the SEG references them once).
_SERIES_UIDS = ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]

log = logging.getLogger(__name__)


def _dicom_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_ct_series(path: Path) -> list:
    """CT datasets of the largest series under `path`, sorted along the slice normal."""
    import pydicom

    by_series: dict[str, list] = {}
    for f in _dicom_files(path):
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not DICOM: skip (folders hold readmes, licences)
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if not by_series:
        raise InputError(f"{path}: no DICOM images with geometry found")
    series = max(by_series.values(), key=len)
    iop = np.array(series[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    series.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    for ds in series:
        if not str(ds.get("SpecificCharacterSet", "") or "").strip():
            ds.SpecificCharacterSet = "ISO_IR 100"
    return series


def frames_reference(series: Sequence) -> sitk.Image:
    """Empty ITK image whose voxels are exactly the pixels of the sorted DICOM frames."""
    first = series[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([ds.ImagePositionPatient for ds in series], dtype=float)
    gaps = np.diff(positions @ normal)
    dz = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1.0) or 1.0)
    if len(gaps) and (np.any(gaps <= 0) or np.ptp(gaps) > 0.01 * abs(dz) + 1e-3):
        raise InputError("CT DICOM series has irregular or duplicate slice positions")
    dy, dx = (float(v) for v in first.PixelSpacing)  # PixelSpacing = row spacing \ column spacing
    ref = sitk.Image([int(first.Columns), int(first.Rows), len(series)], sitk.sitkUInt8)
    ref.SetOrigin(tuple(positions[0]))
    ref.SetSpacing((dx, dy, abs(dz) or 1.0))
    ref.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    return ref


def _uid(ds: Any, keyword: str) -> str:
    """A UID attribute as text, '' when absent or blank."""
    return str(ds.get(keyword, "") or "").strip()


def source_series_problem(series: Sequence) -> Optional[str]:
    """Why `series` cannot be a DICOM SEG's source (None if it can).

    highdicom copies and references the source's SOP class, SOP instance, study, series and
    frame-of-reference UIDs; blank or malformed ones (some anonymisers write empty UIDs)
    make it fail deep inside with a bare KeyError, and would make the SEG unreadable anyway.
    """
    from pydicom.uid import UID

    bad: list[str] = []
    for keyword in ["SOPClassUID", "SOPInstanceUID", *_SERIES_UIDS]:
        values = [_uid(ds, keyword) for ds in series]
        if not all(v and UID(v).is_valid for v in values):
            bad.append(f"{'empty' if not all(values) else 'invalid'} {keyword}")
        elif keyword == "SOPClassUID" and any(UID(v).type != "SOP Class" for v in values):
            bad.append("unknown SOPClassUID")
        elif keyword == "SOPInstanceUID" and len(set(values)) != len(values):
            bad.append("repeated SOPInstanceUID")
        elif keyword in _SERIES_UIDS and len(set(values)) > 1:
            bad.append(f"more than one {keyword}")
    if any("PixelSpacing" not in ds or "Rows" not in ds or "Columns" not in ds for ds in series):
        bad.append("no PixelSpacing/Rows/Columns")
    return ", ".join(bad) or None


def deidentify_series(series: Sequence, out_folder: Path) -> list:
    """Copies of `series` with blank/dummy patient fields, no private tags, new UIDs; written out.
    Study / series dates and times are kept (and declared so): README "Limits"."""
    from pydicom.uid import generate_uid

    out_folder.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}
    result = []
    for i, src in enumerate(series):
        ds = src.copy()
        ds.remove_private_tags()
        for keyword in _IDENTIFYING:
            if keyword in ds:
                delattr(ds, keyword)
        ds.PatientName = DUMMY_PATIENT_NAME
        ds.PatientID = DUMMY_PATIENT_ID
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "LiverTumorAI: blank patient, no private tags, new UIDs"  # LO: 64 max
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"  # dates kept: a follow-up stays comparable
        for keyword in _UID_KEYWORDS:
            if keyword in ds:
                old = str(getattr(ds, keyword))
                mapping.setdefault(old, generate_uid())
                setattr(ds, keyword, mapping[old])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out_folder / f"CT{i + 1:04d}.dcm", enforce_file_format=True)
        result.append(ds)
    return result


def segment_descriptions(data: ResultData) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def concept(code: tuple) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])

    algorithm = hd.AlgorithmIdentificationSequence(
        name="LiverTumorAI", version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters={"models": T.model_tag(data.report)[:64]},
    )
    out = []
    for number, (_, spec) in enumerate(data.specs, start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=concept(spec.category),
            segmented_property_type=concept(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[concept(spec.anatomic_region)] if spec.anatomic_region else None,
            tracking_uid=hd.UID(),
            tracking_id=spec.name,
        ))
    return out


def frames_mask(data: ResultData, series: Sequence) -> np.ndarray:
    """(frames, rows, cols) segment numbers (1..N) aligned to the sorted DICOM frames."""
    ref = frames_reference(series)
    numbers = np.zeros(int(sitk.GetArrayViewFromImage(data.merged).max()) + 1, np.uint16)
    for number, (value, _) in enumerate(data.specs, start=1):
        numbers[value] = number
    on_frames = sitk.Resample(data.merged, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              data.merged.GetPixelID())
    return numbers[sitk.GetArrayFromImage(on_frames)]


def write_dicom_seg(
    data: ResultData,
    out_dir: Path,
    *,
    ct_dicom: Optional[Path] = None,
    deidentify: bool = False,
) -> list[Path]:
    """Write `segmentation.dcm` (+ `ct_dicom/` when a derived or de-identified CT is needed)."""
    import highdicom as hd

    if not data.specs:
        raise InputError("segmentation is empty: no segment to write as DICOM SEG")
    written: list[Path] = []
    source = ct_dicom or (data.ct_path if data.ct_path and _is_dicom(data.ct_path) else None)
    series: Optional[list] = None
    original: Optional[list] = None
    if source is not None:
        original = read_ct_series(Path(source))
        problem = source_series_problem(original)
        if problem is None:
            series = deidentify_series(original, out_dir / "ct_dicom") if deidentify else original
            if deidentify:
                written.append(out_dir / "ct_dicom")
        else:
            log.warning("%s: the CT DICOM files cannot be referenced by a DICOM SEG (%s); "
                        "the SEG references a derived CT series written to ct_dicom/ instead",
                        Path(source).name or str(source), problem)
    if series is None:
        _write_derived_ct(data, out_dir / "ct_dicom", deidentify, original)
        written.append(out_dir / "ct_dicom")
        series = read_ct_series(out_dir / "ct_dicom")
    mask = frames_mask(data, series)
    if not mask.any():
        raise InputError("segmentation does not overlap the CT DICOM series (different patient or grid?)")
    with warnings.catch_warnings():  # e.g. single-component PatientName in the source: its data, not ours
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, data, series, mask)
    path = out_dir / "segmentation.dcm"
    seg.save_as(path)
    return [path, *written]


def _write_derived_ct(data: ResultData, folder: Path, deidentify: bool, original: Optional[Sequence]) -> None:
    """The result's CT as a fresh DICOM series (new SOP UIDs) that a SEG can reference.

    From an unusable DICOM source (`original`), patient name/ID and the study and frame-of-
    reference UIDs that are valid are kept unless de-identifying, so the SEG stays with the
    patient and registers with the original CT.
    """
    from pydicom.uid import UID

    from ..io.dicom_series import write_dicom_series

    ct = data.ct
    if ct is None:
        raise InputError("DICOM SEG needs the CT: the CT recorded in report.json is missing; "
                         "pass the CT DICOM series with --ct-dicom")
    kwargs: dict = {}
    if deidentify:
        kwargs = {"patient": DUMMY_PATIENT_NAME, "patient_id": DUMMY_PATIENT_ID}
    elif original:
        first = original[0]
        kwargs = {"patient": str(first.get("PatientName", "") or ""), "patient_id": str(first.get("PatientID", "") or "")}
        for keyword, arg in (("StudyInstanceUID", "study_uid"), ("FrameOfReferenceUID", "frame_of_reference_uid")):
            values = {_uid(ds, keyword) for ds in original}
            if len(values) == 1 and UID(next(iter(values))).is_valid:
                kwargs[arg] = next(iter(values))
    write_dicom_series(ct, folder, series_description="LiverTumorAI derived CT", **kwargs)


def _segmentation(hd, data: ResultData, series: Sequence, mask: np.ndarray):
    return hd.seg.Segmentation(
        source_images=list(series),
        pixel_array=mask.astype(np.uint8 if len(data.specs) < 255 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(data),
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="LiverTumorAI",
        manufacturer_model_name="LiverTumorAI",
        software_versions=__version__,
        device_serial_number="0",
        series_description="LiverTumorAI segmentation" + (" (synthetic demo weights)" if data.synthetic else ""),
        content_label="LIVERTUMORAI",
        content_description=T.model_tag(data.report)[:64],
    )


def _is_dicom(path: Path) -> bool:
    """A folder of DICOM files, or one DICOM file (the preamble says so)."""
    path = Path(path)
    probe = path if path.is_file() else next((p for p in _dicom_files(path)), None) if path.is_dir() else None
    if probe is None:
        return False
    try:
        with open(probe, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
