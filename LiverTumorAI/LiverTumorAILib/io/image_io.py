"""Reading and writing medical images with exact geometry and early, readable validation.

Every expected problem with an input becomes an `InputError` whose message is one line,
"<file name>: <problem>", written for the radiologist who picked the file. Sizes, pixel type
and spacing are checked from the header *before* pixels are loaded, so a crafted or
damaged header claiming a gigantic volume is refused without allocating memory.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError, OutputError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Limits for a plausible abdominal volume; beyond them the file is refused before loading.
MAX_INPLANE = 2048
MAX_SLICES = 4000
MAX_VOXELS = 2**31
#: Voxel spacing outside this range (mm) is a broken header, not a real scan.
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0

#: CT check: a CT in Hounsfield units always shows air (outside the body, lungs, bowel gas)
#: at about -1000 HU. If fewer than this fraction of voxels is below AIR_THRESHOLD_HU, the
#: image is not a CT in HU (an MRI, or a CT stored without its rescale).
AIR_THRESHOLD_HU = -500.0
MIN_AIR_FRACTION = 1e-4
#: MRI check (`check_mri_intensities`): a CT in HU has both air (<= -900 HU) and fat
#: (-200..-30 HU); MR intensities are >= 0 or barely below (normalised, or noise).
CT_AIR_HU = -900.0
CT_FAT_HU = (-200.0, -30.0)
#: fractions of voxels from which an image "given as the MRI" is taken for a CT in HU
CT_MIN_AIR_FRACTION = 0.01
CT_MIN_FAT_FRACTION = 0.02

#: `what=` names of label images (segmentation, lesion instance map): these may legitimately be
#: constant (a result with no lesions is all 0), so the blank-image check skips them.
LABEL_KINDS = frozenset({"segmentation", "label", "labelmap", "label map", "seg", "mask", "lesion map",
                         "lesions"})


@dataclass
class LoadedImage:
    """An image plus where it came from (which DICOM series, which files)."""

    image: Optional[sitk.Image]  # None only from probe_image (header-only)
    path: Path
    message: str
    files: List[Path] = field(default_factory=list)
    series_uid: str = ""
    series_description: str = ""
    other_series: List[Tuple[str, int]] = field(default_factory=list)
    size: Tuple[int, ...] = ()  # (x, y, z) voxels, also known to a header-only probe


_CAPTURE_NATIVE_STDERR = False


def capture_native_stderr(enabled: bool = True) -> None:
    """Route what ITK/NIfTI/MetaIO print straight to file descriptor 2 ("** ERROR: ...") into
    the debug log while reading. The CLI turns this on to keep its one-line error contract;
    it is process-wide, so it stays off for in-process use (e.g. inside Slicer)."""
    global _CAPTURE_NATIVE_STDERR
    _CAPTURE_NATIVE_STDERR = enabled


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's stderr warnings (e.g. "No Series were found" while scanning folders),
    which would break the CLI's one-line error contract; problems are raised as InputError."""
    import sys
    import tempfile

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    saved, sink = None, None
    if _CAPTURE_NATIVE_STDERR:
        try:
            sys.stderr.flush()
            sink = tempfile.TemporaryFile()
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            saved = None
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
        if saved is not None and sink is not None:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(4000).decode("utf-8", "replace").strip()
            if text:
                log.debug("native reader messages: %s", " | ".join(text.splitlines()))
        if sink is not None:
            sink.close()


def _name(path: Path) -> str:
    return path.name or str(path)


def _sitk_reason(err: BaseException) -> str:
    """The useful part of a SimpleITK/ITK error, without C++ file names and object addresses."""
    import re

    lines = [ln.strip() for ln in str(err).strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Exception thrown")
             and not ln.startswith("Reason: No such file")]  # stale errno, not the cause
    text = " ".join(lines) or "unknown error"
    text = re.sub(r"(ITK ERROR|sitk::ERROR):\s*", "", text)
    text = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    return text[:200]


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


