"""One owner of argv and defaults: jobs -> argv -> the CLI's own parser -> the same jobs; progress
tags; the child environment; process-tree cancel without psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from OrthoDiffusionLib.cli import finetune as cli_finetune
from OrthoDiffusionLib.cli import predict as cli_predict
from OrthoDiffusionLib.cli.main import build_parser
from OrthoDiffusionLib.jobs import FinetuneJob, PredictJob
from OrthoDiffusionLib.ehr import parse_ehr
from OrthoDiffusionLib.slicerlogic.commands import cli_environment, finetune_command, predict_command
from OrthoDiffusionLib.slicerlogic.process import (BlockingRunner, ProcessPump, kill_process_tree,
                                                   start_process_group)
from OrthoDiffusionLib.slicerlogic.progress import ProgressTracker, parse_progress


def _reparse(argv, job_from_args):
    return job_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("job", [
    PredictJob(inputs=["a.nrrd"]),
    PredictJob(inputs=["a b.nrrd", "c.nrrd"], out="o", model="m", device="cpu", draws=2, seed=3, reference="coronal",
               ehr={"age": 54, "sex": "female", "event": "sport"}, reformat=False, echo=2, heads_version="v0002",
               cache="c", no_cache=True, case_id="pat-1", max_voxels=1000, max_memory_gb=2.5),
    PredictJob(inputs=["a.nrrd"], reformat=True),
    PredictJob(planes={"coronal": "c.nrrd", "sagittal": "s 1.nrrd"}, inputs=["v.nrrd"]),
], ids=["defaults", "every-field", "reformat", "given-planes"])
def test_predict_job_round_trips_through_the_cli_parser(job):
    again = _reparse(job.to_argv(), cli_predict.job_from_args)
    assert parse_ehr(again.ehr) == (None if job.ehr is None else {k: (float(v) if k == "age" else v)
                                                                  for k, v in job.ehr.items()})
    again.ehr = job.ehr
    assert again == job


@pytest.mark.parametrize("job", [
    FinetuneJob(),
    FinetuneJob(model="m", corrections="/x y", cases=["a", "b"], replay=0, replay_weight=0.25, epochs=5, seed=1,
                lr=0.003, device="auto", cache="c"),
], ids=["defaults", "every-field"])
def test_finetune_job_round_trips_through_the_cli_parser(job):
    assert _reparse(job.to_argv(), cli_finetune.job_from_args) == job


def test_unrepresentable_values_are_refused():
    with pytest.raises(ValueError):
        PredictJob(inputs=["a"], max_voxels=None).to_argv()  # the CLI cannot say "no limit"
    with pytest.raises(ValueError):
        PredictJob(inputs=["a"], ehr={"event": "a,b"}).to_argv()


def test_commands_start_with_the_interpreter_and_module():
    cmd = predict_command("/opt/Slicer/bin/PythonSlicer", PredictJob(inputs=["k.nrrd"], out="r", case_id="k-1"))
    assert cmd[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "OrthoDiffusionLib.cli.main", "predict"]
    assert cmd[cmd.index("--case-id") + 1] == "k-1"
    assert finetune_command("py", FinetuneJob(device="cpu"))[-1] == "--quiet"
    with pytest.raises(Exception):
        predict_command("py", PredictJob(inputs=[]))  # validated before anything runs


def test_environment_passes_home_and_pythonpath():
    env = cli_environment("/lib", "cpu", base={"ORTHODIFFUSION_HOME": "/h", "PYTHONPATH": "/other"})
    assert env["ORTHODIFFUSION_HOME"] == "/h" and env["PYTHONPATH"] == os.pathsep.join(["/lib", "/other"])
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "CUDA_VISIBLE_DEVICES" not in cli_environment("/lib", "gpu", base={})


def test_progress_tags():
    assert parse_progress("[features] sagittal 3 draws") == (40, "features")
    assert parse_progress("features without a tag") is None and parse_progress("[unknown] x") is None
    t = ProgressTracker()
    assert t.feed("[segment] x") and not t.feed("[loading] again")  # never backwards
    t.finish(-9)
    assert t.stage == "cancelled"


def test_blocking_runner_streams_lines_and_the_return_code():
    lines, codes = [], []
    BlockingRunner().start([sys.executable, "-c", "print('[loading] a'); print('b'); raise SystemExit(3)"], {},
                           lines.append, codes.append)
    assert lines == ["[loading] a", "b"] and codes == [3]


_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split()[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("own_group", [True, False], ids=["process-group", "launched-by-slicer"])
def test_cancel_kills_the_whole_tree(own_group):
    """Like PythonSlicer (a launcher whose child does the work): both must end. ``own_group=False``
    is how slicer.util.launchConsoleProcess starts a process (no new session)."""
    env = dict(os.environ)
    proc = (start_process_group([sys.executable, "-c", _TREE], env) if own_group else
            subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True, env=env))
    lines, codes = [], []
    pump = ProcessPump(proc, lines.append, codes.append)
    for _ in range(200):
        pump.poll()
        if lines:
            break
        time.sleep(0.05)
    grandchild = int(lines[0])
    assert _alive(proc.pid) and _alive(grandchild)
    kill_process_tree(proc.pid)
    for _ in range(200):
        if pump.poll():
            break
        time.sleep(0.05)
    assert codes == [-9]
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
