"""Markups node of the findings the checks removed: one point per finding, where it was."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import slicer

from ..removed_findings import removed_findings

#: orange, apart from the lesion segments' colours and the heatmap's
POINT_COLOUR = (1.0, 0.55, 0.0)


def create_removed_findings_markups(scene: slicer.vtkMRMLScene, report: Mapping[str, Any],
                                    name: str) -> Optional[slicer.vtkMRMLMarkupsFiducialNode]:
    """A locked point list with a labelled point at each removed finding's centre (RAS); None when
    the report locates none. Locked: the points mark where the checks looked, not a reader's input."""
    findings = removed_findings(report)
    if not findings:
        return None
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    for finding in findings:
        index = node.AddControlPoint(*finding.centroid_ras)
        node.SetNthControlPointLabel(index, finding.label)
        node.SetNthControlPointDescription(index, finding.reason)
        node.SetNthControlPointLocked(index, True)
    node.SetLocked(True)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*POINT_COLOUR)
        display.SetColor(*POINT_COLOUR)
    return node
