"""The findings the checks removed, with where they were: for a reader to look at each one.

The HU checks (postprocess / hu_guards) and the MRI assist drop lesions the network drew; the
report keeps each one's centre (RAS) and volume. Listed here in one shape so the Slicer scene can
place a markups point on each (scene/findings.py) and a reader can jump there and, if it was a
lesion after all, draw it back in Segment Editor. Reads report.json's dict only (no slicer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from LiverTumorAILib.postprocess import DROPPED_AT_RAS

#: report.json hu_checks prefix -> why the finding was removed, as a reader says it
HU_CHECK_REASONS = {
    "lesions_in_other_tissue": "inside tissue that is not liver",
    "lesions_without_contrast": "no contrast to the liver on any image",
    "elongated_lesions": "shaped like a vessel",
}
MRI_VESSEL_REASON = "a vessel on the MRI"


@dataclass(frozen=True)
class RemovedFinding:
    reason: str
    centroid_ras: tuple[float, float, float]
    volume_ml: float

    @property
    def label(self) -> str:
        return f"removed: {self.reason} ({self.volume_ml:g} ml)"


def removed_findings(report: Mapping[str, Any]) -> list[RemovedFinding]:
    """Every removed finding report.json locates, HU checks first, then the MRI assist's."""
    return list(_hu_check_findings(report.get("hu_checks") or {})) + list(
        _mri_assist_findings(report.get("mri_lesion_assist") or {}))


def _hu_check_findings(hu_checks: Mapping[str, Any]) -> Iterator[RemovedFinding]:
    for check, reason in HU_CHECK_REASONS.items():
        centres = hu_checks.get(f"{check}{DROPPED_AT_RAS}") or []
        volumes = hu_checks.get(f"{check}_ml") or []
        for centre, volume in zip(centres, volumes):
            yield RemovedFinding(reason, _point(centre), float(volume))


def _mri_assist_findings(assist: Mapping[str, Any]) -> Iterator[RemovedFinding]:
    for finding in assist.get("findings_removed_as_vessels") or []:
        yield RemovedFinding(MRI_VESSEL_REASON, _point(finding["centroid_ras"]), float(finding["volume_ml"]))


def _point(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)