# --------------------------------------------------------------------------- header checks


def _check_header(name: str, dim: int, size: Sequence[int], spacing: Sequence[float], components: int,
                  pixel_id: int, direction: Sequence[float]) -> None:
    """Refuse anything that is not a plausible greyscale 3D volume, using only the header."""
    if components > 1:
        kind = "RGB colour" if components in (3, 4) else "vector"
        raise InputError(f"{name}: image has {components} values per voxel ({kind} image); "
                         "a greyscale volume is needed")
    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{name}: image has complex-valued voxels; a greyscale volume is needed")
    if any(int(s) == 0 for s in size):
        raise InputError(f"{name}: image is empty (size {_fmt_size(size)})")
    if dim < 3 or (dim == 3 and int(size[2]) == 1):
        raise InputError(f"{name}: image is 2D ({_fmt_size(size[:2])}); a 3D volume is needed")
    if dim > 3:
        raise InputError(f"{name}: image is {dim}D ({_fmt_size(size)}); a single 3D volume is needed "
                         "(time series and multi-volume files are not supported)")
    if max(int(size[0]), int(size[1])) > MAX_INPLANE or int(size[2]) > MAX_SLICES or \
            math.prod(int(s) for s in size) > MAX_VOXELS:
        raise InputError(f"{name}: image size {_fmt_size(size)} is implausibly large (limit "
                         f"{MAX_INPLANE}x{MAX_INPLANE}x{MAX_SLICES}); the header is probably damaged")
    for s in spacing:
        if not math.isfinite(s) or s <= 0:
            raise InputError(f"{name}: voxel spacing {_fmt_spacing(spacing)} mm is invalid (must be positive)")
        if s < MIN_SPACING_MM or s > MAX_SPACING_MM:
            raise InputError(f"{name}: voxel spacing {_fmt_spacing(spacing)} mm is implausible "
                             f"(expected {MIN_SPACING_MM}..{MAX_SPACING_MM} mm)")
    d = np.asarray(direction, dtype=float)
    if d.size == 9:
        d = d.reshape(3, 3)
        if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
            raise InputError(f"{name}: image orientation (direction matrix) is invalid")


def _fmt_spacing(spacing: Sequence[float]) -> str:
    return " x ".join(f"{s:g}" for s in spacing)


def _check_pixels(name: str, image: sitk.Image, what: str) -> None:
    """After loading: refuse NaN/Inf and (for intensity images) a blank, constant volume."""
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        for z in range(0, arr.shape[0], 16):  # chunks: no full-size boolean temporary
            chunk = arr[z:z + 16]
            if not np.isfinite(chunk).all():
                bad = int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
                raise InputError(f"{name}: image contains invalid voxel values (NaN or infinity, "
                                 f"{bad}+ voxels); the file is damaged or was exported incorrectly")
    if what.strip().lower() not in LABEL_KINDS:
        lo, hi = arr.min(), arr.max()
        if lo == hi:
            raise InputError(f"{name}: every voxel has the same value ({lo:g}); the image is blank")


_BYTES_PER_VOXEL = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
                    sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4}
