"""LiverTumorAI: liver and liver-tumour segmentation, lesion classification and heatmaps.

This file is deliberately thin (DESIGN.md §2, §7):
- the Widget only wires the Qt panel to the Logic;
- the Logic only moves data between the MRML scene and the engine; the engine runs in a
  separate Python process (LiverTumorAILib.runner), so a run never freezes Slicer, can be
  cancelled, and a crash or out-of-memory kill cannot take Slicer down;
- nothing heavy is imported at module import time: torch, monai, numpy and SimpleITK are
  imported inside the functions that need them (Slicer scans every module at start-up).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated, Any, Dict, List, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorAILib import DEMO_WEIGHTS_NOTICE, dependencies, runner

#: (value passed to `--model`, label in the panel)
MODELS = [
    ("dual-stream", "Dual-stream 2.5D CNN (CT)"),
    ("tam-unet", "TAM-U-Net (CT)"),
    ("fusion", "CT+MRI fusion (needs an MRI)"),
]
#: (value passed to `--device`, label in the panel)
DEVICES = [("auto", "Auto (GPU if available)"), ("cuda", "CUDA GPU"), ("cpu", "CPU")]

REPORT_ATTRIBUTE = "LiverTumorAI.ReportPath"
CT_ATTRIBUTE = "LiverTumorAI.CTNodeID"
BACKUP_SUFFIX = " (before replace)"


#
# Module
#
class LiverTumorAI(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and Help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor AI")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAI developers"]
        self.parent.helpText = _(
            "Segments the liver and liver lesions on an abdominal CT (optionally with an MRI of the same "
            "patient), classifies each lesion (benign / malignant), shows the model's attention heatmap, and "
            "lists lesion volume, longest diameter, mean HU and malignancy probability. Correct the result in "
            "Segment Editor, press 'Update table' to re-measure, then export for planning.<br>"
            "<b>The bundled weights are demo weights trained on synthetic phantoms - not for clinical use.</b> "
            "See <a href='https://github.com/livertumorai/SlicerLiverTumorAI'>the project page</a> to retrain "
            "on real data."
        )
        self.parent.acknowledgementText = _(
            "Models after published dual-stream 2.5D, TAM-U-Net and CT+MRI fusion architectures; built on "
            "3D Slicer, PyTorch, MONAI and SimpleITK."
        )


#
# Parameter node
#
@parameterNodeWrapper
class LiverTumorAIParameterNode:
    """GUI state, saved with the scene.

    model/device are written by the Widget (their combo boxes show labels, store values).
    """

    ctVolume: vtkMRMLScalarVolumeNode
    mriVolume: vtkMRMLScalarVolumeNode
    model: str = "dual-stream"
    device: str = "auto"
    classify: bool = True
    heatmap: bool = True
    huChecks: bool = True
    mriAssist: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    weightsFolder: str = ""
    replacePrevious: bool = False
    resultSegmentation: vtkMRMLSegmentationNode
    resultTable: vtkMRMLTableNode
    resultHeatmap: vtkMRMLScalarVolumeNode
    exportSegNrrd: bool = True
    exportNifti: bool = True
    exportDicomSeg: bool = False
    exportStl: bool = False
    exportObj: bool = False
    exportReport: bool = True
    exportCoordinates: str = "LPS"
    exportFolder: pathlib.Path


#
# Widget
#
class LiverTumorAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to LiverTumorAILogic; holds no processing code."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[LiverTumorAILogic] = None
        self._parameterNode: Optional[LiverTumorAIParameterNode] = None
        self._parameterNodeGuiTag = None
        self._timer: Optional[qt.QTimer] = None
        self._updatingGui = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorAILogic()

        for value, label in MODELS:
            self.ui.modelComboBox.addItem(label, value)
        for value, label in DEVICES:
            self.ui.deviceComboBox.addItem(label, value)
        for value in ("LPS", "RAS"):
            self.ui.coordinateSystemComboBox.addItem(value, value)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.visible = False

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadWeightsButton.connect("clicked(bool)", self.onLoadWeights)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.coordinateSystemComboBox.connect("currentIndexChanged(int)", self.onCoordinatesChanged)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultSelected)
        self.ui.tableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.editSegmentationButton.connect("clicked(bool)", self.onEditSegmentation)
        self.ui.updateTableButton.connect("clicked(bool)", self.onUpdateTable)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()
        self.logic.startDeviceProbe()
        self._timer.start()
        self._updateWeightsLabel()

    def cleanup(self) -> None:
        """Called when the application closes: never leave an engine process behind."""
        if self._timer:
            self._timer.stop()
        if self.logic:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.ctVolume = firstVolume

    def setParameterNode(self, parameterNode: Optional[LiverTumorAIParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" property in the .ui are connected here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        """Parts of the panel that connectGui cannot express (labels vs values, enabling)."""
        pn = self._parameterNode
        if pn is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            hasMri = pn.mriVolume is not None
            fusionIndex = [v for v, _label in MODELS].index("fusion")
            self.ui.modelComboBox.model().item(fusionIndex).setEnabled(hasMri)
            if pn.model == "fusion" and not hasMri:
                pn.model = "dual-stream"
            _setComboValue(self.ui.modelComboBox, pn.model)
            _setComboValue(self.ui.deviceComboBox, pn.device)
            _setComboValue(self.ui.coordinateSystemComboBox, pn.exportCoordinates)
            self.ui.heatmapOpacitySlider.enabled = pn.heatmap
            running = self.logic.isRunning()
            self.ui.applyButton.text = _("Cancel") if running else _("Apply")
            self.ui.applyButton.enabled = running or pn.ctVolume is not None
            self.ui.applyButton.toolTip = (_("Stop the run (the engine process and its workers)") if running
                                           else _("Segment liver and lesions") if pn.ctVolume
                                           else _("Select a CT volume first"))
            hasResult = pn.resultSegmentation is not None
            for button in (self.ui.editSegmentationButton, self.ui.updateTableButton, self.ui.exportButton):
                button.enabled = hasResult and not running
            self.ui.loadWeightsButton.enabled = not running
            self.ui.tableView.setMRMLTableNode(pn.resultTable)
        finally:
            self._updatingGui = False

    # -- simple GUI -> parameter handlers ----------------------------------------------
    def onModelChanged(self, index: int) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onCoordinatesChanged(self, index: int) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.exportCoordinates = self.ui.coordinateSystemComboBox.itemData(index)

    def onOpacityChanged(self, value: float) -> None:
        self.logic.setHeatmapOpacity(value)

    def onResultSelected(self, node) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.resultTable = self.logic.tableForSegmentation(node)

    def onLoadWeights(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder with model weights (manifest.json + .safetensors)"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("These weights cannot be used."), waitCursor=True):
            self.logic.describeWeights(folder)  # raises with a readable message if unusable
            self._parameterNode.weightsFolder = folder
        self._updateWeightsLabel()

    def _updateWeightsLabel(self) -> None:
        pn = self._parameterNode
        model = pn.model if pn else "dual-stream"
        info = self.logic.describeWeights(pn.weightsFolder if pn else "", model=model, strict=False)
        text = f"{info['name']} ({info['version']})" if info.get("name") else _("no weights found")
        if info.get("folder"):
            text += f" - <span style='color:gray'>{info['folder']}</span>"
        if info.get("synthetic"):
            text += "<br><b>" + _("demo weights trained on synthetic phantoms — not for clinical use") + "</b>"
        self.ui.weightsLabel.text = text

    # -- runs ---------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
            self._updateGui()
            return
        pn = self._parameterNode
        if pn.replacePrevious and pn.resultSegmentation is not None:
            if not slicer.util.confirmOkCancelDisplay(
                _("The result '{name}' will be replaced. Its current version, including manual corrections, is "
                  "kept hidden as '{name}{suffix}'.").format(name=pn.resultSegmentation.GetName(),
                                                             suffix=BACKUP_SUFFIX)):
                return
        with slicer.util.tryWithErrorDisplay(_("LiverTumorAI could not start."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self.logic.startSegmentation(pn)
            self._showProgress(0.0, _("Starting..."))
        self._updateGui()

    def onUpdateTable(self) -> None:
        pn = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not update the lesion table."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self.logic.startUpdateTable(pn)
            self._showProgress(0.0, _("Re-measuring lesions..."))
        self._updateGui()

    def onExport(self) -> None:
        pn = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.exportResult(pn)
            self.ui.statusLabel.text = _("Exported {count} file(s) to {folder}").format(
                count=len(written), folder=pn.exportFolder)
        self._updateGui()

    def onTimer(self) -> None:
        """Poll the background process (GUI thread only; the runner's threads never touch Qt)."""
        for event in self.logic.pollEvents():
            kind = event.get("event")
            if kind == "progress":
                self._showProgress(float(event.get("fraction") or 0.0),
                                   f"{event.get('stage', '')}: {event.get('message', '')}".strip(": "))
            elif kind == "warning":
                logging.warning("LiverTumorAI: %s", event.get("message"))
                self.ui.statusLabel.text = str(event.get("message"))
            elif kind == "log":
                logging.info("LiverTumorAI engine: %s", event.get("message"))
            elif kind == "devices":
                self.ui.deviceInfoLabel.text = event.get("text", "")
            elif kind == "finished":
                self._onFinished(event)

    def _onFinished(self, event: Dict[str, Any]) -> None:
        self.ui.progressBar.visible = False
        if event.get("error"):
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("LiverTumorAI: {message}").format(message=event["error"]),
                                     detailedText=event.get("details", ""))
        elif event.get("cancelled"):
            self.ui.statusLabel.text = _("Cancelled.")
        else:
            self.ui.statusLabel.text = event.get("summary", _("Done."))
        self.ui.statusLabel.toolTip = "\n\n".join(event.get("warnings") or [])
        self._updateWeightsLabel()
        self._updateGui()

    def _showProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = int(round(1000 * max(0.0, min(1.0, fraction))))
        self.ui.statusLabel.text = message

    # -- review -------------------------------------------------------------------------
    def onTableClicked(self, index) -> None:
        lesionId = index.sibling(index.row(), 0).data()
        try:
            self.logic.jumpToLesion(self._parameterNode.resultSegmentation, self._parameterNode.resultTable,
                                    int(float(lesionId)))
        except (TypeError, ValueError):
            pass

    def onEditSegmentation(self) -> None:
        pn = self._parameterNode
        self.logic.editInSegmentEditor(pn.resultSegmentation, self.logic.ctForSegmentation(pn.resultSegmentation)
                                       or pn.ctVolume)


