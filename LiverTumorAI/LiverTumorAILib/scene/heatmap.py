"""Heatmap volume shown as a coloured foreground over the CT (never as a segment).

Attention maps are probabilities in [0, 1]: a fixed window/level [0, 1] keeps colours
comparable between cases, unlike auto window/level.
"""

from __future__ import annotations

from typing import Optional

import SimpleITK as sitk
import slicer

from .volumes import volume_node_from_sitk

COLOR_NAME = "Inferno"
HEATMAP_ATTRIBUTE = "LiverTumorAI.Heatmap"
DEFAULT_OPACITY = 0.4


def inferno_color_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """Slicer's 'Inferno' table if the scene has one (full Slicer), else one built from matplotlib."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorNode")
        if node.GetName() == COLOR_NAME:
            return node
    from matplotlib import colormaps

    cmap = colormaps["inferno"]
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for i in range(256):
        r, g, b, _ = cmap(i / 255.0)
        node.SetColor(i, f"inferno{i}", r, g, b, 1.0)
    node.SetAttribute("Category", "Continuous")
    scene.AddNode(node)
    return node


def add_heatmap_node(
    scene: slicer.vtkMRMLScene,
    heatmap: sitk.Image,
    name: str,
    *,
    ct_node: Optional[slicer.vtkMRMLVolumeNode] = None,
    opacity: float = DEFAULT_OPACITY,
    reference: Optional[sitk.Image] = None,
) -> slicer.vtkMRMLScalarVolumeNode:
    """Scalar volume with an Inferno, window/level [0, 1] display; foreground where views exist.

    `reference`: the (CT) grid the node gets when `heatmap` covers only a sub-grid of it
    (zero elsewhere); see `volume_node_from_sitk`."""
    node = volume_node_from_sitk(scene, sitk.Cast(heatmap, sitk.sitkFloat32), scene.GenerateUniqueName(name),
                                 reference=reference)
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    scene.AddNode(display)
    display.SetAndObserveColorNodeID(inferno_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetInterpolate(True)
    node.SetAndObserveDisplayNodeID(display.GetID())
    node.SetAttribute(HEATMAP_ATTRIBUTE, "1")
    show_as_foreground(scene, node, ct_node=ct_node, opacity=opacity)
    return node


def show_as_foreground(
    scene: slicer.vtkMRMLScene,
    heatmap_node: slicer.vtkMRMLVolumeNode,
    *,
    ct_node: Optional[slicer.vtkMRMLVolumeNode] = None,
    opacity: float = DEFAULT_OPACITY,
) -> int:
    """Put the heatmap in every slice view's foreground (CT behind); returns how many views."""
    count = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        comp = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if ct_node is not None:
            comp.SetBackgroundVolumeID(ct_node.GetID())
        comp.SetForegroundVolumeID(heatmap_node.GetID())
        comp.SetForegroundOpacity(float(opacity))
        count += 1
    return count


def set_heatmap_opacity(scene: slicer.vtkMRMLScene, opacity: float) -> int:
    """Set the foreground opacity in every view that shows a LiverTumorAI heatmap."""
    opacity = min(max(float(opacity), 0.0), 1.0)
    count = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        comp = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        fg = scene.GetNodeByID(comp.GetForegroundVolumeID() or "")
        if fg is not None and fg.GetAttribute(HEATMAP_ATTRIBUTE):
            comp.SetForegroundOpacity(opacity)
            count += 1
    return count