#: Deflate (gzip/zlib) cannot compress better than ~1032:1, so a file claiming more raw bytes
#: than this times its size has a damaged header.
_MAX_DEFLATE_RATIO = 1100
#: Optional hard cap on one input's pixel memory (GB), e.g. for servers and fuzzing.
MAX_IMAGE_GB_ENV = "LIVERTUMORAI_MAX_IMAGE_GB"


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(0.75 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory_budget(name: str, path: Optional[Path], size: Sequence[int], pixel_id: int) -> None:
    """Before allocating: does the claimed volume fit the file and this computer's memory?"""
    need = math.prod(int(s) for s in size) * _BYTES_PER_VOXEL.get(pixel_id, 8)
    ratio = _max_expansion(path) if path is not None and path.is_file() else None
    if ratio is not None:
        have = path.stat().st_size
        if need > ratio * have + 65536:
            raise InputError(f"{name}: header claims a {_fmt_size(size)} volume ({need / 2**20:.0f} MB) but the file "
                             f"holds only {have / 2**20:.1f} MB; the file is truncated or its header is damaged")
    cap = os.environ.get(MAX_IMAGE_GB_ENV, "")
    try:
        limit = float(cap) * 2**30 if cap else None
    except ValueError:
        limit = None
    avail = _available_memory()
    if avail is not None:
        limit = min(limit, 0.8 * avail) if limit is not None else 0.8 * avail
    if limit is not None and need > limit:
        raise InputError(f"{name}: a {_fmt_size(size)} volume needs {need / 2**30:.1f} GB of memory, more than "
                         f"is available ({limit / 2**30:.1f} GB)")


def _max_expansion(path: Path) -> Optional[float]:
    """How many pixel bytes one byte of this file can hold at most (None: unknown, e.g. bzip2
    or data in another file): 1 for raw, ~1 voxel per byte for ASCII, 1100 for deflate."""
    lower = path.name.lower()
    if lower.endswith(".nii"):
        return 1.0
    if lower.endswith(".nii.gz"):
        return _MAX_DEFLATE_RATIO
    if lower.endswith((".nrrd", ".mha")):
        try:
            with open(path, "rb") as f:
                head = f.read(4096).decode("latin-1").lower()
        except OSError:
            return None
        lines = head.splitlines()
        if lower.endswith(".nrrd"):
            if any(ln.startswith(("data file:", "datafile:")) for ln in lines):
                return None
            enc = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("encoding:")]
            return {"raw": 1.0, "gzip": _MAX_DEFLATE_RATIO, "gz": _MAX_DEFLATE_RATIO,
                    "ascii": 8.0, "txt": 8.0, "text": 8.0}.get(enc[0] if enc else "", None)
        flat = " ".join(head.split())
        if "elementdatafile = local" not in flat:
            return None
        return _MAX_DEFLATE_RATIO if "compresseddata = true" in flat else 1.0
    return None


# --------------------------------------------------------------------------- MetaImage header