def _setComboValue(combo, value: str) -> None:
    index = combo.findData(value)
    if index >= 0 and combo.currentIndex != index:
        combo.currentIndex = index


#
# Logic
#
class _Job:
    """A background engine run and what to do with its output."""

    def __init__(self, kind: str, proc: runner.ProcessRunner, workDir: pathlib.Path, **context: Any) -> None:
        self.kind = kind
        self.proc = proc
        self.workDir = workDir
        self.context = context


class LiverTumorAILogic(ScriptedLoadableModuleLogic):
    """Moves data between the MRML scene and the engine process; usable without the GUI.

    Start a run with startSegmentation()/startUpdateTable(), then call pollEvents() (the
    Widget does it from a QTimer; scripts can call waitForJob()) until a `finished` event.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job: Optional[_Job] = None
        self._probe: Optional[runner.ProcessRunner] = None
        self.deviceInfo: Optional[Dict[str, Any]] = None
        self._deviceReported = False

    def getParameterNode(self) -> LiverTumorAIParameterNode:
        return LiverTumorAIParameterNode(super().getParameterNode())

    # -- environment ----------------------------------------------------------------------
    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python for the engine process (same site-packages as pip_install)."""
        return shutil.which("PythonSlicer") or sys.executable

    def startDeviceProbe(self) -> None:
        """Ask a child process what torch sees; importing torch here would stall the GUI."""
        self._deviceReported = False
        if dependencies.missing_packages(["torch"]):
            self.deviceInfo = {"torch": None}
            return
        self._probe = runner.ProcessRunner(runner.device_probe_command(self.pythonExecutable())).start()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what the engine needs; torch through the PyTorch extension, the rest with pip."""
        missing = dependencies.missing_packages()
        if not missing:
            return True
        if dependencies.TORCH in missing:
            try:
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
            except ModuleNotFoundError:
                slicer.util.errorDisplay(_(
                    "LiverTumorAI needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                    "restart Slicer, and press Apply again; it installs the PyTorch build that matches this "
                    "computer's GPU."))
                return False
            slicer.util.infoDisplay(_(
                "PyTorch is installed by the PyTorch extension, which picks the build (CUDA or CPU) for this "
                "computer. This can take several minutes."))
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation) is None:
                return False
        pipRequirements = dependencies.pip_requirements(dependencies.missing_packages())
        if pipRequirements:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    dependencies.describe_missing(dependencies.missing_packages())
                    + "\n\n" + _("Install now? This can take a few minutes.")):
                return False
            with slicer.util.WaitCursor():
                slicer.util.pip_install(pipRequirements)
        still = dependencies.missing_packages()
        if still:
            raise RuntimeError(_("These Python packages are still missing after installation: {names}").format(
                names=", ".join(still)))
        self.startDeviceProbe()
        return True

    def describeWeights(self, folder: str = "", model: str = "dual-stream", strict: bool = True) -> Dict[str, Any]:
        """Name, version and 'synthetic' flag of the weights a run would use (manifest only, no torch)."""
        candidates: List[pathlib.Path] = []
        if folder:
            base = pathlib.Path(folder)
            candidates += [base, base / model]
        moduleDir = pathlib.Path(__file__).resolve().parent
        if not (folder and strict):  # a folder the user picked must itself hold the weights
            candidates += [moduleDir / "Resources" / "Models" / model,
                           moduleDir.parent / "Resources" / "Models" / model]
        for candidate in candidates:
            manifestPath = candidate / "manifest.json"
            if manifestPath.is_file():
                try:
                    manifest = json.loads(manifestPath.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    if strict:
                        raise ValueError(f"{manifestPath}: not a readable weights manifest ({exc})") from exc
                    continue
                training = manifest.get("training_data") or {}
                return {"name": manifest.get("name", candidate.name), "version": manifest.get("version", "?"),
                        "synthetic": bool(training.get("synthetic")), "folder": str(candidate) if folder else ""}
        if strict and folder:
            raise ValueError(f"{folder}: no manifest.json in this folder or in a '{model}' subfolder")
        return {}

    def isRunning(self) -> bool:
        return self._job is not None

    # -- runs -------------------------------------------------------------------------------
    def _newWorkDir(self, kind: str) -> pathlib.Path:
        base = pathlib.Path(slicer.app.temporaryPath) / "LiverTumorAI"
        workDir = base / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{int(time.time() * 1000) % 1000:03d}"
        workDir.mkdir(parents=True, exist_ok=False)
        return workDir

    @staticmethod
    def _writeVolume(volumeNode, path: pathlib.Path) -> pathlib.Path:
        """Write a volume (transforms hardened, LPS file geometry) through the scene bridge."""
        import SimpleITK as sitk

        from LiverTumorAILib.scene.volumes import sitk_from_volume_node

        sitk.WriteImage(sitk_from_volume_node(volumeNode), str(path), True)
        return path

    def startSegmentation(self, pn: LiverTumorAIParameterNode) -> None:
        """Write the inputs, start `livertumorai segment` in the background."""
        if self._job is not None:
            raise RuntimeError(_("A LiverTumorAI run is already in progress."))
        if pn.ctVolume is None:
            raise ValueError(_("Select a CT volume."))
        if pn.model == "fusion" and pn.mriVolume is None:
            raise ValueError(_("The CT+MRI fusion model needs an MRI volume."))
        workDir = self._newWorkDir("segment")
        ctPath = self._writeVolume(pn.ctVolume, workDir / "ct.nrrd")
        mriPath = self._writeVolume(pn.mriVolume, workDir / "mri.nrrd") if pn.mriVolume is not None else None
        command = runner.segment_command(
            ctPath, workDir / "out", mri=mriPath, model=pn.model, device=pn.device, classify=pn.classify,
            heatmap=pn.heatmap, weights=pn.weightsFolder or None, python=self.pythonExecutable(),
            hu_checks=pn.huChecks, mri_assist=pn.mriAssist)
        logging.info("LiverTumorAI: %s", " ".join(command))
        self._job = _Job("segment", runner.ProcessRunner(command).start(), workDir, parameterNode=pn,
                         ctNode=pn.ctVolume, replaceNode=pn.resultSegmentation if pn.replacePrevious else None)

    def startUpdateTable(self, pn: LiverTumorAIParameterNode) -> None:
        """Export the (edited) segmentation and run `livertumorai classify CT --seg SEG` in the background."""
        if self._job is not None:
            raise RuntimeError(_("A LiverTumorAI run is already in progress."))
        segNode = pn.resultSegmentation
        ctNode = self.ctForSegmentation(segNode) or pn.ctVolume
        if segNode is None or ctNode is None:
            raise ValueError(_("Select a result segmentation (and its CT)."))
        workDir = self._newWorkDir("classify")
        ctPath = self._writeVolume(ctNode, workDir / "ct.nrrd")
        segPath, _lesionsPath, lesionSegments = self.exportLabelmaps(segNode, ctNode, workDir)
        command = runner.classify_command(ctPath, segPath, workDir / "out", device=pn.device,
                                          weights=pn.weightsFolder or None, python=self.pythonExecutable())
        self._job = _Job("classify", runner.ProcessRunner(command).start(), workDir, parameterNode=pn,
                         segNode=segNode, lesionSegments=lesionSegments)

    def cancel(self) -> None:
        if self._job is not None:
            self._job.proc.cancel()

    def waitForJob(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Headless use (tests, scripts): block until the run ends and return its `finished` event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.pollEvents():
                if event.get("event") == "finished":
                    return event
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
            time.sleep(0.1)

    def pollEvents(self) -> List[Dict[str, Any]]:
        """Events of the device probe and the current run; ends a run with a `finished` event."""
        events: List[Dict[str, Any]] = []
        if self._probe is not None:
            for event in self._probe.poll():
                if event.get("event") == "exit":
                    self.deviceInfo = self._parseProbe(self._probe.result())
                    self._probe = None
                    self._deviceReported = True
                    events.append({"event": "devices", "info": self.deviceInfo,
                                   "text": runner.format_device_info(self.deviceInfo)})
        elif self.deviceInfo is not None and not self._deviceReported:
            self._deviceReported = True
            events.append({"event": "devices", "info": self.deviceInfo,
                           "text": runner.format_device_info(self.deviceInfo)})
        if self._job is None:
            return events
        job = self._job
        for event in job.proc.poll():
            if event.get("event") != "exit":
                events.append(event)
                continue
            self._job = None
            result = job.proc.result()
            finished: Dict[str, Any] = {"event": "finished", "kind": job.kind, "cancelled": result.cancelled}
            if result.cancelled:
                pass
            elif not result.ok:
                finished["error"] = result.error
                finished["details"] = "\n".join(result.stderr_tail[-40:])
            else:
                try:
                    finished["summary"], finished["warnings"] = self._loadJobOutputs(job)
                except Exception as exc:  # loading must not kill the timer; show it instead
                    logging.exception("LiverTumorAI: loading results failed")
                    finished["error"] = str(exc)
            events.append(finished)
        return events

    @staticmethod
    def _parseProbe(result: runner.RunResult) -> Dict[str, Any]:
        for line in reversed(result.stdout.strip().splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return {"torch": None, "error": result.error}

    def _loadJobOutputs(self, job: _Job) -> tuple[str, list[str]]:
        """Load a finished run's outputs into the scene; (one-line summary, the report's warnings)."""
        if job.kind == "export":
            return _("Exported to {folder}").format(folder=job.context["outDir"]), []
        outDir = job.workDir / "out"
        reportPath = outDir / "report.json"
        report = json.loads(reportPath.read_text(encoding="utf-8")) if reportPath.is_file() else {}
        pn = job.context["parameterNode"]
        if job.kind == "segment":
            segNode, tableNode, heatmapNode = self.loadResults(
                outDir, job.context["ctNode"], replaceNode=job.context["replaceNode"],
                heatmapOpacity=pn.heatmapOpacity)
            pn.resultSegmentation = segNode
            pn.resultTable = tableNode
            pn.resultHeatmap = heatmapNode
        else:
            self.refreshTable(job.context["segNode"], report, reportPath, job.context["lesionSegments"])
        lesions = report.get("lesions") or []
        summary = _("Done: {count} lesion(s)").format(count=len(lesions))
        if report.get("liver_volume_ml") is not None:
            summary += _(", liver {volume:.0f} ml").format(volume=float(report["liver_volume_ml"]))
        from LiverTumorAILib.removed_findings import removed_findings

        removed = len(removed_findings(report)) if job.kind == "segment" else 0
        if removed:
            summary += _("; {count} finding(s) the checks removed are marked as points to look at").format(count=removed)
        from LiverTumorAILib.scene.terminology import is_synthetic

        warnings = [str(w) for w in report.get("warnings") or []]
        if warnings:  # shown one by one while the run went; here so none goes unseen
            summary += _("; {count} warning(s): hover here").format(count=len(warnings))
        if is_synthetic(report):
            summary += ". " + DEMO_WEIGHTS_NOTICE
        return summary, warnings

    # -- scene ------------------------------------------------------------------------------
    def loadResults(self, outDir: pathlib.Path, ctNode, replaceNode=None, heatmapOpacity: float = 0.5):
        """Segmentation (new node unless replaceNode), lesion table, heatmap and the point list of
        findings the checks removed (so each can be looked at) from a run's OUTDIR.

        Re-running never overwrites a corrected segmentation: by default a new node is made.
        With replaceNode, the old node is kept (hidden, renamed '<name> (before replace)') and the
        new result takes its name, so the replace can be undone by deleting one node.
        """
        import SimpleITK as sitk

        from LiverTumorAILib.scene import findings as sceneFindings
        from LiverTumorAILib.scene import heatmap as sceneHeatmap
        from LiverTumorAILib.scene import segmentation as sceneSegmentation
        from LiverTumorAILib.scene import table as sceneTable

        outDir = pathlib.Path(outDir)
        reportPath = outDir / "report.json"
        report = json.loads(reportPath.read_text(encoding="utf-8")) if reportPath.is_file() else {}
        label = sitk.ReadImage(str(outDir / "segmentation.nii.gz"))
        lesionsPath = outDir / "lesions.nii.gz"
        lesions = sitk.ReadImage(str(lesionsPath)) if lesionsPath.is_file() else None

        scene = slicer.mrmlScene
        name = None
        if replaceNode is not None:
            name = replaceNode.GetName()
            replaceNode.SetName(scene.GenerateUniqueName(name + BACKUP_SUFFIX))
            if replaceNode.GetDisplayNode():
                replaceNode.GetDisplayNode().SetVisibility(False)
        segNode = sceneSegmentation.create_segmentation_node(scene, label, lesions, ct_node=ctNode, report=report,
                                                             name=name)
        segNode.SetAttribute(REPORT_ATTRIBUTE, str(reportPath))
        if ctNode is not None:
            segNode.SetAttribute(CT_ATTRIBUTE, ctNode.GetID())
        segNode.CreateClosedSurfaceRepresentation()
        tableNode = sceneTable.create_lesion_table(scene, report, f"{segNode.GetName()} lesions")
        tableNode.SetAttribute(REPORT_ATTRIBUTE, str(reportPath))
        segNode.SetNodeReferenceID("LiverTumorAI.Table", tableNode.GetID())

        removedNode = sceneFindings.create_removed_findings_markups(scene, report,
                                                                    f"{segNode.GetName()} removed findings")
        if removedNode is not None:
            segNode.SetNodeReferenceID("LiverTumorAI.RemovedFindings", removedNode.GetID())

        heatmapNode = None
        heatmapPath = outDir / "heatmap.nii.gz"
        if heatmapPath.is_file():
            heatmapNode = sceneHeatmap.add_heatmap_node(scene, sitk.ReadImage(str(heatmapPath)),
                                                        f"{segNode.GetName()} heatmap", ct_node=ctNode,
                                                        opacity=heatmapOpacity)
            segNode.SetNodeReferenceID("LiverTumorAI.Heatmap", heatmapNode.GetID())
        elif ctNode is not None:
            slicer.util.setSliceViewerLayers(background=ctNode, foreground=None)
        return segNode, tableNode, heatmapNode

    def tableForSegmentation(self, segNode):
        return segNode.GetNodeReference("LiverTumorAI.Table") if segNode is not None else None

    def ctForSegmentation(self, segNode):
        if segNode is None:
            return None
        ctId = segNode.GetAttribute(CT_ATTRIBUTE)
        ctNode = slicer.mrmlScene.GetNodeByID(ctId) if ctId else None
        return ctNode or segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole())

    def setHeatmapOpacity(self, opacity: float) -> None:
        from LiverTumorAILib.scene.heatmap import set_heatmap_opacity

        set_heatmap_opacity(slicer.mrmlScene, opacity)

    @staticmethod
    def splitSegments(segNode) -> tuple:
        """(liver segment IDs, lesion segment IDs): 'Liver' by name, every other segment is a lesion."""
        segmentation = segNode.GetSegmentation()
        liver, lesions = [], []
        for segmentId in segmentation.GetSegmentIDs():
            name = segmentation.GetSegment(segmentId).GetName().strip().lower()
            (liver if name == "liver" else lesions).append(segmentId)
        return liver, lesions

    def exportLabelmaps(self, segNode, ctNode, folder: pathlib.Path):
        """Write segmentation.nii.gz (0/1 liver/2 tumour) and lesions.nii.gz (k = k-th lesion segment) on the CT grid.

        Returns (segmentation path, lesions path, {lesion id: segment ID}).
        """
        import numpy as np
        import SimpleITK as sitk

        from LiverTumorAILib.scene.volumes import sitk_from_volume_node

        reference = sitk_from_volume_node(ctNode)
        liverIds, lesionIds = self.splitSegments(segNode)

        def rasterise(segmentIds: List[str]):
            if not segmentIds:
                return np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint16)
            labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            try:
                if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                        segNode, segmentIds, labelNode, ctNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
                    raise RuntimeError(f"{segNode.GetName()}: could not export segments to a label map")
                image = sitk_from_volume_node(labelNode)
            finally:
                slicer.mrmlScene.RemoveNode(labelNode)
            image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            return sitk.GetArrayFromImage(image).astype(np.uint16)

        liver = rasterise(liverIds)
        lesions = rasterise(lesionIds)
        label = np.zeros(liver.shape, np.uint8)
        label[liver > 0] = 1
        label[lesions > 0] = 2
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for array, fileName in ((label, "segmentation.nii.gz"), (lesions, "lesions.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(reference)
            sitk.WriteImage(image, str(folder / fileName), True)
            paths.append(folder / fileName)
        return paths[0], paths[1], {index + 1: segmentId for index, segmentId in enumerate(lesionIds)}

    def refreshTable(self, segNode, report: Dict[str, Any], reportPath: pathlib.Path,
                     lesionSegments: Dict[int, str]) -> None:
        """Refill the segmentation's lesion table in place (same node) from a new report."""
        from LiverTumorAILib.scene import table as sceneTable
        from LiverTumorAILib.scene.terminology import LESION_ID_TAG, MALIGNANCY_TAG

        scene = slicer.mrmlScene
        segmentation = segNode.GetSegmentation()
        report = dict(report)
        report["lesions"] = [self._withProvenance(lesion, segmentation, lesionSegments)
                             for lesion in report.get("lesions") or []]
        tableNode = self.tableForSegmentation(segNode)
        fresh = sceneTable.create_lesion_table(scene, report, f"{segNode.GetName()} lesions")
        if tableNode is None:
            tableNode = fresh
            segNode.SetNodeReferenceID("LiverTumorAI.Table", tableNode.GetID())
        else:
            tableNode.GetTable().DeepCopy(fresh.GetTable())
            tableNode.Modified()
            scene.RemoveNode(fresh)
        tableNode.SetAttribute(REPORT_ATTRIBUTE, str(reportPath))
        segNode.SetAttribute(REPORT_ATTRIBUTE, str(reportPath))
        for lesion in report.get("lesions") or []:
            segmentId = lesionSegments.get(int(lesion.get("id", -1)))
            segment = segmentation.GetSegment(segmentId) if segmentId else None
            if segment is None:
                continue
            segment.SetTag(LESION_ID_TAG, str(lesion["id"]))
            if lesion.get("malignancy_probability") is not None:
                segment.SetTag(MALIGNANCY_TAG, f"{float(lesion['malignancy_probability']):.4f}")

    @staticmethod
    def _withProvenance(lesion: Dict[str, Any], segmentation, lesionSegments: Dict[int, str]) -> Dict[str, Any]:
        """`lesion` (a classify row) with what the MRI assist did to its segment, kept as tags."""
        from LiverTumorAILib.scene.segmentation import lesion_provenance

        segmentId = lesionSegments.get(int(lesion.get("id", -1)))
        segment = segmentation.GetSegment(segmentId) if segmentId else None
        return {**lesion, **lesion_provenance(segment)} if segment is not None else lesion

    def lesionCentroidRAS(self, segNode, tableNode, lesionId: int) -> Optional[List[float]]:
        """Current centre of the lesion's segment (after edits), else the report's centroid."""
        if segNode is not None:
            from LiverTumorAILib.scene.segmentation import segment_tag
            from LiverTumorAILib.scene.terminology import LESION_ID_TAG

            segmentation = segNode.GetSegmentation()
            for segmentId in segmentation.GetSegmentIDs():
                segment = segmentation.GetSegment(segmentId)
                if segment_tag(segment, LESION_ID_TAG) == str(lesionId):
                    center = segNode.GetSegmentCenterRAS(segmentId)
                    if center is not None:
                        return [float(c) for c in center]
        reportPath = (tableNode.GetAttribute(REPORT_ATTRIBUTE) if tableNode is not None else None)
        if reportPath and os.path.isfile(reportPath):
            with open(reportPath, encoding="utf-8") as f:
                for lesion in json.load(f).get("lesions") or []:
                    if int(lesion.get("id", -1)) == lesionId and lesion.get("centroid"):
                        return [float(c) for c in lesion["centroid"]][:3]
        return None

    def jumpToLesion(self, segNode, tableNode, lesionId: int) -> bool:
        """Centre every slice view on the lesion."""
        ras = self.lesionCentroidRAS(segNode, tableNode, lesionId)
        if ras is None:
            return False
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return True

    def editInSegmentEditor(self, segNode, ctNode) -> None:
        """Open Segment Editor on this segmentation with its CT as source volume."""
        if segNode is None:
            raise ValueError(_("Select a result segmentation first."))
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segNode)
        if ctNode is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(ctNode)
            else:  # Slicer < 5.4
                editor.setMasterVolumeNode(ctNode)

    # -- export -----------------------------------------------------------------------------
    @staticmethod
    def _safeFileName(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip() or "segmentation"

    def exportResult(self, pn: LiverTumorAIParameterNode) -> List[str]:
        """Write the selected (corrected) segmentation in the checked formats; returns the files.

        Slicer-native formats are written here (fast); DICOM SEG and the HTML report go through
        `livertumorai export` in the background (highdicom, rendering) and finish with an event.
        """
        segNode = pn.resultSegmentation
        if segNode is None:
            raise ValueError(_("Select a result segmentation first."))
        ctNode = self.ctForSegmentation(segNode) or pn.ctVolume
        folder = pathlib.Path(str(pn.exportFolder)) if str(pn.exportFolder) not in ("", ".") else None
        if folder is None:
            raise ValueError(_("Choose an output folder."))
        folder.mkdir(parents=True, exist_ok=True)
        base = self._safeFileName(segNode.GetName())
        written: List[str] = []
        if pn.exportSegNrrd:
            path = folder / f"{base}.seg.nrrd"
            slicer.util.exportNode(segNode, str(path))
            written.append(str(path))
        if pn.exportNifti:
            if ctNode is None:
                raise ValueError(_("The CT of this segmentation is not in the scene."))
            segPath, lesionsPath, _lesionMap = self.exportLabelmaps(segNode, ctNode, folder / f"{base}_nifti")
            written += [str(segPath), str(lesionsPath)]
        lps = pn.exportCoordinates == "LPS"
        segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic
        for enabled, fileFormat, merge in ((pn.exportStl, "STL", False), (pn.exportObj, "OBJ", True)):
            if not enabled:
                continue
            surfaceFolder = folder / f"{base}_{fileFormat.lower()}"
            surfaceFolder.mkdir(exist_ok=True)
            if not segmentationsLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
                    str(surfaceFolder), segNode, None, fileFormat, lps, 1.0, merge):
                raise RuntimeError(_("{format} export failed").format(format=fileFormat))
            written.append(str(surfaceFolder))
        if pn.exportReport:
            tableNode = pn.resultTable or self.tableForSegmentation(segNode)
            if tableNode is not None:
                path = folder / f"{base}_lesions.csv"
                slicer.util.exportNode(tableNode, str(path))
                written.append(str(path))
            reportPath = segNode.GetAttribute(REPORT_ATTRIBUTE)
            if reportPath and os.path.isfile(reportPath):
                shutil.copyfile(reportPath, folder / f"{base}_report.json")
                written.append(str(folder / f"{base}_report.json"))
        engineFormats = (["dicom-seg"] if pn.exportDicomSeg else []) + (["html"] if pn.exportReport else [])
        if engineFormats and ctNode is not None:
            self.startEngineExport(segNode, ctNode, folder / f"{base}_dicom", engineFormats, pn)
            written.append(str(folder / f"{base}_dicom") + " (" + _("in progress") + ")")
        return written

    def ctDicomFolder(self, ctNode) -> Optional[str]:
        """Folder of the CT's DICOM files when it was loaded from Slicer's DICOM database."""
        uids = (ctNode.GetAttribute("DICOM.instanceUIDs") or "").split() if ctNode is not None else []
        if not uids:
            return None
        database = slicer.app.dicomDatabase()
        path = database.fileForInstance(uids[0]) if database else ""
        return str(pathlib.Path(path).parent) if path else None

    def startEngineExport(self, segNode, ctNode, outDir: pathlib.Path, formats: List[str],
                          pn: LiverTumorAIParameterNode) -> None:
        """`livertumorai export` of the current (edited) segmentation, in the background."""
        if self._job is not None:
            raise RuntimeError(_("A LiverTumorAI run is already in progress."))
        ctDicom = self.ctDicomFolder(ctNode)
        if "dicom-seg" in formats and ctDicom is None:
            raise ValueError(_("DICOM SEG needs the CT loaded through the DICOM module (this CT has no DICOM "
                               "instance UIDs). Export NIfTI or .seg.nrrd instead."))
        workDir = self._newWorkDir("export")
        resultDir = workDir / "result"
        self.exportLabelmaps(segNode, ctNode, resultDir)
        self._writeVolume(ctNode, resultDir / "ct.nrrd")
        reportPath = segNode.GetAttribute(REPORT_ATTRIBUTE)
        report = {}
        if reportPath and os.path.isfile(reportPath):
            report = json.loads(pathlib.Path(reportPath).read_text(encoding="utf-8"))
        report.setdefault("inputs", {})["ct"] = "ct.nrrd"
        (resultDir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        command = runner.export_command(resultDir, outDir, formats, ct_dicom=ctDicom,
                                        coordinates=pn.exportCoordinates, overwrite=True,
                                        python=self.pythonExecutable())
        self._job = _Job("export", runner.ProcessRunner(command).start(), workDir, parameterNode=pn,
                         outDir=outDir)


#
# Test
#
class LiverTumorAITest(ScriptedLoadableModuleTest):
    """The whole flow inside Slicer on a synthetic phantom: phantom -> Apply -> scene checks."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_LiverTumorAI_phantom_end_to_end()

    def test_LiverTumorAI_phantom_end_to_end(self) -> None:
        self.delayDisplay("Generating a phantom with `livertumorai phantom`")
        logic = LiverTumorAILogic()
        if dependencies.missing_packages():
            self.skipTest(f"missing Python packages: {dependencies.missing_packages()}")
        phantomDir = logic._newWorkDir("test-phantom") / "phantom"
        result = runner.run_to_completion(
            runner.phantom_command(phantomDir, count=1, seed=1, python=logic.pythonExecutable()), timeout=600)
        self.assertTrue(result.ok, result.error)
        ctNode = slicer.util.loadVolume(str(phantomDir / "case_000" / "ct.nii.gz"))

        self.delayDisplay("Running segmentation in the background (Apply)")
        pn = logic.getParameterNode()
        pn.ctVolume = ctNode
        pn.model = "dual-stream"
        pn.device = "cpu"
        logic.startSegmentation(pn)
        self.assertTrue(logic.isRunning())
        finished = logic.waitForJob(timeout=900)
        self.assertFalse(finished.get("error"), finished.get("error"))
        self.assertFalse(logic.isRunning())

        segNode = pn.resultSegmentation
        self.assertIsNotNone(segNode)
        names = [segNode.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segNode.GetSegmentation().GetNumberOfSegments())]
        self.assertIn("Liver", names)
        self.assertIsNotNone(pn.resultTable)
        self.assertGreaterEqual(pn.resultTable.GetNumberOfColumns(), 5)

        self.delayDisplay("Re-running makes a new node (manual edits are never overwritten)")
        logic.startSegmentation(pn)
        logic.waitForJob(timeout=900)
        self.assertIsNot(pn.resultSegmentation, segNode)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(segNode.GetID()))
        self.delayDisplay("Test passed")
