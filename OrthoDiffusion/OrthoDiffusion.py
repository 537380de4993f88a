"""OrthoDiffusion Slicer module: glue between the GUI and OrthoDiffusionLib (research use only)."""

import json
import os
import shutil
import sys
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
PROGRESS_STATES = {"loading": 10, "preprocess": 20, "features": 40, "segment": 60, "finetune": 70, "diagnose": 80,
                   "writing": 95}


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
    return cliBase() + ["finetune", "--corrections", str(correctionsDir), "--model", model, "--device", device,
                        "--quiet"]


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
        for entry in self.logic.models():  # catalogue entries: a list of {"id", "name", ...}
            self.ui.modelComboBox.addItem(entry.get("name", entry["id"]), entry["id"])
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", lambda index: self.refreshVersions())
        self.findingEdits = {}
        self.refreshVersions()
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
            self.lastInputs = (self.logic.writeInputs(self.inputs(), self.outDir / "inputs"),
                               self.logic.writeEhr(self._parameterNode, self.outDir / "inputs"))
            self.resultDir = self.outDir / "result"
            self.startProcess(self.predictAgainCommand(self.resultDir), self.onPredictDone)

    def predictAgainCommand(self, resultDir):
        inputs, ehr = self.lastInputs
        return predictCommand(inputs, resultDir, self.logic.device(self._parameterNode.device),
                              self.ui.modelComboBox.currentData, ehr)

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
        self.case = self.logic.loadCase(self.resultDir, reference)
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
                                              self.logic.device(self._parameterNode.device)), self.onFineTuneDone)

    def onFineTuneDone(self):
        self.refreshVersions()
        self.ui.fineTuneResultLabel.text = self.logic.fineTuneSummary(self.ui.modelComboBox.currentData)
        self.rerunHeads()

    def onRollback(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to roll back."), waitCursor=True):
            version = self.ui.versionsComboBox.currentData
            self.startProcess(rollbackCommand(self.ui.modelComboBox.currentData, version), self.onRollbackDone)

    def onRollbackDone(self):
        self.refreshVersions()
        self.ui.fineTuneResultLabel.text = _("Head set {v} is current.").format(
            v=self.ui.versionsComboBox.currentData) + " " + DISCLAIMER
        self.rerunHeads()

    def rerunHeads(self):
        """Predict the loaded case again with the current head set: the backbone features come
        from the cache, so only the heads run. Each version gets its own result folder."""
        if not getattr(self, "lastInputs", None):
            return
        version = self.logic.currentHeadVersion(self.ui.modelComboBox.currentData) or "current"
        self.resultDir = self.outDir / f"result-{version}"
        self.startProcess(self.predictAgainCommand(self.resultDir), self.onPredictDone)

    def refreshVersions(self):
        self.ui.versionsComboBox.clear()
        for row in reversed(self.logic.headVersions(self.ui.modelComboBox.currentData)):  # newest first
            self.ui.versionsComboBox.addItem(f"{row['version']} ({row['kind']}{', current' if row['current'] else ''})",
                                             row["version"])
            if row["current"]:
                self.ui.versionsComboBox.setCurrentIndex(self.ui.versionsComboBox.count - 1)


class OrthoDiffusionLogic(ScriptedLoadableModuleLogic):
    """Thin adapter: every real step is in OrthoDiffusionLib (usable without GUI)."""

    def getParameterNode(self):
        return OrthoDiffusionParameterNode(super().getParameterNode())

    def models(self):
        path = resource_path("Models", "catalogue.json")
        return json.loads(path.read_text()).get("models", []) if path.is_file() else []

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
        """Rows (version, parent, created, kind, current, metrics), oldest first; no torch needed."""
        from OrthoDiffusionLib.pipeline.versions import head_versions

        return head_versions(model or "knee-demo")["versions"]

    def currentHeadVersion(self, model):
        from OrthoDiffusionLib.pipeline.versions import head_versions

        return head_versions(model or "knee-demo")["current"]

    def fineTuneSummary(self, model):
        from OrthoDiffusionLib.pipeline.versions import finetune_summary_lines, latest_finetune

        record = latest_finetune(model or "knee-demo")
        return "\n".join(finetune_summary_lines(record)) if record else _("No fine-tuned head set is current.")


class OrthoDiffusionTest(ScriptedLoadableModuleTest):
    """In-Slicer end-to-end test (needs the app, PyTorch and the CLI commands): predict, edit one
    segment, save a correction, fine-tune (new head version, Dice up on that case), roll back
    (outputs identical to the first prediction). Writes only into a temporary ORTHODIFFUSION_HOME."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self._savedHome = os.environ.get("ORTHODIFFUSION_HOME")
        os.environ["ORTHODIFFUSION_HOME"] = slicer.util.tempDirectory("OrthoDiffusionTestHome")

    def tearDown(self):
        if self._savedHome is None:
            os.environ.pop("ORTHODIFFUSION_HOME", None)
        else:
            os.environ["ORTHODIFFUSION_HOME"] = self._savedHome

    def runTest(self):
        self.setUp()
        try:
            self.test_EndToEnd()
        finally:
            self.tearDown()

    def waitForProcess(self, widget):
        while widget._proc is not None:  # chained runs (fine-tune -> predict again) keep it busy
            slicer.app.processEvents()

    def test_EndToEnd(self):
        import numpy as np
        import SimpleITK as sitk

        from OrthoDiffusionLib.corrections import CorrectionsStore
        from OrthoDiffusionLib.pipeline.versions import latest_finetune
        from OrthoDiffusionLib.resources import sample_knee_path

        volume = slicer.util.loadVolume(str(sample_knee_path()))
        widget = slicer.modules.orthodiffusion.widgetRepresentation().self()
        slicer.app.processEvents()
        widget.autoFillPlanes()
        self.assertEqual(widget._parameterNode.sagittalVolume, volume)
        model = widget.ui.modelComboBox.currentData or "knee-demo"
        self.delayDisplay("Running prediction")
        widget.outDir = Path(slicer.util.tempDirectory("OrthoDiffusionTest"))
        widget.lastInputs = (widget.logic.writeInputs({"sagittal": volume}, widget.outDir / "inputs"), None)
        widget.resultDir = widget.outDir / "result"
        widget._parameterNode.device = "cpu"
        done = []
        widget.startProcess(widget.predictAgainCommand(widget.resultDir),
                            lambda: (widget.onPredictDone(), done.append(True)))
        self.waitForProcess(widget)
        self.assertTrue(done, "prediction failed; see the module log")
        firstResult = widget.resultDir
        segmentationNode = widget.case.segmentation
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 11)

        self.delayDisplay("Editing one segment (erasing the patella) and saving a correction")
        patella = segmentation.GetSegmentIdBySegmentName("Patella")
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, patella, volume)
        self.assertGreater(int(arr.sum()), 0)
        arr[:] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentationNode, patella, volume)
        widget.ui.findingComboBox.setCurrentIndex(0)
        widget.onFindingDecision("flipped")
        widget.onSaveCorrection()
        self.assertEqual(len(CorrectionsStore().entries()), 1)

        self.delayDisplay("Fine-tuning (then the heads run again on cached features)")
        widget.onFineTune()
        self.waitForProcess(widget)
        record = latest_finetune(model)
        self.assertIsNotNone(record, "fine-tune failed; see the module log")
        case = next(iter(record["cases"].values()))
        self.assertGreater(case["mean_dice_after"], case["mean_dice_before"])
        self.assertIn("mean Dice", widget.ui.fineTuneResultLabel.text)
        self.assertEqual(widget.resultDir.name, f"result-{record['version']}")
        rows = widget.logic.headVersions(model)
        self.assertEqual([r["version"] for r in rows if r["current"]], [record["version"]])

        self.delayDisplay("Rolling back to the copy of the shipped heads")
        widget.ui.versionsComboBox.setCurrentIndex(widget.ui.versionsComboBox.findData(record["parent"]))
        widget.onRollback()
        self.waitForProcess(widget)
        self.assertEqual(widget.logic.currentHeadVersion(model), record["parent"])

        def labels(folder):
            return sitk.GetArrayFromImage(sitk.ReadImage(str(Path(folder) / "labels.nrrd")))

        def probabilities(folder):
            return [f["probability"] for f in json.loads((Path(folder) / "findings.json").read_text())["findings"]]

        self.assertTrue(np.array_equal(labels(widget.resultDir), labels(firstResult)))
        self.assertEqual(probabilities(widget.resultDir), probabilities(firstResult))
        self.delayDisplay("Test passed")
