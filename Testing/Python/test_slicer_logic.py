"""The module's logic on slicer-core with the REAL CLI: predict -> load into a vtkMRMLScene -> edit
a segment -> save correction -> fine-tune -> reload -> rollback (knee-demo, the embedded sample knee).

The runner is the library's BlockingRunner (a real child process, in its own process group); the
home folder is a temp ORTHODIFFUSION_HOME that must reach the child through the environment.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from OrthoDiffusionLib.mrml.headless import headless_scene  # noqa: E402
from OrthoDiffusionLib.mrml.volumes import load_volume  # noqa: E402
from OrthoDiffusionLib.resources import resource_path, sample_knee_path  # noqa: E402
from OrthoDiffusionLib.slicerlogic.process import BlockingRunner  # noqa: E402
from OrthoDiffusionLib.slicerlogic.workflow import CaseWorkflow  # noqa: E402
from OrthoDiffusionLib.storage import sha256_file  # noqa: E402

MODEL = "knee-demo"


def _tree_sha(root):
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def _erase_segment(scene, logics, seg_node, name, reference):
    """What a Segment Editor erase does, through slicer.util's segment helpers (app globals shimmed)."""
    from slicer_util_globals import util_globals

    with util_globals(scene, logics):
        sid = seg_node.GetSegmentation().GetSegmentIdBySegmentName(name)
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, sid, reference)
        voxels = int(arr.sum())
        arr[:] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(arr, seg_node, sid, reference)
        return voxels


def _labels(folder):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd")))


def finding_probabilities(folder):
    return [f["probability"] for f in json.loads((folder / "findings.json").read_text())["findings"]]