def _metaimage_checks(path: Path, name: str) -> None:
    """ITK's MetaImage reader crashes the whole process (segfault) on some damaged headers,
    e.g. a huge NDims, so the key fields are checked here first."""
    if not path.name.lower().endswith((".mha", ".mhd")):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("latin-1")
    except OSError:
        return
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        fields.setdefault(key, value.strip())
        if key == "elementdatafile":
            break
    try:
        ndims = int(fields.get("ndims", "3"))
        dims = [int(v) for v in fields.get("dimsize", "1 1 1").split()]
        spacing = [float(v) for v in fields.get("elementspacing", fields.get("elementsize", "1 1 1")).split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise InputError(f"{name}: MetaImage header is damaged (a number cannot be read)") from None
    if not 1 <= ndims <= 4 or len(dims) != ndims or any(d < 0 for d in dims) or len(spacing) < ndims \
            or not 1 <= channels <= 64:
        raise InputError(f"{name}: MetaImage header is damaged (NDims {fields.get('ndims')}, "
                         f"DimSize {fields.get('dimsize')})")


# --------------------------------------------------------------------------- NIfTI raw checks

_NIFTI_FLOAT_TYPES = {16: "<f4", 64: "<f8"}


def _nifti_header(path: Path, name: str) -> Optional[tuple]:
    """Check a NIfTI-1 header before ITK sees it: ITK hangs on some damaged orientation
    fields (invalid qform/sform codes with huge quaternion values), and silently replaces a
    zero/NaN pixdim by 1 mm. Returns what `_nifti_data_checks` needs, or None (not NIfTI-1)."""
    import gzip
    import struct
    import zlib

    lower = path.name.lower()
    gz = lower.endswith(".nii.gz")
    if not (gz or lower.endswith(".nii")):
        return None
    if gz:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise InputError(f"{name}: not an image file that can be read (named .nii.gz but not "
                                 "gzip-compressed NIfTI)")
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            hdr = f.read(348)
    except (OSError, EOFError, zlib.error):
        raise InputError(f"{name}: file is truncated or damaged (NIfTI header cannot be read)") from None
    if len(hdr) < 348:
        raise InputError(f"{name}: file is truncated (NIfTI header incomplete)")
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", hdr[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or not NIfTI: leave it to ITK
    dims = struct.unpack(endian + "8h", hdr[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", hdr[70:74])
    pixdim = struct.unpack(endian + "8f", hdr[76:108])
    offset = struct.unpack(endian + "f", hdr[108:112])[0]
    if not math.isfinite(offset) or offset < 0 or offset > 2**31:
        raise InputError(f"{name}: NIfTI header is damaged (invalid data offset {offset:g})")
    vox_offset = int(offset)
    ndim = max(1, min(int(dims[0]), 7))
    spatial = [float(pixdim[i]) for i in range(1, min(ndim, 3) + 1)]
    if any(not math.isfinite(v) or v <= 0 for v in spatial):
        raise InputError(f"{name}: voxel spacing in the header ({_fmt_spacing(spatial)} mm) is invalid "
                         "(must be positive)")
    qform_code, sform_code = struct.unpack(endian + "2h", hdr[252:256])
    quatern = struct.unpack(endian + "6f", hdr[256:280])
    srow = struct.unpack(endian + "12f", hdr[280:328])
    if not (0 <= qform_code <= 5 and 0 <= sform_code <= 5):
        raise InputError(f"{name}: NIfTI header is damaged (orientation codes {qform_code}/{sform_code})")
    bad_q = qform_code > 0 and (any(not math.isfinite(v) or abs(v) > 1e6 for v in quatern)
                                or sum(v * v for v in quatern[:3]) > 1.001)
    bad_s = sform_code > 0 and any(not math.isfinite(v) or abs(v) > 1e6 for v in srow)
    if bad_q or bad_s:
        raise InputError(f"{name}: NIfTI header is damaged (invalid orientation/position values)")
    return gz, endian, dims, datatype, bitpix, vox_offset, ndim


def _nifti_data_checks(path: Path, name: str, info: Optional[tuple]) -> None:
    """What ITK's NIfTI reader lets through silently: a truncated file (the missing voxels
    come back as zeros) and NaN voxels (replaced by 0). Streams the data only for .nii.gz
    files whose gzip trailer disagrees with the header, and for float files (NaN scan)."""
    import gzip
    import struct
    import zlib

    if info is None:
        return
    gz, endian, dims, datatype, bitpix, vox_offset, ndim = info
    nvox = math.prod(max(int(d), 1) for d in dims[1:ndim + 1])
    expected = max(vox_offset, 348) + nvox * max(int(bitpix), 8) // 8
    if not gz:
        if path.stat().st_size < expected:
            raise InputError(f"{name}: file is truncated ({path.stat().st_size} of {expected} bytes); "
                             "copy or download it again")
        if datatype not in _NIFTI_FLOAT_TYPES:
            return
    else:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize == expected % 2**32 and datatype not in _NIFTI_FLOAT_TYPES:
            return
    dtype = np.dtype(_NIFTI_FLOAT_TYPES.get(datatype, "u1")).newbyteorder(endian)
    total, bad, pending = 0, 0, b""
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            f.seek(max(vox_offset, 348))
            total = max(vox_offset, 348)
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
                if datatype in _NIFTI_FLOAT_TYPES:
                    buf = pending + chunk
                    usable = len(buf) - len(buf) % dtype.itemsize
                    pending = buf[usable:]
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:usable], dtype))))
    except (OSError, EOFError, zlib.error):
        raise InputError(f"{name}: file is truncated or damaged (compressed data ends early); "
                         "copy or download it again") from None
    if total < expected:
        raise InputError(f"{name}: file is truncated ({total} of {expected} bytes of image data); "
                         "copy or download it again")
    if bad:
        raise InputError(f"{name}: image contains invalid voxel values (NaN or infinity, {bad} voxels); "
                         "the file is damaged or was exported incorrectly")


