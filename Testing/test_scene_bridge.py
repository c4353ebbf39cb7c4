"""Scene bridge against a real vtkMRMLScene from slicer-core (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError
from LiverTumorAILib.geometry import nonzero_slices
from LiverTumorAILib.scene import scene_available

pytestmark = pytest.mark.skipif(not scene_available(), reason="slicer-core not installed")

if scene_available():
    import slicer
    import vtk

    from LiverTumorAILib.scene import terminology as T
    from LiverTumorAILib.scene.build import build_result_scene, new_scene, populate_scene
    from LiverTumorAILib.scene.files import read_mrb, read_segmentation, write_mrb, write_segmentation
    from LiverTumorAILib.scene.heatmap import HEATMAP_ATTRIBUTE, set_heatmap_opacity
    from LiverTumorAILib.scene.segmentation import create_segmentation_node, segment_array, segment_tag
    from LiverTumorAILib.scene.table import table_rows
    from LiverTumorAILib.scene.volumes import (
        ijk_to_ras_from_sitk,
        sitk_from_volume_node,
        volume_node_from_sitk,
    )

REPORT = {
    "liver_volume_ml": 12.5,
    "tumour_burden_percent": 3.1,
    "lesions": [
        {"id": 1, "volume_ml": 0.42, "longest_diameter_mm": 11.2, "centroid_ras": [1, 2, 3], "mean_hu": 48.5,
         "malignancy_probability": 0.81, "predicted_class": "malignant"},
        {"id": 2, "volume_ml": 0.11, "longest_diameter_mm": 6.0, "centroid_ras": [4, 5, 6], "mean_hu": 70.25,
         "malignancy_probability": 0.2, "predicted_class": "benign",
         "note": "lesion < 10 mm (6.0 mm): too small for a reliable call"},
    ],
    "models": {"dual-stream": {"version": "demo-0.1", "synthetic": True},
               "hybrid3d": {"version": "demo-0.1", "synthetic": True}},
    "weights_notice": "demo weights",
}


#: what report.json says of findings the checks removed (postprocess notes, MRI assist)
REMOVED = {
    "hu_checks": {"elongated_lesions_removed": 1, "elongated_lesions_ml": [3.35],
                  "elongated_lesions_centroids_ras": [[10.0, -20.5, 30.25]]},
    "mri_lesion_assist": {"findings_removed_as_vessels": [{"centroid_ras": [-4.0, 7.5, 2.0], "volume_ml": 0.5,
                                                           "ct_sd_above_liver": 2.5, "mri_sd_below_liver": 1.5}]},
}


def _rotation(axis, angle) -> np.ndarray:
    return np.array(sitk.VersorTransform(tuple(axis), angle).GetMatrix()).reshape(3, 3)


GEOMETRIES = {
    "flipped": (np.diag([-1.0, 1.0, -1.0]), (1.0, 1.0, 1.0)),
    "oblique": (_rotation((0.3, 0.2, 0.9), 0.4) @ np.diag([1.0, -1.0, 1.0]), (0.8, 0.8, 2.5)),
    "anisotropic": (np.eye(3), (0.7, 1.3, 5.0)),
}


def _image(direction=np.eye(3), spacing=(0.8, 0.8, 2.5), shape=(12, 40, 48), dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1500, shape).astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin((12.5, -30.25, 100.0))
    img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    return img


def _phantom():
    """Label (1 liver, 2 tumour) + lesion instances on a small anisotropic grid."""
    z, y, x = np.mgrid[:12, :40, :48]
    label = np.zeros(z.shape, np.uint8)
    label[((z - 6) * 2.5) ** 2 + ((y - 20) * 0.8) ** 2 + ((x - 24) * 0.8) ** 2 < 14 ** 2] = 1
    lesions = np.zeros(z.shape, np.uint16)
    lesions[((z - 6) * 2.5) ** 2 + ((y - 20) * 0.8) ** 2 + ((x - 18) * 0.8) ** 2 < 4 ** 2] = 1
    lesions[((z - 6) * 2.5) ** 2 + ((y - 18) * 0.8) ** 2 + ((x - 30) * 0.8) ** 2 < 3 ** 2] = 2
    label[lesions > 0] = 2
    ref = _image()
    label_img = sitk.GetImageFromArray(label)
    label_img.CopyInformation(ref)
    lesion_img = sitk.GetImageFromArray(lesions)
    lesion_img.CopyInformation(ref)
    return ref, label_img, lesion_img


def _assert_same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_volume_round_trip_exact(kind):
    direction, spacing = GEOMETRIES[kind]
    img = _image(direction, spacing)
    scene = new_scene()
    node = volume_node_from_sitk(scene, img, "CT")
    # the node's IJK->RAS is the LPS geometry with x, y negated
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras_origin = [m.GetElement(i, 3) for i in range(3)]
    np.testing.assert_allclose(ras_origin, [-12.5, 30.25, 100.0])
    _assert_same(sitk_from_volume_node(node), img)


def test_parent_linear_transform_is_applied():
    img = _image(*GEOMETRIES["oblique"])
    scene = new_scene()
    node = volume_node_from_sitk(scene, img, "CT")
    rot = _rotation((0.0, 0.0, 1.0), np.pi / 2)
    to_parent = np.eye(4)
    to_parent[:3, :3] = rot
    to_parent[:3, 3] = [5.0, -7.0, 11.0]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(to_parent.ravel().tolist())
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())

    applied = sitk_from_volume_node(node)
    expected = to_parent @ ijk_to_ras_from_sitk(img)
    np.testing.assert_allclose(ijk_to_ras_from_sitk(applied), expected, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(applied), sitk.GetArrayFromImage(img))
    # same as Slicer's own hardening
    assert node.HardenTransform()
    assert node.GetParentTransformNode() is None
    _assert_same(sitk_from_volume_node(node), applied)


def test_segments_terminology_tags_and_study():
    ct, label, lesions = _phantom()
    scene = new_scene()
    ct_node = volume_node_from_sitk(scene, ct, "Abdomen")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, ct_node)

    node = create_segmentation_node(scene, label, lesions, ct_node=ct_node, report=REPORT)
    assert node.GetName() == "Abdomen LiverTumorAI"
    seg = node.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    assert names == ["Liver", "Lesion 1", "Lesion 2"]

    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("Liver"))
    assert liver.GetTerminology() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
        "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^|")
    np.testing.assert_allclose(liver.GetColor(), (221 / 255, 130 / 255, 101 / 255), atol=1e-6)
    l1 = seg.GetSegment(seg.GetSegmentIdBySegmentName("Lesion 1"))
    l2 = seg.GetSegment(seg.GetSegmentIdBySegmentName("Lesion 2"))
    assert "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~" in l1.GetTerminology()
    assert "~SCT^52988006^Lesion~" in l2.GetTerminology()
    for s in (l1, l2):
        assert s.GetTerminology().endswith("~SCT^10200004^Liver~^^|")
        assert not np.allclose(s.GetColor(), liver.GetColor())
    assert not np.allclose(l1.GetColor(), l2.GetColor())

    tag = segment_tag(liver, T.MODEL_TAG)
    assert "dual-stream demo-0.1" in tag and "synthetic demo weights" in tag
    assert node.GetAttribute(T.MODEL_TAG) == tag
    assert segment_tag(l1, T.MALIGNANCY_TAG) == "0.8100"

    lab = sitk.GetArrayFromImage(label)
    les = sitk.GetArrayFromImage(lesions)
    assert segment_array(node, seg.GetSegmentIdBySegmentName("Liver")).sum() == (lab == 1).sum()
    assert segment_array(node, seg.GetSegmentIdBySegmentName("Lesion 2")).sum() == (les == 2).sum()
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_rerun_never_overwrites_edited_node():
    ct, label, lesions = _phantom()
    scene = new_scene()
    ct_node = volume_node_from_sitk(scene, ct, "CT")
    first = create_segmentation_node(scene, label, lesions, ct_node=ct_node, report=REPORT)
    seg = first.GetSegmentation()
    seg.RemoveSegment(seg.GetSegmentIdBySegmentName("Lesion 2"))  # the user's manual edit
    seg.GetSegment(seg.GetSegmentIdBySegmentName("Lesion 1")).SetName("Lesion 1 (checked)")

    second = create_segmentation_node(scene, label, lesions, ct_node=ct_node, report=REPORT)
    assert second.GetID() != first.GetID()
    assert second.GetName() != first.GetName() and second.GetName().startswith("CT LiverTumorAI")
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == \
        ["Liver", "Lesion 1 (checked)"]
    assert second.GetSegmentation().GetNumberOfSegments() == 3

    replaced = create_segmentation_node(scene, label, lesions, ct_node=ct_node, report=REPORT, replace=True)
    assert replaced.GetID() == first.GetID()
    assert seg.GetNumberOfSegments() == 3


def test_table_equals_report_and_heatmap_display():
    ct, label, lesions = _phantom()
    heat = sitk.GetImageFromArray(np.linspace(0, 1, label.GetNumberOfPixels(), dtype=np.float32)
                                  .reshape(sitk.GetArrayViewFromImage(label).shape))
    heat.CopyInformation(ct)
    scene = new_scene()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # what a slice view has in the app
    nodes = populate_scene(scene, ct, None, label, lesions, heat, REPORT, ct_name="CT")

    rows = table_rows(nodes["table"])
    assert [r["id"] for r in rows] == [1, 2]
    for row, lesion in zip(rows, REPORT["lesions"]):
        for key in ("volume_ml", "longest_diameter_mm", "mean_hu", "malignancy_probability"):
            assert row[key] == pytest.approx(lesion[key])
        assert row["class"] == lesion["predicted_class"]
        assert "dual-stream demo-0.1" in row["model"]
        assert row["note"] == lesion.get("note", "")  # the classifier's reason, empty when it gave none

    hm = nodes["heatmap"]
    display = hm.GetDisplayNode()
    assert display.GetColorNode().GetName() == "Inferno"
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert not hm.IsA("vtkMRMLSegmentationNode") and hm.GetAttribute(HEATMAP_ATTRIBUTE)
    assert composite.GetForegroundVolumeID() == hm.GetID()
    assert composite.GetBackgroundVolumeID() == nodes["ct"].GetID()
    assert "removed_findings" not in nodes  # the report removed nothing: no empty point list
    assert set_heatmap_opacity(scene, 0.7) == 1
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    _assert_same(sitk_from_volume_node(hm), heat)


def _segments_summary_slicer(node):
    seg = node.GetSegmentation()
    return {
        seg.GetNthSegment(i).GetName(): (seg.GetNthSegment(i).GetTerminology(),
                                         int(segment_array(node, seg.GetNthSegmentID(i)).sum()))
        for i in range(seg.GetNumberOfSegments())
    }


def test_seg_nrrd_and_mrb_read_back(tmp_path):
    import slicerio

    ct, label, lesions = _phantom()
    heat = sitk.Cast(label, sitk.sitkFloat32) / 2.0
    report = {**REPORT, **REMOVED}
    paths = build_result_scene(ct, None, label, lesions, heat, report, tmp_path, ct_name="CT")
    assert paths["segmentation_seg_nrrd"].is_file() and paths["scene_mrb"].is_file()

    lab, les = sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(lesions)
    expected_counts = {"Liver": int((lab == 1).sum()), "Lesion 1": int((les == 1).sum()),
                       "Lesion 2": int((les == 2).sum())}

    # slicer-core: .seg.nrrd
    scene = new_scene()
    loaded = read_segmentation(scene, paths["segmentation_seg_nrrd"])
    summary = _segments_summary_slicer(loaded)
    assert {k: v[1] for k, v in summary.items()} == expected_counts
    assert summary["Liver"][0].startswith(T.CATEGORY_CONTEXT + "~SCT^123037004^")

    # slicerio: .seg.nrrd
    sio = slicerio.read_segmentation(str(paths["segmentation_seg_nrrd"]))
    for segment in sio["segments"]:
        assert segment["name"] in expected_counts
        voxels = sio["voxels"] if sio["voxels"].ndim == 3 else sio["voxels"][..., segment["layer"]]
        assert int((voxels == segment["labelValue"]).sum()) == expected_counts[segment["name"]]
    liver = slicerio.segment_from_name(sio, "Liver")
    assert liver["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert liver["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
    lesion = slicerio.segment_from_name(sio, "Lesion 1")
    assert lesion["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert lesion["terminology"]["anatomicRegion"] == ["SCT", "10200004", "Liver"]

    # slicer-core: .mrb (CT, segmentation, heatmap with Inferno, table)
    mrb = read_mrb(paths["scene_mrb"])
    seg_node = mrb.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    summary_mrb = _segments_summary_slicer(seg_node)
    assert summary_mrb == summary
    ct_node = mrb.GetFirstNodeByName("CT")
    _assert_same(sitk_from_volume_node(ct_node), ct)
    hm = mrb.GetFirstNodeByName("CT LiverTumorAI heatmap")
    assert hm.GetDisplayNode().GetColorNode().GetName() == "Inferno"
    assert hm.GetDisplayNode().GetWindow() == pytest.approx(1.0)
    rows = table_rows(mrb.GetFirstNodeByClass("vtkMRMLTableNode"))
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["malignancy_probability"] == pytest.approx(0.81)
    points = mrb.GetFirstNodeByName("CT LiverTumorAI removed findings")  # each removed finding, where it was
    assert points is not None and points.GetNumberOfControlPoints() == 2
    np.testing.assert_allclose(points.GetNthControlPointPositionVector(0), [10.0, -20.5, 30.25], atol=1e-6)
    np.testing.assert_allclose(points.GetNthControlPointPositionVector(1), [-4.0, 7.5, 2.0], atol=1e-6)
    assert points.GetNthControlPointLabel(0) == "removed: shaped like a vessel (3.35 ml)"
    assert points.GetNthControlPointLabel(1) == "removed: a vessel on the MRI (0.5 ml)"
    assert mrb.GetNumberOfNodesByClass("vtkMRMLSelectionNode") == 0  # the app's own is never replaced

    # slicerio: the .seg.nrrd inside the bundle
    import zipfile

    with zipfile.ZipFile(paths["scene_mrb"]) as z:
        name = next(n for n in z.namelist() if n.endswith(".seg.nrrd"))
        z.extract(name, tmp_path / "x")
    inner = slicerio.read_segmentation(str(tmp_path / "x" / name))
    assert sorted(s["name"] for s in inner["segments"]) == sorted(expected_counts)


def test_write_and_reread_roundtrip_keeps_edits(tmp_path):
    ct, label, lesions = _phantom()
    scene = new_scene()
    node = create_segmentation_node(scene, label, lesions, report=REPORT, name="edited")
    node.GetSegmentation().RemoveSegment(node.GetSegmentation().GetSegmentIdBySegmentName("Lesion 2"))
    write_segmentation(node, tmp_path / "e.seg.nrrd")
    write_mrb(scene, tmp_path / "e.mrb")
    again = read_segmentation(new_scene(), tmp_path / "e.seg.nrrd")
    assert again.GetSegmentation().GetNumberOfSegments() == 2


def test_scene_available_and_import_without_slicer():
    import subprocess
    import sys

    code = ("import sys; sys.modules['slicer'] = None\n"
            "from LiverTumorAILib.scene import scene_available\n"
            "assert scene_available() is False\n"
            "import LiverTumorAILib.export\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_sub_grid_inputs_give_the_same_scene(kind, tmp_path):
    """The pipeline hands the scene only the segmented box of the CT (label, lesions, heatmap on
    a sub-grid, zero outside): nodes and files must be those of the whole-grid maps, on the CT grid."""
    direction, spacing = GEOMETRIES[kind]
    _, label, lesions = _phantom()
    ct = _image(direction, spacing)
    for img in (label, lesions):
        img.CopyInformation(ct)
    heat = sitk.Cast(label, sitk.sitkFloat32) / 2.0
    box = nonzero_slices(sitk.GetArrayViewFromImage(label))  # (z, y, x), + 1 voxel where there is room
    start = [max(box[i].start - 1, 0) for i in (2, 1, 0)]
    size = [min(box[i].stop + 1, n) - s for i, n, s in zip((2, 1, 0), label.GetSize(), start)]
    assert size != list(label.GetSize())
    sub = [sitk.RegionOfInterest(img, size, start) for img in (label, lesions, heat)]
    assert sitk.GetArrayViewFromImage(sub[0]).sum() == sitk.GetArrayViewFromImage(label).sum()

    (tmp_path / "whole").mkdir()
    (tmp_path / "boxed").mkdir()
    whole = build_result_scene(ct, None, label, lesions, heat, REPORT, tmp_path / "whole", ct_name="CT")
    boxed = build_result_scene(ct, None, *sub, REPORT, tmp_path / "boxed", ct_name="CT")
    a, b = (sitk.ReadImage(str(p["segmentation_seg_nrrd"])) for p in (whole, boxed))
    _assert_same(a, b)
    scenes = [read_mrb(p["scene_mrb"]) for p in (whole, boxed)]
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
        assert [s.GetNumberOfNodesByClass(cls) for s in scenes] == [2 if cls.startswith("vtkMRMLScalar") else 1] * 2
    heat_nodes = [next(s.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(2)
                       if s.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetAttribute(HEATMAP_ATTRIBUTE))
                  for s in scenes]
    _assert_same(sitk_from_volume_node(heat_nodes[0]), sitk_from_volume_node(heat_nodes[1]))
    in_memory = populate_scene(new_scene(), ct, None, *sub, REPORT, ct_name="CT")
    _assert_same(sitk_from_volume_node(in_memory["heatmap"]), heat)
    summaries = [_segments_summary_slicer(s.GetFirstNodeByClass("vtkMRMLSegmentationNode")) for s in scenes]
    assert summaries[0] == summaries[1] and len(summaries[0]) == 3


def test_sub_grid_off_the_reference_grid_is_refused():
    ct, label, lesions = _phantom()
    moved = sitk.RegionOfInterest(label, (10, 10, 4), (3, 3, 3))
    moved.SetOrigin([o + 0.3 for o in moved.GetOrigin()])  # not on the CT's voxel centres
    scene = new_scene()
    with pytest.raises(InputError):
        create_segmentation_node(scene, moved, None, report=REPORT, reference=ct)
    with pytest.raises(InputError):
        volume_node_from_sitk(scene, sitk.Cast(moved, sitk.sitkFloat32), "heat", reference=ct)
