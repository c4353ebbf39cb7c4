"""Image input/output: validated reading, atomic writing, DICOM series, all-or-nothing output folders.

Light on purpose (SimpleITK, numpy; pydicom only inside `write_dicom_series`): no torch here.
"""

from LiverTumorAILib.io.atomic import atomic_output_dir
from LiverTumorAILib.io.dicom_series import write_dicom_series
from LiverTumorAILib.io.image_io import (
    LoadedImage,
    check_ct_intensities,
    check_mri_intensities,
    image_summary,
    load_image,
    probe_image,
    read_image,
    read_segmentation,
    write_image,
)

__all__ = [
    "LoadedImage",
    "atomic_output_dir",
    "check_ct_intensities",
    "check_mri_intensities",
    "image_summary",
    "load_image",
    "probe_image",
    "read_image",
    "read_segmentation",
    "write_dicom_series",
    "write_image",
]