# --------------------------------------------------------------------------- DICOM folders


def _dicom_series(folder: Path) -> List[Tuple[str, List[str], Path]]:
    """(series UID, sorted files, folder) for every DICOM series in folder (or, if it only
    holds subfolders, one level below)."""
    def scan(d: Path) -> List[Tuple[str, List[str], Path]]:
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
        except RuntimeError:
            return []
        return [(uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid)), d) for uid in ids]

    found = scan(folder)
    if not found:
        try:
            subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            subdirs = []
        for sub in subdirs:
            found.extend(scan(sub))
    return [s for s in found if s[1]]


def _read_dicom_folder(folder: Path, what: str, pixels: bool = True) -> LoadedImage:
    name = _name(folder)
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise InputError(f"{name}: folder cannot be read ({e.strerror or e})") from None
    series = _dicom_series(folder)
    if not series:
        files = [p.name for p in entries if p.is_file() and not p.name.startswith(".")]
        if not files:
            raise InputError(f"{name}: folder is empty; give an image file or a folder of DICOM files")
        hint = ", ".join(sorted(files)[:3]) + (", ..." if len(files) > 3 else "")
        raise InputError(f"{name}: folder contains no DICOM image series ({len(files)} other files: {hint}); "
                         "give the image file itself or a folder of DICOM files")
    series.sort(key=lambda s: len(s[1]), reverse=True)
    uid, files, where = series[0]
    return _read_dicom_files(folder, uid, files, where, what,
                             others=[(u, len(f)) for u, f, _ in series[1:]], pixels=pixels)


def _check_slice_positions(name: str, reader: sitk.ImageSeriesReader, n: int, image: sitk.Image) -> None:
    """A slice that GDCM could not parse is silently left out of the series, leaving a gap
    that would stretch the anatomy; refuse series whose slices are not evenly spaced."""
    normal = np.array(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    pos = []
    for i in range(n):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return
        try:
            pos.append(float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)))
        except ValueError:
            return
    steps = np.diff(np.sort(np.asarray(pos)))
    if np.any(steps < 1e-3):
        raise InputError(f"{name}: DICOM series has several slices at the same position "
                         "(more than one acquisition in one series?)")
    typical = float(np.median(steps))
    odd = np.flatnonzero(np.abs(steps - typical) > max(0.01, 0.01 * typical))
    if odd.size:
        k = int(odd[0])
        raise InputError(f"{name}: DICOM slices are unevenly spaced ({steps[k]:.2f} mm between slices "
                         f"{k + 1} and {k + 2}, {typical:.2f} mm elsewhere); a slice is missing or damaged")


