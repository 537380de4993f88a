"""OrthoDiffusion Slicer module: wiring between Slicer's GUI and OrthoDiffusionLib (research use only).

The work is in ``OrthoDiffusionLib.slicerlogic`` (Qt-free, tested on slicer-core with the real CLI);
this file holds the widgets, the Slicer-version-specific process launch and dependency install.
"""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Slicer 5.10 is the first with Python >= 3.10 (3.12), which the library and its torch need;
# Slicer 5.8 ships Python 3.9. Checked here, before the library is imported.
MINIMUM_SLICER = (5, 10)
if sys.version_info < (3, 10):
    raise ImportError(f"OrthoDiffusion needs Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer "
                      f"(Python 3.10+); this Slicer runs Python {sys.version.split()[0]}.")

# OrthoDiffusionLib and Resources/ sit beside this file (installed) or one level up (source tree).
_HERE = Path(__file__).resolve().parent
LIB_PARENT = next((str(p) for p in (_HERE, _HERE.parent) if (p / "OrthoDiffusionLib").is_dir()), str(_HERE))
if LIB_PARENT not in sys.path:
    sys.path.insert(0, LIB_PARENT)

from OrthoDiffusionLib import DISCLAIMER  # noqa: E402
from OrthoDiffusionLib.resources import resource_path  # noqa: E402
from OrthoDiffusionLib.slicerlogic.ehr import (EVENT_CHOICES, PATIENT_TYPE_CHOICES, SEX_CHOICES,  # noqa: E402
                                               spin_box_range)

# Parameter-node field -> library EHR field (tested: every value these widgets produce is accepted).
EHR_PARAMETERS = {"age": "age", "sex": "sex", "heightCm": "height_cm", "weightKg": "weight_kg",
                  "patientType": "patient_type", "event": "event"}


def slicerVersion():
    return (slicer.app.majorVersion, slicer.app.minorVersion)


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
        if slicerVersion() < MINIMUM_SLICER:
            logging.error(f"OrthoDiffusion supports Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} and newer")
        slicer.app.connect("startupCompleted()", registerSampleDataAndTerminology)


_registered = []


def registerSampleDataAndTerminology():
    """After startup (once): the embedded knee in SampleData, knee-11 codes in the Terminologies logic."""
    if _registered:
        return
    _registered.append(True)
    from OrthoDiffusionLib.slicerlogic.sampledata import SAMPLE_CATEGORY, load_terminology, sample_data_source

    import SampleData

    if slicerVersion() >= (5, 12):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, _("OrthoDiffusion"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source())
    try:
        load_terminology(slicer.modules.terminologies.logic())
    except (AttributeError, RuntimeError) as exc:  # no Terminologies module (e.g. --disable-modules)
        logging.warning(f"OrthoDiffusion: knee terminology not loaded: {exc}")


@parameterNodeWrapper
class OrthoDiffusionParameterNode:
    sagittalVolume: slicer.vtkMRMLScalarVolumeNode
    coronalVolume: slicer.vtkMRMLScalarVolumeNode
    axialVolume: slicer.vtkMRMLScalarVolumeNode
    volume3D: slicer.vtkMRMLScalarVolumeNode
    autoDetectPlanes: bool = True
    device: Annotated[str, Choice(["auto", "cpu", "gpu"])] = "auto"
    # An int without a range gets +-2^31 from the GUI connector, overriding the .ui: give the library's
    # (the minimum, one below the plausible range, is "not given": the .ui's specialValueText).
    age: Annotated[int, WithinRange(*spin_box_range("age"))] = spin_box_range("age")[0]
    sex: Annotated[str, Choice(list(SEX_CHOICES))] = SEX_CHOICES[0]
    heightCm: Annotated[int, WithinRange(*spin_box_range("height_cm"))] = spin_box_range("height_cm")[0]
    weightKg: Annotated[int, WithinRange(*spin_box_range("weight_kg"))] = spin_box_range("weight_kg")[0]
    patientType: Annotated[str, Choice(list(PATIENT_TYPE_CHOICES))] = PATIENT_TYPE_CHOICES[0]
    event: Annotated[str, Choice(list(EVENT_CHOICES))] = EVENT_CHOICES[0]


