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
from ..geometry import nonzero_slices, region_start
from ..inference.mri_assist import segmentation_model_name
from . import terminology as T
from .labels import _same_grid, merged_labels
from .volumes import ijk_to_ras_from_sitk, vtk_matrix

SOURCE_ATTRIBUTE = "LiverTumorAI.Source"


def oriented_labelmap(array: np.ndarray, reference: sitk.Image, offset=(0, 0, 0)) -> slicer.vtkOrientedImageData:
    """vtkOrientedImageData of `array` on `reference`'s grid, cropped to its non-zero extent.

    `offset`: index (x, y, z) of `reference` where `array`'s first voxel lies (when `array`
    covers only a box of the grid)."""
    nz = np.argwhere(array)
    if len(nz) == 0:
        lo, hi = np.zeros(3, int), np.zeros(3, int)
    else:
        lo, hi = nz.min(0), nz.max(0)
    crop = np.ascontiguousarray(array[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1])
    lo, hi = lo + np.asarray(offset[::-1]), hi + np.asarray(offset[::-1])
    data = slicer.vtkOrientedImageData()
    data.SetExtent(lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(crop.ravel(), deep=True))
    data.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras_from_sitk(reference)))
    return data


def _content_box(
    label: sitk.Image, lesions: Optional[sitk.Image]
) -> tuple[sitk.Image, Optional[sitk.Image], tuple]:
    """`label` and `lesions` cropped to the box holding all their non-zero voxels, and that
    box's start index (x, y, z) in `label`'s grid: a long scan's maps are never expanded to a
    whole-scan uint16 array and masks just to find the few segments in them."""
    if lesions is not None and not _same_grid(label, lesions):
        return label, lesions, (0, 0, 0)  # merged_labels says what is wrong
    boxes = [nonzero_slices(sitk.GetArrayViewFromImage(label))]
    if lesions is not None:
        boxes.append(nonzero_slices(sitk.GetArrayViewFromImage(lesions)))
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return label, lesions, (0, 0, 0)
    zyx = [slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3)]
    start = [zyx[2].start, zyx[1].start, zyx[0].start]
    size = [zyx[2].stop - zyx[2].start, zyx[1].stop - zyx[1].start, zyx[0].stop - zyx[0].start]
    if list(size) == list(label.GetSize()):
        return label, lesions, (0, 0, 0)
    crop = [sitk.RegionOfInterest(im, size, start) if im is not None else None for im in (label, lesions)]
    return crop[0], crop[1], tuple(start)


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
    reference: Optional[sitk.Image] = None,
) -> slicer.vtkMRMLSegmentationNode:
    """Segments 'Liver' and 'Lesion k' with terminology, colours and model tags.

    `label`/`lesions` are on the CT's world grid (as the engine writes them), or on a
    sub-grid of `reference` (the CT grid; zero outside the sub-grid). The node is
    named '<CT name> LiverTumorAI' (made unique unless `replace`).
    """
    report = report or {}
    offset = (0, 0, 0)
    if reference is None:
        reference = label
    else:
        offset = region_start(reference, label)
        if offset is None:
            raise InputError("the label map does not lie on the reference grid")
    label, lesions, box_start = _content_box(label, lesions)
    offset = tuple(int(o) + int(b) for o, b in zip(offset, box_start))
    array, specs = merged_labels(label, lesions, report.get("lesions") or ())
    node = _target_node(scene, name or default_name(ct_node), replace)
    seg = node.GetSegmentation()
    if ct_node is not None and ct_node.GetParentTransformNode() is None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)  # also links the CT
    else:  # label grid is the CT's world grid
        seg.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(_full_geometry(reference)),
        )
    labelmap = oriented_labelmap(array, reference, offset)
    if specs:
        before = set(seg.GetSegmentIDs())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, "tmp"):
            raise InputError("could not import the label map into a segmentation node")
        new = [sid for sid in seg.GetSegmentIDs() if sid not in before]
        by_value = {seg.GetSegment(sid).GetLabelValue(): seg.GetSegment(sid) for sid in new}
        tag = T.model_tag(report)
        rows = {int(d["id"]): d for d in report.get("lesions") or () if "id" in d}
        segmented_by = segmentation_model_name(report)
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
                _tag_lesion(segment, rows.get(spec.lesion_id) or {}, segmented_by)
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


def _tag_lesion(segment: slicer.vtkSegment, row: Mapping[str, Any], segmented_by: Optional[str]) -> None:
    """Malignancy probability and what the MRI assist did (`T.PROVENANCE_TAGS`; a lesion the
    segmentation model drew itself carries no found-by tag) from the lesion's report row."""
    if row.get("malignancy_probability") is not None:
        segment.SetTag(T.MALIGNANCY_TAG, f"{float(row['malignancy_probability']):.4f}")
    for key, tag in T.PROVENANCE_TAGS.items():
        value = row.get(key)
        if value and not (key == "found_by" and value == segmented_by):
            segment.SetTag(tag, str(value))


def lesion_provenance(segment: slicer.vtkSegment) -> dict[str, str]:
    """The report fields `_tag_lesion` kept on a segment (empty for one a reader drew)."""
    found = {key: segment_tag(segment, tag) for key, tag in T.PROVENANCE_TAGS.items()}
    return {key: value for key, value in found.items() if value}


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