def _read_dicom_files(shown: Path, uid: str, files: List[str], where: Path, what: str,
                      others: List[Tuple[str, int]], pixels: bool = True) -> LoadedImage:
    name = _name(shown)
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    try:
        info.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{name}: DICOM file {Path(files[0]).name} cannot be read ({_sitk_reason(e)})") from None
    desc = info.GetMetaData("0008|103e").strip() if info.HasMetaDataKey("0008|103e") else ""
    modality = info.GetMetaData("0008|0060").strip() if info.HasMetaDataKey("0008|0060") else ""
    size = list(info.GetSize())
    if len(size) == 3 and size[2] > 1 and len(files) == 1:
        pass  # one multi-frame file: a whole volume
    else:
        size = [size[0], size[1], len(files)]
    spacing = list(info.GetSpacing())
    if len(files) == 1 and size[2] == 1:
        raise InputError(f"{name}: DICOM series {desc or uid or '(unnamed)'} has only one slice; "
                         "a 3D volume is needed")
    _check_header(name, 3, size, spacing[:2] + [1.0], info.GetNumberOfComponents(), info.GetPixelID(),
                  info.GetDirection())
    if not pixels:
        return LoadedImage(image=None, path=shown, message=f"{name}: DICOM series, {len(files)} files",
                           files=[Path(f) for f in files], series_uid=uid, series_description=desc,
                           other_series=others, size=tuple(int(v) for v in size))
    _check_memory_budget(name, None, size, info.GetPixelID())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{name}: DICOM series cannot be read; a file is damaged or incomplete "
                         f"({_sitk_reason(e)})") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to load a {_fmt_size(size)} volume") from None
    _check_header(name, image.GetDimension(), image.GetSize(), image.GetSpacing(),
                  image.GetNumberOfComponentsPerPixel(), image.GetPixelID(), image.GetDirection())
    if len(files) > 1:
        _check_slice_positions(name, reader, len(files), image)
    _check_pixels(name, image, what)
    label = f"'{desc}'" if desc else (uid or "(no series UID)")
    msg = (f"{name}: read {what} DICOM series {label} ({modality or 'unknown modality'}, {len(files)} files, "
           f"{_fmt_size(image.GetSize())})")
    if where != shown:
        msg += f" from subfolder {where.name}"
    if others:
        msg += f"; ignored {len(others)} other series in the folder (" + ", ".join(
            f"{n} files" for _, n in others[:5]) + ")"
    return LoadedImage(image=image, path=shown, message=msg, files=[Path(f) for f in files],
                       series_uid=uid, series_description=desc, other_series=others)


# --------------------------------------------------------------------------- public API


def load_image(path: PathLike, what: str = "CT") -> LoadedImage:
    """Read and validate a 3D image file or DICOM folder; also says what was read.

    `what` ("CT", "MRI", "segmentation", ...) appears in messages; label kinds may be constant.
    """
    with quiet_itk():
        loaded = _load_image(Path(path), what)
    log.info(loaded.message)  # outside quiet_itk: may be printed on stderr by the CLI
    return loaded


def probe_image(path: PathLike, what: str = "CT") -> LoadedImage:
    """Header-only validation (no pixels loaded): lets the CLI refuse a bad input in a
    fraction of a second, before the models are loaded; returns the size and source files
    (``image`` is None). `read_image` repeats all checks."""
    with quiet_itk():
        return _load_image(Path(path), what, pixels=False)


def _load_image(path: Path, what: str, pixels: bool = True) -> LoadedImage:
    name = _name(path)
    if not path.exists():
        raise InputError(f"{name}: file or folder not found ({path})")
    if path.is_dir():
        return _read_dicom_folder(path, what, pixels)
    if not os.access(path, os.R_OK):
        raise InputError(f"{name}: file cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{name}: file is empty (0 bytes)")
    _metaimage_checks(path, name)
    nifti = _nifti_header(path, name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{name}: not an image file that can be read (NIfTI, NRRD, MHA, DICOM, ...) "
                         f"or its header is damaged ({_sitk_reason(e)})") from None
    dim, size = reader.GetDimension(), list(reader.GetSize())
    # A single DICOM slice of a series: read the whole series it belongs to.
    if reader.HasMetaDataKey("0020|000e") and dim == 3 and size[2] == 1:
        uid = reader.GetMetaData("0020|000e").strip()
        try:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid))
        except RuntimeError:
            files = []
        if len(files) > 1 and str(path.resolve()) in {str(Path(f).resolve()) for f in files}:
            return _read_dicom_files(path.parent, uid, files, path.parent, what, others=[], pixels=pixels)
    if dim == 4 and size[3] == 1:  # NIfTI with a singleton time axis: a plain 3D volume
        reader.SetExtractSize(size[:3] + [0])
        dim, size = 3, size[:3]
    _check_header(name, dim, size, list(reader.GetSpacing())[:dim], reader.GetNumberOfComponents(),
                  reader.GetPixelID(), reader.GetDirection() if dim == 3 else ())
    if not pixels:
        return LoadedImage(image=None, path=path, message=f"{name}: {_fmt_size(size)}", files=[path],
                           size=tuple(int(v) for v in size))
    _check_memory_budget(name, path, size, reader.GetPixelID())
    _nifti_data_checks(path, name, nifti)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{name}: file is truncated or damaged; the image data cannot be read "
                         f"({_sitk_reason(e)})") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to load a {_fmt_size(size)} volume") from None
    _check_header(name, image.GetDimension(), image.GetSize(), image.GetSpacing(),
                  image.GetNumberOfComponentsPerPixel(), image.GetPixelID(), image.GetDirection())
    _check_pixels(name, image, what)
    msg = f"{name}: read {what} {_fmt_size(image.GetSize())}, spacing {_fmt_spacing(image.GetSpacing())} mm"
    return LoadedImage(image=image, path=path, message=msg, files=[path])


