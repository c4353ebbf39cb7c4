"""Codes, colours and tags for LiverTumorAI segments (no slicer import: export uses it too).

One source of truth for the SNOMED CT codes so the .seg.nrrd terminology and the DICOM SEG
segment descriptions never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

#: Slicer context names; entries from them resolve in Slicer's Terminologies module.
CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

#: (scheme, value, meaning) triples
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
LIVER = ("SCT", "10200004", "Liver")
NEOPLASM = ("SCT", "108369006", "Neoplasm")
LESION = ("SCT", "52988006", "Lesion")

LIVER_COLOR = (221 / 255, 130 / 255, 101 / 255)
#: Yellow/green family, far from the liver's brown so lesions stand out on it.
LESION_COLORS = [
    (250 / 255, 220 / 255, 40 / 255),
    (70 / 255, 200 / 255, 90 / 255),
    (190 / 255, 235 / 255, 60 / 255),
    (235 / 255, 175 / 255, 20 / 255),
    (40 / 255, 170 / 255, 130 / 255),
    (160 / 255, 180 / 255, 30 / 255),
]

#: Segment tag and node attribute naming the model that made a segmentation.
MODEL_TAG = "LiverTumorAI.Model"
LESION_ID_TAG = "LiverTumorAI.LesionID"
MALIGNANCY_TAG = "LiverTumorAI.MalignancyProbability"
#: report.json lesion field -> segment tag keeping it on the segment, so a table refreshed after
#: manual correction (`classify`, which cannot know) still says what the MRI assist did
PROVENANCE_TAGS = {"found_by": "LiverTumorAI.FoundBy", "outline_extended_by": "LiverTumorAI.OutlineExtendedBy"}


@dataclass(frozen=True)
class SegmentSpec:
    """What one output segment is: name, codes, colour and its label in the merged map."""

    name: str
    category: tuple
    type: tuple
    color: tuple
    anatomic_region: Optional[tuple] = None
    lesion_id: Optional[int] = None


def _code(c: Optional[tuple]) -> str:
    return "^".join(c) if c else "^^"


def terminology_string(spec: SegmentSpec) -> str:
    """Slicer's terminology entry string (the format vtkSegment.SetTerminology stores)."""
    return "~".join(
        [
            CATEGORY_CONTEXT,
            _code(spec.category),
            _code(spec.type),
            "^^",
            ANATOMIC_CONTEXT,
            _code(spec.anatomic_region),
            "^^",
        ]
    ) + "|"


def liver_spec() -> SegmentSpec:
    return SegmentSpec("Liver", ANATOMICAL_STRUCTURE, LIVER, LIVER_COLOR)


def lesion_spec(lesion_id: int, index: int, predicted_class: Optional[str] = None) -> SegmentSpec:
    """Lesion k: Neoplasm when the classifier called it malignant, otherwise the generic Lesion."""
    kind = NEOPLASM if predicted_class == "malignant" else LESION
    color = LESION_COLORS[index % len(LESION_COLORS)]
    return SegmentSpec(f"Lesion {lesion_id}", MORPHOLOGICALLY_ALTERED, kind, color, LIVER, lesion_id)


def model_tag(report: Mapping[str, Any]) -> str:
    """'dual-stream demo-0.1, hybrid3d demo-0.1 (synthetic demo weights)' from report.json."""
    models = report.get("models") or {}
    parts, synthetic = [], False
    for name, info in sorted(models.items()):
        info = info if isinstance(info, Mapping) else {}
        parts.append(f"{name} {info.get('version', '?')}".strip())
        synthetic = synthetic or bool(info.get("synthetic"))
    tag = ", ".join(parts) or "LiverTumorAI"
    if synthetic or report.get("weights_notice"):
        tag += " (synthetic demo weights)"
    return tag


def is_synthetic(report: Mapping[str, Any]) -> bool:
    """True when any model ran with demo weights trained on phantoms."""
    models = report.get("models") or {}
    return any(isinstance(v, Mapping) and v.get("synthetic") for v in models.values()) or bool(
        report.get("weights_notice")
    )
