"""Write a 3D CT volume as a DICOM CT series (one file per slice).

Used by tests and to make DICOM SEG possible from NIfTI input (a SEG must reference source
DICOM images). Geometry is written slice by slice from the ITK image (ITK and DICOM are
both LPS), so reading the series back gives the same voxels at the same physical points.
Note: DICOM can only describe right-handed slice stacks (the slice normal is row x column),
so a left-handed (mirrored) volume reads back with its slice order reversed, physically
identical.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError, OutputError
from LiverTumorAILib.io.atomic import atomic_file

_INT16 = np.iinfo(np.int16)


def _ds(value: float) -> str:
    """A DICOM Decimal String (max 16 characters) as precise as it allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _rescale(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values plus slope/intercept that give back HU (exactly for whole numbers)."""
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("CT volume contains NaN or infinite values; cannot write DICOM")
    whole = np.issubdtype(arr.dtype, np.integer) or bool(np.all(np.mod(arr, 1) == 0))
    if whole and lo >= _INT16.min and hi <= _INT16.max:
        return arr.astype(np.int16), 1.0, 0.0
    if whole and hi - lo <= _INT16.max - _INT16.min:
        intercept = lo - _INT16.min
        return (arr - intercept).astype(np.int16), 1.0, intercept
    slope = (hi - lo) / float(_INT16.max - _INT16.min) or 1.0
    intercept = lo - _INT16.min * slope
    stored = np.clip(np.round((arr - intercept) / slope), _INT16.min, _INT16.max).astype(np.int16)
    return stored, float(slope), float(intercept)


def write_dicom_series(
    image: sitk.Image,
    folder: Union[str, os.PathLike],
    *,
    patient: str = "LIVERTUMORAI^PHANTOM",
    patient_id: str = "LTAI0001",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    frame_of_reference_uid: Optional[str] = None,
    series_description: str = "LiverTumorAI CT",
    series_number: int = 1,
) -> List[Path]:
    """Write `image` (3D, greyscale, HU) to `folder` as CT Image Storage files, one per slice.

    Returns the file paths in slice order. UIDs are generated when not given; all slices
    share Study/Series/FrameOfReference UIDs.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("CT volume must be 3D greyscale to be written as DICOM")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder.name}: cannot create DICOM folder ({e.strerror or e})") from None

    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    stored, slope, intercept = _rescale(arr)
    nz, ny, nx = arr.shape
    sx, sy, sz = image.GetSpacing()
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    row_dir, col_dir = d[:, 0], d[:, 1]  # x axis runs along a row, y axis down a column
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    normal = np.cross(row_dir, col_dir)
    center, width = (40.0, 400.0)

    paths: List[Path] = []
    for k in range(nz):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "LiverTumorAI"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "LiverTumorAI"
        ds.SeriesDescription = series_description
        ds.PatientName = patient
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.KVP = ""
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = [_ds(v) for v in list(row_dir) + list(col_dir)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(np.dot(pos, normal)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows), column spacing
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"IM{k + 1:05d}.dcm"
        with atomic_file(path, "DICOM file") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
