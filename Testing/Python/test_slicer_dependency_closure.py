"""What the Slicer module runs (predict, fine-tune, rollback, the model list) needs only what Slicer
bundles plus what the module installs (Resources/requirements.txt): run the real CLI in an
interpreter where the packages Slicer lacks cannot be imported. (The full predict → fine-tune →
rollback cycle in a venv with Slicer 5.12.3's package versions is scripts/slicer_bundle_venv_check.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

# Not in Slicer 5.12.3's Python (scripts/slicer_5_12_3_bundled.txt) and not installed by the module.
ABSENT_IN_SLICER = ("sklearn", "monai", "einops", "matplotlib", "jinja2", "iterstrat", "hypothesis", "pytest")

BLOCKER = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not in Slicer's Python (blocked for this test)")
        return None
sys.meta_path.insert(0, _Absent())
from OrthoDiffusionLib.cli.main import main
import OrthoDiffusionLib.adapt.finetune, OrthoDiffusionLib.adapt.output_layers, OrthoDiffusionLib.adapt.corrected
import OrthoDiffusionLib.models.versions, OrthoDiffusionLib.slicerlogic.workflow
raise SystemExit(main(sys.argv[1:]))
"""


def _cli(args, tmp_path):
    env = {**os.environ, "ORTHODIFFUSION_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCKER.format(absent=ABSENT_IN_SLICER), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_predict_and_versions_run_without_the_packages_slicer_lacks(tmp_path, sample_knee):
    out = tmp_path / "result"
    done = _cli(["predict", str(sample_knee), "--out", str(out), "--device", "cpu", "--draws", "1", "--no-cache"],
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "labels.nrrd").is_file() and json.loads((out / "result.json").read_text())["case_id"]
    listed = _cli(["finetune", "--model", "knee-demo", "--list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert json.loads(listed.stdout.strip().splitlines()[-1])["versions"]
    models = _cli(["models", "list", "--json"], tmp_path)
    assert models.returncode == 0 and "knee-demo" in models.stdout, models.stderr[-3000:]


def test_the_blocker_does_block(tmp_path):
    """The guard above would be vacuous if the blocked packages could still load."""
    blocker = BLOCKER.format(absent=ABSENT_IN_SLICER).split("from OrthoDiffusionLib")[0]
    done = subprocess.run([sys.executable, "-c", blocker + "import sklearn"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode != 0 and "not in Slicer's Python" in done.stderr