def read_image(path: PathLike, what: str = "CT") -> sitk.Image:
    """Read a 3D image (any SimpleITK file, or a DICOM folder: its largest series) with exact geometry."""
    return load_image(path, what).image


def check_ct_intensities(image: sitk.Image, path: PathLike) -> None:
    """Refuse an image that is not a CT in Hounsfield units (typically an MRI given as the CT).

    Rule: a CT in HU always contains air (outside the body, lungs, bowel gas) at about -1000 HU.
    If fewer than 0.01% of voxels are below -500 HU, the image is an MRI (arbitrary positive
    intensities, or normalised values) or a CT stored without its rescale slope/intercept.
    """
    name = _name(Path(path))
    sample = _intensity_sample(image)
    air = float(np.count_nonzero(sample < AIR_THRESHOLD_HU)) / max(sample.size, 1)
    if air < MIN_AIR_FRACTION:
        lo, hi = float(sample.min()), float(sample.max())
        raise InputError(f"{name}: does not look like a CT in Hounsfield units (values {lo:g} to {hi:g}, "
                         f"no air below {AIR_THRESHOLD_HU:g} HU); is this an MRI? Give an MRI with --mri")


def _intensity_sample(image: sitk.Image) -> np.ndarray:
    """About 2 million voxels (every n-th along each axis) as float32: enough for the
    intensity checks' fractions, without a float copy of a long scan."""
    arr = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((arr.size / 2_000_000) ** (1 / 3))))
    return np.asarray(arr[::step, ::step, ::step], dtype=np.float32)


def check_mri_intensities(image: sitk.Image, path: PathLike) -> None:
    """Refuse an image given as the MRI whose values are Hounsfield units (a CT given as --mri).

    Rule: at least 1% of voxels at air (<= -900 HU) *and* at least 2% in the fat range
    (-200..-30 HU). Measured: real CTs 32-47% air and 7-29% fat (CHAOS ct.nii.gz 47% / 7.3%,
    TotalSegmentator example_ct 32% / 29%; cropped to the liver's box 3.0% / 11%), phantom CTs
    47-66% / 11-28%; every real MR (TotalSegmentator example_mr_sm, min -47; the 20
    intensity-normalised CHAOS T2 volumes, 0..1316) and phantom MRIs have none of either. Both
    are needed so that an MRI padded with -1024 (resampled onto a CT grid) is not refused: it has
    "air" but no fat, and a real MR must never be refused.
    """
    name = _name(Path(path))
    sample = _intensity_sample(image)
    n = max(sample.size, 1)
    air = float(np.count_nonzero(sample <= CT_AIR_HU)) / n
    fat = float(np.count_nonzero((sample >= CT_FAT_HU[0]) & (sample <= CT_FAT_HU[1]))) / n
    if air >= CT_MIN_AIR_FRACTION and fat >= CT_MIN_FAT_FRACTION:
        raise InputError(f"{name}: the MRI looks like a CT: its values are Hounsfield units ({100 * air:.0f}% of "
                         f"voxels at air, <= {CT_AIR_HU:g} HU; {100 * fat:.0f}% at fat, {CT_FAT_HU[0]:g} to "
                         f"{CT_FAT_HU[1]:g} HU); give the MRI (or leave --mri out)")


