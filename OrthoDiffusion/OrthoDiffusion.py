"""OrthoDiffusion Slicer module: glue between the GUI and OrthoDiffusionLib (research use only)."""

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# OrthoDiffusionLib and Resources/ sit beside this folder (source tree) or beside the module (install).
_HERE = Path(__file__).resolve().parent
LIB_PARENT = next((str(p) for p in (_HERE, _HERE.parent) if (p / "OrthoDiffusionLib").is_dir()), str(_HERE))
if LIB_PARENT not in sys.path:
    sys.path.insert(0, LIB_PARENT)

from OrthoDiffusionLib import DISCLAIMER  # noqa: E402
from OrthoDiffusionLib.resources import resource_path  # noqa: E402
# Packages installed on first Apply. Never torch (PyTorchUtils), SimpleITK or requests (Slicer's own).
REQUIREMENTS = ["monai>=1.4", "einops>=0.7", "safetensors>=0.4", "filelock>=3.12", "jsonschema>=4.20", "tqdm>=4.66"]
PROGRESS_STATES = {"loading": 10, "preprocess": 20, "features": 40, "segment": 60, "diagnose": 80, "writing": 95}


# All CLI calls live here, so they are easy to adjust when the CLI changes.
def cliBase():
    python = shutil.which("PythonSlicer") or sys.executable
    return [python, "-m", "OrthoDiffusionLib.cli.main"]


def predictCommand(inputs, outDir, device, model, ehrFile=None):
    cmd = cliBase() + ["predict", "--out", str(outDir), "--device", device]
    cmd += [arg for plane, path in inputs.items() for arg in (f"--{plane}", str(path))]
    cmd += ["--model", model] if model else []
    return cmd + (["--ehr", str(ehrFile)] if ehrFile else [])


def finetuneCommand(correctionsDir, model, device):
    return cliBase() + ["finetune", "--corrections", str(correctionsDir), "--model", model, "--device", device]


def rollbackCommand(model, version):
    return cliBase() + ["finetune", "--model", model, "--rollback", version]


class OrthoDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("OrthoDiffusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["OrthoDiffusion for 3D Slicer contributors"]
        self.parent.helpText = _("Knee MRI: 11 structures as an editable segmentation, 8 findings with "
                                 "probabilities, uncertainty and which plane drove each call. "
                                 "Corrections can fine-tune the heads. ") + DISCLAIMER
        self.parent.acknowledgementText = _("Reference implementation of OrthoDiffusion (diffusion-model "
                                            "backbones for knee MRI). Sample data: mskt (MIT).")
        iconPath = resource_path("Icons", "OrthoDiffusion.png")  # Resources/ is not inside the module folder
        if iconPath.is_file():
            self.parent.icon = qt.QIcon(str(iconPath))


@parameterNodeWrapper
class OrthoDiffusionParameterNode:
    sagittalVolume: slicer.vtkMRMLScalarVolumeNode
    coronalVolume: slicer.vtkMRMLScalarVolumeNode
    axialVolume: slicer.vtkMRMLScalarVolumeNode
    volume3D: slicer.vtkMRMLScalarVolumeNode
    autoDetectPlanes: bool = True
    device: Annotated[str, Choice(["auto", "cpu", "gpu"])] = "auto"
    age: int = 0
    sex: Annotated[str, Choice(["unknown", "female", "male"])] = "unknown"
    heightCm: int = 0
    weightKg: int = 0
    indication: str = ""


class OrthoDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._proc = None
        self.case = None  # OrthoDiffusionLib.mrml.case.CaseNodes of the last result

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resource_path("UI", "OrthoDiffusion.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrthoDiffusionLogic()
        for name, entry in self.logic.models().items():
            self.ui.modelComboBox.addItem(entry.get("title", name), name)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.findingComboBox.connect("currentIndexChanged(int)", self.onFindingChanged)
        self.ui.showEvidenceCheckBox.connect("toggled(bool)", self.onFindingChanged)
        self.ui.confirmFindingButton.connect("clicked(bool)", lambda: self.onFindingDecision("confirmed"))
        self.ui.flipFindingButton.connect("clicked(bool)", lambda: self.onFindingDecision("flipped"))
        self.ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.rollbackButton.connect("clicked(bool)", self.onRollback)
        self.findingEdits = {}
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelProcess()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)

    def onSceneStartClose(self, caller, event):
        self.cancelProcess()
        self._parameterNode = None

    def initializeParameterNode(self):
        self._parameterNode = self.logic.getParameterNode()
        self._guiTag = self._parameterNode.connectGui(self.ui)
        self.addObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApply)
        self.updateApply()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        # Volumes arrive before their image data: detect the plane once the node has settled.
        if isinstance(node, slicer.vtkMRMLScalarVolumeNode) and self._parameterNode:
            qt.QTimer.singleShot(0, self.autoFillPlanes)

    def autoFillPlanes(self):
        p = self._parameterNode
        if not p or not p.autoDetectPlanes:
            return
        from OrthoDiffusionLib.mrml import assign_planes

        for plane, node in assign_planes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")).items():
            attr = "volume3D" if plane == "3d" else f"{plane}Volume"
            if getattr(p, attr) is None:
                setattr(p, attr, node)

    def inputs(self):
        p = self._parameterNode
        found = {pl: getattr(p, f"{pl}Volume") for pl in ("sagittal", "coronal", "axial")}
        found["volume"] = p.volume3D
        return {k: v for k, v in found.items() if v is not None}

    def updateApply(self, caller=None, event=None):
        busy = self._proc is not None
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self.ui.applyButton.enabled = busy or bool(self._parameterNode and self.inputs())

    def log(self, line):
        self.ui.logTextEdit.appendPlainText(line)
        for key, value in PROGRESS_STATES.items():  # CLI prints e.g. "[segment] ..."
            if f"[{key}]" in line:
                self.ui.progressBar.value, self.ui.statusLabel.text = value, key

    def onApplyButton(self):
        if self._proc is not None:
            return self.cancelProcess()
        with slicer.util.tryWithErrorDisplay(_("Failed to start OrthoDiffusion."), waitCursor=True):
            self.logic.ensureDependencies()
            self.outDir = Path(self.ui.outputPathLineEdit.currentPath or slicer.util.tempDirectory("OrthoDiffusion"))
            cmd = predictCommand(self.logic.writeInputs(self.inputs(), self.outDir / "inputs"), self.outDir / "result",
                                 self.logic.device(self._parameterNode.device), self.ui.modelComboBox.currentData,
                                 self.logic.writeEhr(self._parameterNode, self.outDir / "inputs"))
            self.startProcess(cmd, self.onPredictDone)

    def startProcess(self, cmd, done):
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value, self.ui.statusLabel.text = 2, _("starting")
        self.log(" ".join(cmd))
        self._proc = slicer.util.launchConsoleProcess(cmd, updateEnvironment=self.logic.environment(
            self._parameterNode.device), blocking=False, logCallback=self.log,
            completedCallback=lambda rc: self.onProcessDone(rc, done))
        self.updateApply()

    def onProcessDone(self, returnCode, done):
        self._proc = None
        self.updateApply()
        if returnCode != 0:
            self.ui.statusLabel.text = _("failed") if returnCode > 0 else _("cancelled")
            return slicer.util.errorDisplay(_("OrthoDiffusion stopped (exit code {rc}); see the log.").format(
                rc=returnCode)) if returnCode > 0 else None
        self.ui.progressBar.value, self.ui.statusLabel.text = 100, _("done")
        with slicer.util.tryWithErrorDisplay(_("Failed to load the result."), waitCursor=True):
            done()

    def cancelProcess(self):
        if self._proc is not None:
            import psutil  # kill the whole tree: the launcher alone is not enough

            try:
                parent = psutil.Process(self._proc.pid)
                for child in parent.children(recursive=True):
                    child.kill()
                parent.kill()
            except psutil.NoSuchProcess:
                pass
            self.ui.statusLabel.text = _("cancel requested")

    def onPredictDone(self):
        reference = next(iter(self.inputs().values()))
        self.case = self.logic.loadCase(self.outDir / "result", reference)
        self.fillFindings()
        slicer.util.setSliceViewerLayers(background=reference)

    def fillFindings(self):
        t, findings = self.ui.findingsTableWidget, self.case.result.findings
        headers = ["finding", "probability", "uncertainty", "decision"]
        t.setColumnCount(len(headers)), t.setRowCount(len(findings)), t.setHorizontalHeaderLabels(headers)
        self.ui.findingComboBox.clear()
        for row, f in enumerate(findings):
            for col, text in enumerate([f.key, f"{f.probability:.2f}", f"±{f.spread:.2f}",
                                        "positive" if f.decision else "negative"]):
                t.setItem(row, col, qt.QTableWidgetItem(text))
            self.ui.findingComboBox.addItem(f"{f.key}: {f.name}", f.key)

    def selectedFinding(self):
        return self.ui.findingComboBox.currentData

    def onFindingChanged(self, *args):
        if self.case and self.selectedFinding():
            self.logic.showFinding(self.case, self.selectedFinding(), self.ui.showEvidenceCheckBox.checked)

    def onFindingDecision(self, action):
        if self.case and self.selectedFinding():
            f = self.case.result.finding(self.selectedFinding())
            self.findingEdits[f.key] = {"decision": f.decision != (action == "flipped"), "action": action}
            self.log(f"{f.key}: {action}")

    def onSaveCorrection(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to save the correction."), waitCursor=True):
            entry = self.logic.saveCorrection(self.case, next(iter(self.inputs().values())), self.findingEdits)
            self.log(f"correction saved: {entry.directory}")

    def onFineTune(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            self.startProcess(finetuneCommand(self.logic.correctionsDir(), self.ui.modelComboBox.currentData,
                                              self.logic.device(self._parameterNode.device)), self.refreshVersions)

    def onRollback(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to roll back."), waitCursor=True):
            self.startProcess(rollbackCommand(self.ui.modelComboBox.currentData, self.ui.versionsComboBox.currentText),
                              self.refreshVersions)

    def refreshVersions(self):
        self.ui.versionsComboBox.clear()
        for version in self.logic.headVersions(self.ui.modelComboBox.currentData):
            self.ui.versionsComboBox.addItem(version)


class OrthoDiffusionLogic(ScriptedLoadableModuleLogic):
    """Thin adapter: every real step is in OrthoDiffusionLib (usable without GUI)."""

    def getParameterNode(self):
        return OrthoDiffusionParameterNode(super().getParameterNode())

    def models(self):
        path = resource_path("Models", "catalogue.json")
        return json.loads(path.read_text()).get("models", {}) if path.is_file() else {}

    def ensureDependencies(self):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("Install the 'PyTorch' extension from the Extensions Manager, then restart."))
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled() and not torchLogic.installTorch(askConfirmation=True,
                                                                           torchVersionRequirement=">=2.1"):
            raise RuntimeError(_("PyTorch is required."))
        if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer >= 5.11
            from packaging.requirements import Requirement

            slicer.packaging.pip_ensure([Requirement(r) for r in REQUIREMENTS], requester="OrthoDiffusion")
        else:
            import importlib.util

            for req in REQUIREMENTS:
                if importlib.util.find_spec(req.split(">")[0].replace("-", "_")) is None:
                    slicer.util.pip_install(req)

    def device(self, choice):
        return {"gpu": "cuda"}.get(choice, choice)

    def environment(self, choice):
        env = {"PYTHONPATH": os.pathsep.join([LIB_PARENT, os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1"}
        return env | ({"CUDA_VISIBLE_DEVICES": "-1"} if choice == "cpu" else {})

    def writeInputs(self, inputs, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        paths = {k: Path(folder) / f"{k}.nrrd" for k in inputs}
        for k, node in inputs.items():
            if not slicer.util.saveNode(node, str(paths[k])):
                raise RuntimeError(f"could not write {node.GetName()}")
        return paths

    def writeEhr(self, p, folder):
        ehr = {"age": p.age or None, "sex": None if p.sex == "unknown" else p.sex, "height_cm": p.heightCm or None,
               "weight_kg": p.weightKg or None, "indication": p.indication or None}
        if not any(ehr.values()):
            return None
        path = Path(folder) / "ehr.json"
        path.write_text(json.dumps(ehr))
        return path

    def loadCase(self, resultDir, reference):
        from OrthoDiffusionLib.mrml.case import load_case

        return load_case(slicer.mrmlScene, resultDir, reference, slicer.modules.segmentations.logic())

    def showFinding(self, case, key, showEvidence):
        from OrthoDiffusionLib.mrml.findings import plane_weight_chart
        from OrthoDiffusionLib.mrml.overlay import view_cues

        plane_weight_chart(slicer.mrmlScene, case.result, key, case.chart)
        slicer.modules.plots.logic().ShowChartInLayout(case.chart)
        for cue in view_cues(case.result, key, slicer.util.getNodesByClass("vtkMRMLSliceNode")):
            view = slicer.app.layoutManager().sliceWidget(cue.view)
            if view is not None:  # corner text coloured by the plane's weight
                view.sliceView().cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperRight, cue.text)
                view.sliceView().cornerAnnotation().GetTextProperty().SetColor(*cue.rgb)
                view.sliceView().forceRender()
        evidence = case.evidence.get(key)
        slicer.util.setSliceViewerLayers(foreground=evidence if showEvidence else None, foregroundOpacity=0.4)

    def correctionsDir(self):
        from OrthoDiffusionLib.corrections import CorrectionsStore

        return CorrectionsStore().root

    def saveCorrection(self, case, reference, findingEdits):
        from OrthoDiffusionLib.mrml.corrections import save_correction

        return save_correction(slicer.mrmlScene, case.segmentation, reference, findingEdits)[0]

    def headVersions(self, model):
        from OrthoDiffusionLib.corrections import default_home

        root = default_home() / "heads" / str(model)
        return sorted((p.name for p in root.iterdir() if p.is_dir()), reverse=True) if root.is_dir() else []


class OrthoDiffusionTest(ScriptedLoadableModuleTest):
    """In-Slicer end-to-end test (needs the app, PyTorch and the CLI commands)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_EndToEnd()

    def test_EndToEnd(self):
        from OrthoDiffusionLib.corrections import CorrectionsStore
        from OrthoDiffusionLib.resources import sample_knee_path

        volume = slicer.util.loadVolume(str(sample_knee_path()))
        widget = slicer.modules.orthodiffusion.widgetRepresentation().self()
        slicer.app.processEvents()
        widget.autoFillPlanes()
        self.assertEqual(widget._parameterNode.sagittalVolume, volume)
        self.delayDisplay("Running prediction")
        widget.outDir = Path(slicer.util.tempDirectory("OrthoDiffusionTest"))
        inputs = widget.logic.writeInputs({"sagittal": volume}, widget.outDir / "inputs")
        done = []
        widget.startProcess(predictCommand(inputs, widget.outDir / "result", "cpu", None),
                            lambda: (widget.onPredictDone(), done.append(True)))
        while widget._proc is not None:
            slicer.app.processEvents()
        self.assertTrue(done, "prediction failed; see the module log")
        segmentation = widget.case.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 11)
        self.delayDisplay("Editing one segment and saving a correction")
        femur = segmentation.GetSegmentIdBySegmentName("Femur")
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(widget.case.segmentation, femur, volume)
        arr[arr.shape[0] // 2, :10, :10] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(arr, widget.case.segmentation, femur, volume)
        widget.ui.findingComboBox.setCurrentIndex(0)
        widget.onFindingDecision("flipped")
        before = len(CorrectionsStore().entries())
        widget.onSaveCorrection()
        self.assertEqual(len(CorrectionsStore().entries()), before + 1)
        self.delayDisplay("Fine-tuning and rolling back")
        widget.onFineTune()
        while widget._proc is not None:
            slicer.app.processEvents()
        versions = widget.logic.headVersions(widget.ui.modelComboBox.currentData)
        self.assertGreaterEqual(len(versions), 1)
        widget.ui.versionsComboBox.setCurrentIndex(widget.ui.versionsComboBox.count - 1)
        widget.onRollback()
        while widget._proc is not None:
            slicer.app.processEvents()
        self.delayDisplay("Test passed")
