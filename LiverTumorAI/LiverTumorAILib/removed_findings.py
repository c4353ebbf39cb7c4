"""The findings the checks removed, with where they were: for a reader to look at each one.

The HU checks (postprocess / hu_guards) and the MRI assist drop lesions the network drew; the
report keeps each one's centre (RAS) and volume. Listed here in one shape so the Slicer scene can
place a markups point on each (scene/findings.py) and a reader can jump there and, if it was a
lesion after all, draw it back in Segment Editor. Reads report.json's dict only (no slicer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from LiverTumorAILib.postprocess import DROPPED_AT_RAS

#: report.json hu_checks prefix -> why the finding was removed, as a reader says it
HU_CHECK_REASONS = {
    "lesions_in_other_tissue": "inside tissue that is not liver, or holding or faint beside gas",
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
    """Every removed finding report.json locates, HU checks first, then the MRI assist's. An entry
    that is not a finite point and volume (a report edited by hand, or damaged) is skipped: the
    report is read back from disk, and a bad entry must not stop the rest of the result loading."""
    hu_checks, assist = report.get("hu_checks"), report.get("mri_lesion_assist")
    found = list(_hu_check_findings(hu_checks)) if isinstance(hu_checks, Mapping) else []
    return found + (list(_mri_assist_findings(assist)) if isinstance(assist, Mapping) else [])


def _hu_check_findings(hu_checks: Mapping[str, Any]) -> Iterator[RemovedFinding]:
    for check, reason in HU_CHECK_REASONS.items():
        centres = hu_checks.get(f"{check}{DROPPED_AT_RAS}")
        volumes = hu_checks.get(f"{check}_ml")
        if isinstance(centres, list) and isinstance(volumes, list):
            yield from filter(None, (_finding(reason, centre, volume) for centre, volume in zip(centres, volumes)))


def _mri_assist_findings(assist: Mapping[str, Any]) -> Iterator[RemovedFinding]:
    findings = assist.get("findings_removed_as_vessels")
    for finding in findings if isinstance(findings, list) else []:
        if isinstance(finding, Mapping):
            found = _finding(MRI_VESSEL_REASON, finding.get("centroid_ras"), finding.get("volume_ml"))
            if found is not None:
                yield found


def _finding(reason: str, centre: Any, volume: Any) -> RemovedFinding | None:
    """One `RemovedFinding`, or None when `centre` is not three finite numbers or `volume` not one."""
    try:
        x, y, z, ml = (float(v) for v in (*centre, volume))
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, z, ml)):
        return None
    return RemovedFinding(reason, (x, y, z), ml)