def read_segmentation(path: PathLike, reference: sitk.Image, *, tolerance_mm: float = 1e-3) -> sitk.Image:
    """Read a label map and check it lies on the reference (CT) grid; returns UInt8/UInt16 labels.

    Tolerances: spacing and origin within `tolerance_mm` (plus 0.1% of a voxel), direction
    cosines within 1e-4. The result carries the reference's exact geometry.
    """
    path = Path(path)
    name = _name(path)
    seg = read_image(path, what="segmentation")
    problems = []
    if seg.GetSize() != reference.GetSize():
        problems.append(f"size {_fmt_size(seg.GetSize())} vs {_fmt_size(reference.GetSize())}")
    else:
        sp_s, sp_r = np.array(seg.GetSpacing()), np.array(reference.GetSpacing())
        if np.any(np.abs(sp_s - sp_r) > tolerance_mm + 1e-3 * sp_r):
            problems.append(f"spacing {_fmt_spacing(sp_s)} vs {_fmt_spacing(sp_r)} mm")
        o_s, o_r = np.array(seg.GetOrigin()), np.array(reference.GetOrigin())
        if np.any(np.abs(o_s - o_r) > tolerance_mm + 1e-3 * sp_r.max()):
            problems.append("origin " + " ".join(f"{v:.2f}" for v in o_s) + " vs " +
                            " ".join(f"{v:.2f}" for v in o_r) + " mm")
        if np.any(np.abs(np.array(seg.GetDirection()) - np.array(reference.GetDirection())) > 1e-4):
            problems.append("orientation differs")
    if problems:
        raise InputError(f"{name}: segmentation is not on the CT's grid ({'; '.join(problems)}); "
                         "it must be saved on the same image grid as the CT")
    arr = sitk.GetArrayViewFromImage(seg)
    lo, hi = (arr.min(), arr.max())
    if lo < 0 or (np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0)):
        raise InputError(f"{name}: segmentation must contain whole, non-negative label values "
                         f"(found {float(lo):g} to {float(hi):g})")
    out = sitk.Cast(seg, sitk.sitkUInt8 if hi <= 255 else sitk.sitkUInt16)
    out.CopyInformation(reference)
    return out


def write_image(image: sitk.Image, path: PathLike, *, compress: bool = True) -> Path:
    """Write atomically: a temp file in the same folder, then `os.replace` (no half-written file)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(tmp), compress)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as e:
        _unlink_quietly(tmp)
        raise OutputError(f"{_name(path)}: cannot be written ({_write_reason(e, folder)})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _write_reason(err: BaseException, folder: Path) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if not os.access(folder, os.W_OK):
        return "folder is not writable"
    try:
        import shutil

        if shutil.disk_usage(folder).free < 64 * 1024 * 1024:
            return "disk is full"
    except OSError:
        pass
    return _sitk_reason(err)


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def image_summary(image: sitk.Image) -> dict:
    """Geometry as plain numbers (for report.json and logs)."""
    return {"size": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()),
            "origin_lps_mm": list(image.GetOrigin()), "direction": list(image.GetDirection()),
            "pixel_type": image.GetPixelIDTypeAsString()}


__all__ = ["LoadedImage", "load_image", "probe_image", "read_image", "read_segmentation", "check_ct_intensities",
           "check_mri_intensities",
           "write_image", "image_summary", "MAX_INPLANE", "MAX_SLICES", "MAX_VOXELS"]
