"""The module's Logic against a real MRML scene (slicer-core), with the GUI-only imports stubbed.

The full Slicer app cannot run here, but the Logic's scene work (load a run's outputs into
new nodes, non-destructive replace, export the edited segmentation to label maps on the CT
grid, refresh the table, centre the views on a lesion) only needs MRML, which slicer-core has.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")
if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
    pytest.skip("slicer-core MRML classes not available", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def module(monkeypatch):
    """Import LiverTumorAI.py with qt/ctk/parameterNodeWrapper/ScriptedLoadableModule stubbed."""
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda *a: None
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda s: s
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a: None}))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    import slicer.util as slicer_util

    if not hasattr(slicer_util, "VTKObservationMixin"):
        monkeypatch.setattr(slicer_util, "VTKObservationMixin",
                            type("VTKObservationMixin", (), {"__init__": lambda self: None}), raising=False)
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLScene(scene)  # registers the labelmap/surface converters
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("LiverTumorAI_under_test", ROOT / "LiverTumorAI" / "LiverTumorAI.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._keep = (app_logic, seg_logic)
    return mod, scene


@pytest.fixture()
def run_output(tmp_path):
    """A fake `livertumorai segment` OUTDIR on an anisotropic, offset grid."""
    ct = sitk.Image(40, 30, 10, sitk.sitkInt16)
    ct.SetSpacing((1.5, 1.5, 3.0))
    ct.SetOrigin((10.0, -20.0, 5.0))
    label = np.zeros((10, 30, 40), np.uint8)
    label[2:8, 5:25, 5:35] = 1
    lesions = np.zeros(label.shape, np.uint16)
    lesions[4:6, 10:14, 10:14] = 1
    lesions[4:6, 18:22, 25:29] = 2
    label[lesions > 0] = 2
    out = tmp_path / "out"
    out.mkdir()
    for array, name in ((label, "segmentation.nii.gz"), (lesions, "lesions.nii.gz"),
                        (np.random.default_rng(0).random(label.shape).astype(np.float32), "heatmap.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(out / name))
    report = {"lesions": [{"id": 1, "volume_ml": 0.1, "centroid": [1.0, 2.0, 3.0], "malignancy_probability": 0.7,
                           "predicted_class": "malignant"},
                          {"id": 2, "volume_ml": 0.1, "centroid": [4.0, 5.0, 6.0]}],
              "models": {"dual-stream": {"version": "demo-0.1", "synthetic": True}}}
    (out / "report.json").write_text(json.dumps(report))
    return ct, label, lesions, out, report


def test_load_replace_export_refresh_jump(module, run_output, tmp_path):
    mod, scene = module
    ct, label, lesions, out, report = run_output
    from LiverTumorAILib.scene.volumes import volume_node_from_sitk

    ct_node = volume_node_from_sitk(scene, ct, "CT")
    logic = mod.LiverTumorAILogic()

    seg, table, heat = logic.loadResults(out, ct_node)
    assert seg.GetNodeReference("LiverTumorAI.RemovedFindings") is None  # nothing removed: no point list
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert names == ["Liver", "Lesion 1", "Lesion 2"]
    assert table.GetNumberOfRows() == 2 and heat is not None
    assert logic.ctForSegmentation(seg) is ct_node and logic.tableForSegmentation(seg) is table

    # centre of lesion 2's segment: x 25..28, y 18..21 voxels -> RAS (-(10 + 26.5*1.5), -(-20 + 19.5*1.5))
    r, a, s = logic.lesionCentroidRAS(seg, table, 2)
    assert abs(r - -49.75) < 1.0 and abs(a - -9.25) < 1.0 and abs(s - 18.5) < 3.1
    assert logic.jumpToLesion(seg, table, 1)

    # a second run is a new node by default: the first (possibly corrected) one is untouched
    seg_b, _, _ = logic.loadResults(out, ct_node)
    assert seg_b is not seg and seg_b.GetName() != seg.GetName()
    # explicit replace keeps the old node, hidden and renamed, and the new one takes its name
    old_name = seg.GetName()
    seg_c, _, _ = logic.loadResults(out, ct_node, replaceNode=seg)
    assert seg_c.GetName() == old_name and seg.GetName().endswith(mod.BACKUP_SUFFIX)
    assert scene.GetNodeByID(seg.GetID()) is seg

    # edited segmentation -> label maps on the CT grid, same content as the engine's
    seg_path, lesions_path, lesion_map = logic.exportLabelmaps(seg_c, ct_node, tmp_path / "exported")
    got_label = sitk.ReadImage(str(seg_path))
    assert got_label.GetSize() == ct.GetSize() and np.allclose(got_label.GetOrigin(), ct.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(got_label), label)
    got_lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(lesions_path)))
    assert sorted(np.unique(got_lesions)) == [0, 1, 2] and np.array_equal(got_lesions > 0, lesions > 0)
    assert sorted(lesion_map) == [1, 2]

    logic.refreshTable(seg_c, report, out / "report.json", lesion_map)
    assert logic.tableForSegmentation(seg_c).GetNumberOfRows() == 2

    # a run whose checks removed a finding: a point there, named, beside the segmentation
    removed = {**report, "hu_checks": {"lesions_without_contrast_removed": 1, "lesions_without_contrast_ml": [0.8],
                                       "lesions_without_contrast_centroids_ras": [[-30.0, 5.0, 12.0]]}}
    (out / "report.json").write_text(json.dumps(removed))
    seg_d, _, _ = logic.loadResults(out, ct_node)
    points = seg_d.GetNodeReference("LiverTumorAI.RemovedFindings")
    assert points is not None and points.GetNumberOfControlPoints() == 1
    assert list(points.GetNthControlPointPositionVector(0)) == [-30.0, 5.0, 12.0]
    assert "no contrast" in points.GetNthControlPointLabel(0) and points.GetName().startswith(seg_d.GetName())


def test_table_refreshed_after_correction_keeps_what_the_mri_assist_did(module, run_output, tmp_path):
    from LiverTumorAILib.scene.table import table_rows
    from LiverTumorAILib.scene.volumes import volume_node_from_sitk

    mod, scene = module
    ct, label, lesions, out, report = run_output
    segmented = {**report, "models": {"segmentation": {"name": "dual-stream", "version": "demo-0.5", "synthetic": True}}}
    segmented["lesions"] = [{**report["lesions"][0], "found_by": "dual-stream", "outline_extended_by": "fusion"},
                            {**report["lesions"][1], "found_by": "fusion", "outline_extended_by": None}]
    (out / "report.json").write_text(json.dumps(segmented))
    logic = mod.LiverTumorAILogic()
    seg, table, _ = logic.loadResults(out, volume_node_from_sitk(scene, ct, "CT"))
    before = [row["model"] for row in table_rows(table)]
    assert before[0].startswith("outline extended on the MRI by fusion") and before[1].startswith("found on the MRI by")
    _, _, lesion_map = logic.exportLabelmaps(seg, logic.ctForSegmentation(seg), tmp_path / "exported")
    reclassified = {"lesions": [{"id": i, "volume_ml": 0.1, "malignancy_probability": 0.5} for i in sorted(lesion_map)],
                    "models": {"classifier:hybrid3d": {"name": "hybrid3d", "version": "demo", "synthetic": True}}}
    logic.refreshTable(seg, reclassified, tmp_path / "report.json", lesion_map)  # `classify` knows nothing of the MRI
    after = [row["model"] for row in table_rows(logic.tableForSegmentation(seg))]
    assert after[0].startswith("outline extended on the MRI by fusion")
    assert after[1].startswith("found on the MRI by fusion")


def test_weights_description_flags_synthetic(module, tmp_path):
    mod, _scene = module
    folder = tmp_path / "w" / "dual-stream"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "dual-stream", "version": "demo-0.1",
                                                      "training_data": {"synthetic": True}}))
    info = mod.LiverTumorAILogic().describeWeights(str(tmp_path / "w"), model="dual-stream")
    assert info["name"] == "dual-stream" and info["version"] == "demo-0.1" and info["synthetic"] is True
    with pytest.raises(ValueError):
        mod.LiverTumorAILogic().describeWeights(str(tmp_path), model="tam-unet")


def test_a_finished_run_keeps_every_warning_of_its_report(module, run_output):
    """The warnings flash by one at a time during a run; the finish line counts them and hands them
    on (the panel shows them on hover), so a T1-like MRI or a removed finding is not missed."""
    from types import SimpleNamespace

    from LiverTumorAILib.scene.volumes import volume_node_from_sitk

    mod, scene = module
    ct, _, _, out, report = run_output
    warned = ["the lesions are darker than the liver on this MRI ...: lesions classified by the CT alone",
              "1 lesion(s) the CT barely shows were added from the MRI by the fusion model (ids 2): check them"]
    (out / "report.json").write_text(json.dumps({**report, "warnings": warned}))
    logic = mod.LiverTumorAILogic()
    node = SimpleNamespace(heatmapOpacity=0.5, resultSegmentation=None, resultTable=None, resultHeatmap=None)
    job = mod._Job("segment", None, out.parent, ctNode=volume_node_from_sitk(scene, ct, "CT"), replaceNode=None,
                   parameterNode=node)

    summary, warnings = logic._loadJobOutputs(job)

    assert warnings == warned and "2 warning(s)" in summary and summary.startswith("Done: 2 lesion(s)")
    assert node.resultSegmentation is not None and node.resultTable.GetNumberOfRows() == 2
    (out / "report.json").write_text(json.dumps(report))  # none: no count
    summary, warnings = logic._loadJobOutputs(job)
    assert warnings == [] and "warning" not in summary