class ProcessRunner:
    """One CLI process at a time, output delivered on the GUI thread (OrthoDiffusionLib's
    ProcessRunner protocol). Cancel kills the whole tree (PythonSlicer is a launcher)."""

    def __init__(self):
        self.proc = None
        self.pump = None
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self._poll)

    @property
    def running(self):
        return self.proc is not None

    def start(self, argv, env, on_line, on_done):
        from OrthoDiffusionLib.slicerlogic.process import ProcessPump, child_environment, start_process_group

        def done(returnCode):
            self.proc = None
            on_done(returnCode)

        if slicerVersion() >= (5, 12):  # non-blocking launch with Slicer's own reader thread and timer
            self.proc = slicer.util.launchConsoleProcess(argv, updateEnvironment=env, blocking=False,
                                                         logCallback=on_line, completedCallback=done)
        else:  # before 5.12 launchConsoleProcess only blocks: own process group, polled by a QTimer
            self.proc = start_process_group(argv, child_environment(env))
            self.pump = ProcessPump(self.proc, on_line, done)
            self.timer.start()

    def _poll(self):
        if self.pump is None or self.pump.poll():
            self.timer.stop()

    def cancel(self):
        from OrthoDiffusionLib.slicerlogic.process import kill_process_tree

        if self.proc is not None:
            kill_process_tree(self.proc.pid)


class OrthoDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None
        self.findingEdits = {}
        self.cueActors = {}  # slice view name -> (renderer, our vtkCornerAnnotation)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resource_path("UI", "OrthoDiffusion.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrthoDiffusionLogic(log=self.log, progress=self.showProgress)
        for choice in self.logic.models():
            self.ui.modelComboBox.addItem(choice.label, choice.id)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.findingComboBox.connect("currentIndexChanged(int)", self.onFindingChanged)
        self.ui.confirmFindingButton.connect("clicked(bool)", lambda: self.onFindingDecision("confirmed"))
        self.ui.flipFindingButton.connect("clicked(bool)", lambda: self.onFindingDecision("flipped"))
        self.ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.rollbackButton.connect("clicked(bool)", self.onRollback)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", lambda index: self.refreshVersions())
        self.refreshVersions()
        self.initializeParameterNode()

    def cleanup(self):
        """Module or application closing: stop the process, drop our actors, observers and temp folders."""
        self.removeCueActors()
        if self.logic:
            self.logic.workflow.cleanup()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.removeCueActors()
        self.logic.workflow.cleanup()  # cancels a run; the scene's nodes are going away
        self.disconnectParameterNode()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.disconnectParameterNode()
        self._parameterNode = self.logic.getParameterNode()
        self._guiTag = self._parameterNode.connectGui(self.ui)
        self.addObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApply)
        self.updateApply()

    def disconnectParameterNode(self):
        if self._parameterNode is not None:
            if self._guiTag is not None:
                self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApply)
        self._guiTag = None

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

    def ehrValues(self):
        return {field: getattr(self._parameterNode, name) for name, field in EHR_PARAMETERS.items()}

    def updateApply(self, caller=None, event=None):
        busy = self.logic is not None and self.logic.workflow.busy
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self.ui.applyButton.enabled = busy or bool(self._parameterNode and self.inputs())

    def log(self, line):
        self.ui.logTextEdit.appendPlainText(line)

    def showProgress(self, percent, stage):
        self.ui.progressBar.value, self.ui.statusLabel.text = percent, stage
        self.updateApply()

    def model(self):
        return self.ui.modelComboBox.currentData or "knee-demo"

    def onApplyButton(self):
        if self.logic.workflow.busy:
            return self.logic.workflow.cancel()
        with slicer.util.tryWithErrorDisplay(_("Failed to start OrthoDiffusion."), waitCursor=True):
            self.logic.ensureDependencies()
            self.ui.logTextEdit.clear()
            self.logic.predict(self.inputs(), self.ehrValues(), self.ui.outputPathLineEdit.currentPath,
                               self.model(), self._parameterNode.device, self.onResultLoaded)
        self.updateApply()

    def onResultLoaded(self, ok):
        self.updateApply()
        if not ok:
            return slicer.util.errorDisplay(_("OrthoDiffusion stopped; see the log."))
        self.findingEdits = {}
        self.fillFindings()
        slicer.util.setSliceViewerLayers(background=self.logic.workflow.case.reference)
        self.onFindingChanged()

    def fillFindings(self):
        t, findings = self.ui.findingsTableWidget, self.logic.workflow.nodes.result.findings
        headers = [_("finding"), _("probability"), _("uncertainty"), _("decision")]
        t.setColumnCount(len(headers))
        t.setRowCount(len(findings))
        t.setHorizontalHeaderLabels(headers)
        self.ui.findingComboBox.clear()
        for row, f in enumerate(findings):
            for col, text in enumerate([f.key, f"{f.probability:.2f}", f"±{f.spread:.2f}",
                                        "positive" if f.decision else "negative"]):
                t.setItem(row, col, qt.QTableWidgetItem(text))
            self.ui.findingComboBox.addItem(f"{f.key}: {f.name}", f.key)

    def onFindingChanged(self, *args):
        nodes, key = self.logic.workflow.nodes, self.ui.findingComboBox.currentData
        if nodes is None or not key:
            return
        from OrthoDiffusionLib.mrml.findings import plane_weight_chart
        from OrthoDiffusionLib.mrml.overlay import cue_actor, view_cues

        plane_weight_chart(slicer.mrmlScene, nodes.result, key, nodes.chart)
        slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)
        layoutManager = slicer.app.layoutManager()
        for cue in view_cues(nodes.result, key, slicer.util.getNodesByClass("vtkMRMLSliceNode")):
            sliceWidget = layoutManager.sliceWidget(cue.view)
            if sliceWidget is None:
                continue
            view = sliceWidget.sliceView()
            renderer, actor = self.cueActors.get(cue.view, (None, None))
            if actor is None:  # our own actor: DataProbe rewrites the view's corner annotation
                renderer = view.renderWindow().GetRenderers().GetFirstRenderer()
                actor = cue_actor(cue)
                renderer.AddViewProp(actor)
                self.cueActors[cue.view] = (renderer, actor)
            else:
                cue_actor(cue, actor)
            view.scheduleRender()

    def removeCueActors(self):
        for renderer, actor in self.cueActors.values():
            renderer.RemoveViewProp(actor)
        self.cueActors = {}

    def onFindingDecision(self, action):
        nodes, key = self.logic.workflow.nodes, self.ui.findingComboBox.currentData
        if nodes and key:
            f = nodes.result.finding(key)
            self.findingEdits[f.key] = {"decision": f.decision != (action == "flipped"), "action": action}
            self.log(f"{f.key}: {action}")

    def onSaveCorrection(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to save the correction."), waitCursor=True):
            self.logic.workflow.save_correction(self.findingEdits)

    def onFineTune(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            self.logic.workflow.finetune(self.model(), self._parameterNode.device, self.onFineTuneDone)
        self.updateApply()

    def onFineTuneDone(self, ok):
        self.refreshVersions()
        self.ui.fineTuneResultLabel.text = self.logic.workflow.finetune_summary(self.model())
        self.onResultLoaded(ok)

    def onRollback(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to roll back."), waitCursor=True):
            version = self.ui.versionsComboBox.currentData
            self.logic.workflow.rollback(self.model(), version, self._parameterNode.device, self.onRollbackDone)
        self.updateApply()

    def onRollbackDone(self, ok):
        self.refreshVersions()
        self.ui.fineTuneResultLabel.text = _("Head set {v} is current.").format(
            v=self.logic.workflow.current_head_version(self.model())) + " " + DISCLAIMER
        self.onResultLoaded(ok)

    def refreshVersions(self):
        self.ui.versionsComboBox.clear()
        for row in reversed(self.logic.workflow.head_versions(self.model())):  # newest first
            self.ui.versionsComboBox.addItem(f"{row['version']} ({row['kind']}{', current' if row['current'] else ''})",
                                             row["version"])
            if row["current"]:
                self.ui.versionsComboBox.setCurrentIndex(self.ui.versionsComboBox.count - 1)


class OrthoDiffusionLogic(ScriptedLoadableModuleLogic):
    """Adapter: the scene, segmentations logic and runner go into OrthoDiffusionLib's CaseWorkflow."""

    def __init__(self, log=print, progress=None):
        ScriptedLoadableModuleLogic.__init__(self)
        from OrthoDiffusionLib.slicerlogic.process import python_executable
        from OrthoDiffusionLib.slicerlogic.workflow import CaseWorkflow

        self.workflow = CaseWorkflow(slicer.mrmlScene, slicer.modules.segmentations.logic(), ProcessRunner(),
                                     python_executable(), LIB_PARENT, log=log, progress=progress,
                                     volume_writer=lambda node, path: self.exportVolume(node, path))

    def getParameterNode(self):
        return OrthoDiffusionParameterNode(super().getParameterNode())

    def models(self):
        from OrthoDiffusionLib.slicerlogic.models import model_choices

        return model_choices()

    @staticmethod
    def exportVolume(node, path):
        # exportNode writes a copy and leaves the user's volume pointing at its own file
        if not slicer.util.exportNode(node, str(path)):
            raise RuntimeError(_("Could not write {name}.").format(name=node.GetName()))

    def predict(self, volumes, ehrValues, outputFolder, model, device, onDone):
        from OrthoDiffusionLib.slicerlogic.ehr import ehr_record

        record = ehr_record(ehrValues)  # refuses bad values here, not after minutes in the CLI
        outDir = self.workflow.new_output_folder(outputFolder or None)
        self.workflow.prepare(volumes, record, outDir)
        self.workflow.predict(model, device, onDone)

    def ensureDependencies(self):
        """Ask once, then install what is missing; never replace Slicer's own packages or torch."""
        from OrthoDiffusionLib.slicerlogic import dependencies as deps

        plan = deps.install_plan()
        if plan.refused:
            raise RuntimeError(f"requirements name packages Slicer owns: {plan.refused}")
        if not plan.needed:
            return
        torchMissing = deps.installed_version("torch") is None
        if plan.torch and not torchMissing:
            raise RuntimeError(plan.torch)  # too old: updating it is PyTorch Utils' job
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("Install the 'PyTorch' extension from the Extensions Manager, then restart."))
        items = ([f"torch>={deps.MINIMUM_TORCH} (through PyTorch Utils)"] if torchMissing else []) + plan.missing
        if not slicer.util.confirmOkCancelDisplay(
                _("OrthoDiffusion needs these Python packages. Install them now?"),
                detailedText="\n".join(items) + "\n\n" + _("Slicer's own numpy, SimpleITK, pydicom, requests "
                                                         "and VTK are kept as they are.")):
            raise RuntimeError(_("The packages were not installed."))
        if torchMissing and PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=f">={deps.MINIMUM_TORCH}") is None:
            raise RuntimeError(_("PyTorch could not be installed."))
        if plan.missing:
            constraints = self.workflow.new_output_folder() / "constraints.txt"
            constraints.write_text(deps.constraints_text(), encoding="utf-8")
            if slicerVersion() >= (5, 12):
                slicer.packaging.pip_ensure(plan.missing, constraints=str(constraints), prompt_install=False,
                                            requester="OrthoDiffusion")
            else:
                slicer.util.pip_install([*plan.missing, "-c", str(constraints)])


class OrthoDiffusionTest(ScriptedLoadableModuleTest):
    """In-Slicer test. Wiring always (factory builds have no PyTorch); the end-to-end run (predict,
    edit, correction, fine-tune, rollback) when torch and the requirements are installed. Writes only
    into a temporary ORTHODIFFUSION_HOME, passed to the CLI through the process environment."""

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
            self.test_Wiring()
            self.test_EndToEnd()
        finally:
            self.tearDown()

    def test_Wiring(self):
        from OrthoDiffusionLib.slicerlogic.commands import cli_environment
        from OrthoDiffusionLib.slicerlogic.sampledata import SAMPLE_NAME

        import SampleData

        registerSampleDataAndTerminology()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertGreater(volume.GetImageData().GetDimensions()[2], 1)
        names = vtk.vtkStringArray()
        slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
        self.assertIn("OrthoDiffusion knee-11", " ".join(names.GetValue(i) for i in range(names.GetNumberOfValues())))
        widget = slicer.modules.orthodiffusion.widgetRepresentation().self()
        self.assertGreater(widget.ui.modelComboBox.count, 0)
        self.assertEqual(widget.ui.ageSpinBox.maximum, spin_box_range("age")[1])
        env = cli_environment(LIB_PARENT)
        self.assertEqual(env["ORTHODIFFUSION_HOME"], os.environ["ORTHODIFFUSION_HOME"])

    def waitFor(self, widget):
        while widget.logic.workflow.busy:  # chained runs (fine-tune -> predict again) keep it busy
            slicer.app.processEvents()

    def test_EndToEnd(self):
        from OrthoDiffusionLib.slicerlogic.dependencies import install_plan
        from OrthoDiffusionLib.slicerlogic.sampledata import SAMPLE_NAME

        import SampleData

        if install_plan().needed:
            self.delayDisplay("End-to-end part skipped: PyTorch or the module's requirements are not installed")
            return
        slicer.mrmlScene.Clear()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        widget = slicer.modules.orthodiffusion.widgetRepresentation().self()
        wf, model = widget.logic.workflow, "knee-demo"
        done = []
        widget.logic.predict({"sagittal": volume}, {"age": 54, "sex": "female"}, None, model, "cpu",
                             lambda ok: done.append(ok))
        self.waitFor(widget)
        self.assertEqual(done, [True])
        first = wf.case.results[-1]
        self.assertEqual(wf.nodes.segmentation.GetSegmentation().GetNumberOfSegments(), 11)
        segmentation = wf.nodes.segmentation
        patella = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Patella")
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, patella, volume)
        arr[:] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentation, patella, volume)
        acl = wf.nodes.result.finding("ACL")
        wf.save_correction({"ACL": {"decision": not acl.decision, "action": "flipped"}})
        wf.finetune(model, "cpu", lambda ok: done.append(ok))
        self.waitFor(widget)
        self.assertEqual(done, [True, True])
        tuned = wf.current_head_version(model)
        parent = next(r["parent"] for r in wf.head_versions(model) if r["version"] == tuned)
        self.assertTrue(str(wf.case.results[-1]).endswith(f"result-{tuned}"))
        wf.rollback(model, parent, "cpu", lambda ok: done.append(ok))
        self.waitFor(widget)
        self.assertEqual(done, [True, True, True])
        self.assertEqual(wf.current_head_version(model), parent)

        def probabilities(folder):
            return [f["probability"] for f in json.loads((folder / "findings.json").read_text())["findings"]]

        self.assertNotEqual(wf.case.results[-1], first)
        self.assertEqual(probabilities(wf.case.results[-1]), probabilities(first))  # rollback = shipped heads
        self.delayDisplay("Test passed")
