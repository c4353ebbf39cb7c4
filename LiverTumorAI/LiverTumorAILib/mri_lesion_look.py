"""How the lesions look on the given MRI against the liver around them: brighter (T2-like) or darker
(T1-like).

Why: the lesion classifier ``hybrid3d-ctmri`` learned, and the MRI lesion assist's vessel check
assumes, an MRI on which every lesion kind is brighter than the liver, as on a T2. On a plain T1
every kind is darker instead (cysts darkest). Measured on independent phantoms whose MRI is a T1
(``benchmarks/independent_phantom.py --t1``, 8 cases): the CT+MRI classifier gave every lesion a low
probability (lesion AUC 0.04, ECE 0.62-0.65), and the vessel check, which removes a finding that is
bright on the CT and dark on the MRI, removed lesions as vessels. A DICOM header may name the
sequence, a NIfTI does not, so the look is read from the images themselves.

The rule (what a reader does when a sequence is unlabelled): for each lesion of the segmentation,
its median MRI signal is compared with the median of the liver within ``SHELL_MM`` around it, in
robust SDs (1.4826 MAD) of that liver shell (a local reference, so an MRI bias field does not
decide). The look is the median of those contrasts over the lesions >= ``DECIDING_DIAMETER_MM``
(equivalent sphere; all lesions when none is that large, since small findings and false positives
have the least reliable contrast). It counts as "darker" (T1-like) at ``DARKER_AT_SD`` or below;
anything else, including no lesion read, leaves the MRI in use as trained. What a darker look
changes is up to the caller (pipeline.py): the classifier learned on T1 MRIs (or, without it, the
CT-only one) classifies (classification/classify.py) and the MRI assist's vessel check is skipped
(inference/mri_assist.py), each with a warning.

Only lesions whose box, grown by the shell, lies in the MRI's field of view with enough voxels
(``MIN_LESION_VOXELS``, ``MIN_SHELL_VOXELS``) are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorAILib.geometry import equivalent_diameter_mm, mri_signal_on_grid, region_reference, spacing_zyx
from LiverTumorAILib.measure import robust_distance

SHELL_MM = 10.0
DECIDING_DIAMETER_MM = 10.0
DARKER_AT_SD = -1.0
MIN_LESION_VOXELS = 20
MIN_SHELL_VOXELS = 50


@dataclass(frozen=True)
class MriLesionLook:
    """Each read lesion's MRI contrast against its liver shell (robust SDs, + brighter) and
    equivalent diameter (mm); the verdict is `darker`."""

    contrasts_sd: tuple[float, ...] = ()
    diameters_mm: tuple[float, ...] = ()

    @property
    def deciding(self) -> list[float]:
        large = [c for c, d in zip(self.contrasts_sd, self.diameters_mm) if d >= DECIDING_DIAMETER_MM]
        return large or list(self.contrasts_sd)

    @property
    def median_sd(self) -> float | None:
        return float(np.median(self.deciding)) if self.contrasts_sd else None

    @property
    def darker(self) -> bool:
        """Lesions darker than the liver on this MRI (a T1-like look)."""
        median = self.median_sd
        return median is not None and median <= DARKER_AT_SD

    def as_report(self) -> dict[str, Any]:
        """report.json's `mri_lesion_look`."""
        median = self.median_sd
        look = "none read" if median is None else ("darker than the liver (T1-like)" if self.darker
                                                    else "brighter than or like the liver (T2-like)")
        return {"lesions_read": len(self.contrasts_sd),
                "lesions_deciding": len(self.deciding),
                "median_contrast_sd": None if median is None else round(median, 2),
                "lesions_darker": sum(c < 0 for c in self.contrasts_sd),
                "look": look}

    def describe(self) -> str:
        """The darker look in words, for the warnings of what it changed."""
        return (f"the lesions are darker than the liver on this MRI (median {self.median_sd:.1f} robust SDs, "
                f"{len(self.deciding)} lesion(s)), as on a T1, while the CT+MRI models learned a T2-like MRI "
                "on which they are brighter")


def read_mri_lesion_look(ct: sitk.Image, mri: sitk.Image, label: np.ndarray,
                         start_zyx: Sequence[int] = (0, 0, 0)) -> MriLesionLook:
    """The look of `label`'s lesions (0 background, 1 liver, 2 tumour; on the CT grid, or its
    sub-grid whose first voxel is CT voxel `start_zyx`) on `mri` (its own grid)."""
    tumour = label == 2
    if not tumour.any():
        return MriLesionLook()
    spacing = np.asarray(spacing_zyx(ct), dtype=float)
    components, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    pad = np.ceil(SHELL_MM / spacing).astype(int) + 1
    contrasts, diameters = [], []
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        lo = np.maximum([s.start for s in box] - pad, 0)
        hi = np.minimum([s.stop for s in box] + pad, label.shape)
        grown = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        lesion = components[grown] == number
        start_xyz = [int(v) for v in (np.asarray(start_zyx) + lo)[::-1]]
        signal = mri_signal_on_grid(mri, region_reference(ct, start_xyz, [int(v) for v in (hi - lo)[::-1]]))
        seen = np.isfinite(signal)
        near = ndimage.distance_transform_edt(~lesion, sampling=spacing) <= SHELL_MM
        shell = near & ~lesion & (label[grown] == 1) & seen
        inside = lesion & seen
        if inside.sum() < MIN_LESION_VOXELS or shell.sum() < MIN_SHELL_VOXELS:
            continue
        contrasts.append(robust_distance(signal[inside], signal[shell]))
        diameters.append(equivalent_diameter_mm(int(lesion.sum()), spacing))
    return MriLesionLook(tuple(contrasts), tuple(diameters))
