"""The result scene the pipeline writes: segmentation.seg.nrrd and scene.mrb in OUTDIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import SimpleITK as sitk
import slicer

from .files import register_markups_storage, write_mrb, write_segmentation
from .findings import create_removed_findings_markups
from .heatmap import add_heatmap_node
from .segmentation import create_segmentation_node
from .table import create_lesion_table
from .volumes import volume_node_from_sitk


def new_scene() -> slicer.vtkMRMLScene:
    """A scene with Slicer's default colour tables, the segmentation converters and the point
    lists' storage registered."""
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    register_markups_storage(scene)
    selection = scene.AddNewNodeByClass("vtkMRMLSelectionNode")  # the app has one; point lists ask it for units
    selection.SetSaveWithScene(False)  # not written: loading the .mrb must not replace the app's
    return scene


def populate_scene(
    scene: slicer.vtkMRMLScene,
    ct: sitk.Image,
    mri: Optional[sitk.Image],
    label: sitk.Image,
    lesions: Optional[sitk.Image],
    heatmap: Optional[sitk.Image],
    report: Mapping[str, Any],
    *,
    ct_name: str = "CT",
) -> dict[str, Any]:
    """Add CT, MRI, segmentation, heatmap and lesion table nodes, and a point list of the findings
    the checks removed when there are any; returns the nodes by role.

    `label`, `lesions` and `heatmap` lie on the CT's grid or on a sub-grid of it (the box
    that was segmented; zero outside): the nodes are on the CT's grid either way."""
    ct_node = volume_node_from_sitk(scene, ct, scene.GenerateUniqueName(ct_name))
    ct_node.CreateDefaultDisplayNodes()
    nodes: dict[str, Any] = {"ct": ct_node}
    if mri is not None:
        nodes["mri"] = volume_node_from_sitk(scene, mri, scene.GenerateUniqueName(f"{ct_name} MRI"))
        nodes["mri"].CreateDefaultDisplayNodes()
    nodes["segmentation"] = create_segmentation_node(scene, label, lesions, ct_node=ct_node, report=report,
                                                      reference=ct)
    if heatmap is not None:
        nodes["heatmap"] = add_heatmap_node(scene, heatmap, f"{ct_name} LiverTumorAI heatmap", ct_node=ct_node,
                                           reference=ct)
    nodes["table"] = create_lesion_table(scene, report, f"{ct_name} LiverTumorAI lesions")
    removed = create_removed_findings_markups(scene, report, f"{ct_name} LiverTumorAI removed findings")
    if removed is not None:
        nodes["removed_findings"] = removed
    return nodes


def build_result_scene(
    ct: sitk.Image,
    mri: Optional[sitk.Image],
    label: sitk.Image,
    lesions: Optional[sitk.Image],
    heatmap: Optional[sitk.Image],
    report: Mapping[str, Any],
    outdir: str | Path,
    *,
    ct_name: str = "CT",
) -> dict[str, Path]:
    """Write `segmentation.seg.nrrd` and `scene.mrb` into `outdir` (the pipeline's staging dir)."""
    outdir = Path(outdir)
    scene = new_scene()
    nodes = populate_scene(scene, ct, mri, label, lesions, heatmap, report, ct_name=ct_name)
    seg_path = write_segmentation(nodes["segmentation"], outdir / "segmentation.seg.nrrd")
    mrb_path = write_mrb(scene, outdir / "scene.mrb")
    scene.Clear(True)
    return {"segmentation_seg_nrrd": seg_path, "scene_mrb": mrb_path}
