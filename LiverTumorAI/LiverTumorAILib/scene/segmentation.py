"""Segmentation node from the engine's label map (1 liver, 2 tumour) and lesion instances.

Re-running never destroys a user's edits: a new node with a unique name is created unless
`replace=True` names an existing LiverTumorAI node to refill.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from . import terminology as T
from .labels import merged_labels
from .volumes import ijk_to_ras_from_sitk, vtk_matrix

SOURCE_ATTRIBUTE = "LiverTumorAI.Source"


def oriented_labelmap(array: np.ndarray, reference: sitk.Image) -> slicer.vtkOrientedImageData:
    """vtkOrientedImageData of `array` on `reference`'s grid, cropped to its non-zero extent."""
    nz = np.argwhere(array)
    if len(nz) == 0:
        lo, hi = np.zeros(3, int), np.zeros(3, int)
    else:
        lo, hi = nz.min(0), nz.max(0)
    crop = np.ascontiguousarray(array[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1])
    data = slicer.vtkOrientedImageData()
    data.SetExtent(lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(crop.ravel(), deep=True))
    data.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras_from_sitk(reference)))
    return data


def default_name(ct_node: Optional[slicer.vtkMRMLNode], ct_name: str = "CT") -> str:
    return f"{ct_node.GetName() if ct_node is not None else ct_name} LiverTumorAI"


def _target_node(scene: slicer.vtkMRMLScene, name: str, replace: bool) -> slicer.vtkMRMLSegmentationNode:
    existing = scene.GetFirstNodeByName(name)
    if replace and existing is not None and existing.IsA("vtkMRMLSegmentationNode"):
        existing.GetSegmentation().RemoveAllSegments()
        return existing
    if existing is not None:
        name = scene.GenerateUniqueName(name)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    return node


def _place_in_study(scene: slicer.vtkMRMLScene, ct_node, node) -> None:
    """Put `node` beside the CT under its study, where the scene has a subject hierarchy."""
    if ct_node is None:
        return
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    ct_item = sh.GetItemByDataNode(ct_node)
    if not ct_item:
        return
    study = sh.GetItemAncestorAtLevel(ct_item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    parent = study or sh.GetItemParent(ct_item)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def create_segmentation_node(
    scene: slicer.vtkMRMLScene,
    label: sitk.Image,
    lesions: Optional[sitk.Image] = None,
    *,
    ct_node: Optional[slicer.vtkMRMLVolumeNode] = None,
    report: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
    replace: bool = False,
) -> slicer.vtkMRMLSegmentationNode:
    """Segments 'Liver' and 'Lesion k' with terminology, colours and model tags.

    `label`/`lesions` are on the CT's world grid (as the engine writes them). The node is
    named '<CT name> LiverTumorAI' (made unique unless `replace`).
    """
    report = report or {}
    array, specs = merged_labels(label, lesions, report.get("lesions") or ())
    node = _target_node(scene, name or default_name(ct_node), replace)
    seg = node.GetSegmentation()
    if ct_node is not None and ct_node.GetParentTransformNode() is None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)  # also links the CT
    else:  # label grid is the CT's world grid
        seg.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(_full_geometry(label)),
        )
    labelmap = oriented_labelmap(array, label)
    if specs:
        before = set(seg.GetSegmentIDs())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, "tmp"):
            raise InputError("could not import the label map into a segmentation node")
        new = [sid for sid in seg.GetSegmentIDs() if sid not in before]
        by_value = {seg.GetSegment(sid).GetLabelValue(): seg.GetSegment(sid) for sid in new}
        tag = T.model_tag(report)
        probs = {int(d["id"]): d.get("malignancy_probability") for d in report.get("lesions") or () if "id" in d}
        for value, spec in specs:
            segment = by_value.get(value)
            if segment is None:
                continue
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.SetTerminology(T.terminology_string(spec))
            segment.SetTag(T.MODEL_TAG, tag)
            if spec.lesion_id is not None:
                segment.SetTag(T.LESION_ID_TAG, str(spec.lesion_id))
                if probs.get(spec.lesion_id) is not None:
                    segment.SetTag(T.MALIGNANCY_TAG, f"{float(probs[spec.lesion_id]):.4f}")
    node.SetAttribute(T.MODEL_TAG, T.model_tag(report))
    node.SetAttribute(SOURCE_ATTRIBUTE, "LiverTumorAI")
    _place_in_study(scene, ct_node, node)
    return node


def _full_geometry(reference: sitk.Image) -> slicer.vtkOrientedImageData:
    """Empty oriented image with the full extent of `reference` (for the reference geometry)."""
    data = slicer.vtkOrientedImageData()
    nx, ny, nz = reference.GetSize()
    data.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    data.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras_from_sitk(reference)))
    return data


def segment_tag(segment: slicer.vtkSegment, tag: str) -> Optional[str]:
    """Value of a segment tag, or None (wraps the C++ out-argument)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def segment_array(node: slicer.vtkMRMLSegmentationNode, segment_id: str) -> np.ndarray:
    """(z, y, x) 0/1 mask of one segment on the node's reference geometry."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    out = slicer.vtkOrientedImageData()
    if not node.GenerateMergedLabelmapForAllSegments(out, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, None, ids):
        raise InputError(f"{node.GetName()}: could not rasterise segment {segment_id}")
    nx, ny, nz = out.GetDimensions()
    arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(nz, ny, nx)
    return (arr > 0).astype(np.uint8)