@pytest.fixture(scope="module")
def loop(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("slicerlogic")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    mp.setenv("OMP_NUM_THREADS", "1")
    shipped_before = _tree_sha(resource_path("Models", MODEL, "heads"))
    scene, logics = headless_scene()
    knee = load_volume(scene, sample_knee_path(), "knee")
    user_file = knee.GetStorageNode().GetFileName()
    lines, stages = [], []
    wf = CaseWorkflow(scene, logics["Segmentations"], BlockingRunner(), sys.executable, str(repo_root),
                      log=lines.append, progress=lambda pct, stage: stages.append((pct, stage)))
    out = wf.new_output_folder()  # temporary: cleanup() must remove it
    steps = {}
    case = wf.prepare({"sagittal": knee}, {"age": 54, "sex": "female", "patient_type": "outpatient"}, out)
    wf.predict(MODEL, "cpu", lambda ok: steps.__setitem__("predict", ok))
    first = {"dir": case.results[-1], "nodes": wf.nodes, "stages": list(stages)}
    erased = _erase_segment(scene, logics, wf.nodes.segmentation, "Patella", knee)
    acl = wf.nodes.result.finding("ACL")
    entry = wf.save_correction({"ACL": {"decision": not acl.decision, "action": "flipped"}})
    wf.finetune(MODEL, "cpu", lambda ok: steps.__setitem__("finetune", ok))
    tuned = {"dir": case.results[-1], "version": wf.current_head_version(MODEL), "nodes": wf.nodes,
             "summary": wf.finetune_summary(MODEL)}
    parent = next(r["parent"] for r in wf.head_versions(MODEL) if r["version"] == tuned["version"])
    wf.rollback(MODEL, parent, "cpu", lambda ok: steps.__setitem__("rollback", ok))
    yield types.SimpleNamespace(wf=wf, scene=scene, knee=knee, user_file=user_file, case=case, first=first,
                                tuned=tuned, parent=parent, entry=entry, erased=erased, acl=acl, steps=steps,
                                lines=lines, out=out, root=root, shipped_before=shipped_before)
    wf.cleanup()
    mp.undo()


def test_every_step_ran_the_cli_successfully(loop):
    assert loop.steps == {"predict": True, "finetune": True, "rollback": True}, "\n".join(loop.lines[-30:])
    commands = [ln for ln in loop.lines if "OrthoDiffusionLib.cli.main" in ln]
    assert [c.split("OrthoDiffusionLib.cli.main ")[1].split()[0] for c in commands] == \
        ["predict", "finetune", "predict", "finetune", "predict"]
    assert "--rollback" in commands[3] and "--quiet" in commands[1]


def test_case_id_and_inputs(loop):
    c = loop.case
    assert c.case_id.startswith("knee-") and len(c.case_id) == len("knee-") + 8
    assert sorted(p.name for p in c.inputs.values()) == [f"{c.case_id}_sagittal.nrrd"]
    assert loop.knee.GetStorageNode().GetFileName() == loop.user_file  # exported, not re-pointed
    assert json.loads((loop.first["dir"] / "result.json").read_text())["case_id"] == c.case_id


def test_predict_loaded_into_the_scene(loop):
    nodes = loop.first["nodes"]
    seg = nodes.segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == 11 and loop.erased > 100
    assert nodes.table.GetNumberOfRows() == 8 and nodes.chart is not None
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(loop.scene)
    assert sh.GetItemName(nodes.folder_item) == f"OrthoDiffusion {loop.case.case_id}"
    stages = [s for _, s in loop.first["stages"]]
    assert stages[0] == "starting" and stages[-1] == "done" and "features" in stages and "writing" in stages
    percents = [p for p, _ in loop.first["stages"]]
    assert percents == sorted(percents) and percents[-1] == 100


def test_correction_finetune_and_reload(loop):
    from OrthoDiffusionLib.models.versions import latest_finetune

    assert loop.entry.case_id == loop.case.case_id
    assert loop.tuned["dir"].name == f"result-{loop.tuned['version']}"
    home = loop.root / "home"
    assert (home / "corrections").is_dir() and (home / "models" / MODEL / "heads" / "versions").is_dir()
    # the fine-tuned heads learned the erase: the reloaded segmentation has a smaller patella
    patella = 3  # knee-11 value
    assert (_labels(loop.tuned["dir"]) == patella).sum() < (_labels(loop.first["dir"]) == patella).sum()
    assert loop.tuned["nodes"].segmentation is not loop.first["nodes"].segmentation
    assert "mean Dice" in loop.tuned["summary"] and "not for clinical decisions" in loop.tuned["summary"]
    assert latest_finetune(MODEL)["current"] is False  # after the rollback the copy is current again


def test_rollback_restores_the_first_outputs(loop):
    last = loop.case.results[-1]
    assert last.name == f"result-{loop.parent}" and loop.wf.current_head_version(MODEL) == loop.parent
    assert np.array_equal(_labels(last), _labels(loop.first["dir"]))
    assert finding_probabilities(last) == finding_probabilities(loop.first["dir"])
    assert _tree_sha(resource_path("Models", MODEL, "heads")) == loop.shipped_before


def test_case_ids_differ_per_patient_and_repeat_per_series(loop):
    from OrthoDiffusionLib.mrml.inputs import case_id_for

    other = load_volume(loop.scene, sample_knee_path(), "knee")  # same series, same name
    assert case_id_for(loop.scene, other) == loop.case.case_id
    arr = slicer.util.arrayFromVolume(other)
    arr[0, 0, 0] += 1  # another patient whose series happens to carry the same name
    other.Modified()
    assert case_id_for(loop.scene, other) != loop.case.case_id
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(loop.scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Doe^Jane")
    sh.SetItemAttribute(patient, "DICOM.PatientID", "PAT 0042")
    sh.CreateItem(patient, other)
    assert case_id_for(loop.scene, other).startswith("PAT_0042-")


def test_cleanup_removes_the_temporary_folder(tmp_path, repo_root):
    scene, logics = headless_scene()
    wf = CaseWorkflow(scene, logics["Segmentations"], BlockingRunner(), sys.executable, str(repo_root), log=[].append)
    temp, chosen = wf.new_output_folder(), wf.new_output_folder(str(tmp_path / "mine"))
    (temp / "inputs").mkdir()
    wf.cleanup()
    assert not temp.exists() and chosen.is_dir()  # the user's own folder stays
