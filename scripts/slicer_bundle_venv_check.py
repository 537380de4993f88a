"""Manual check: the CLI in a venv holding what Slicer 5.12.3 bundles plus only what the module installs.

    python3 -m venv /tmp/venv-slicer512
    /tmp/venv-slicer512/bin/pip install torch==2.13.0            # first: stands in for PyTorchUtils' torch
    /tmp/venv-slicer512/bin/pip install -r scripts/slicer_5_12_3_bundled.txt
    PYTHONPATH=. /tmp/venv-slicer512/bin/python scripts/slicer_bundle_venv_check.py /tmp/slicer512-run

Installs the module's Resources/requirements.txt with the constraints the module generates, then
runs predict -> (correction written through the corrections store, patella erased, ACL flipped) ->
finetune -> rollback -> predict and checks the rolled-back outputs equal the first ones.
Research use, not for clinical decisions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def run(argv, env):
    print("$", " ".join(argv), flush=True)
    subprocess.run(argv, env=env, check=True)


def main(work: Path) -> int:
    from OrthoDiffusionLib.resources import sample_knee_path
    from OrthoDiffusionLib.slicerlogic.dependencies import constraints_text, install_plan

    work.mkdir(parents=True, exist_ok=True)
    before = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    plan = install_plan()
    assert plan.torch is None and not plan.refused, plan
    (work / "constraints.txt").write_text(constraints_text())
    if plan.missing:
        run([sys.executable, "-m", "pip", "install", "-q", *plan.missing, "-c", str(work / "constraints.txt")],
            os.environ)
    after = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    pins = lambda text: dict(ln.split("==", 1) for ln in text.splitlines() if "==" in ln)  # noqa: E731
    changed = {k: (v, pins(after).get(k)) for k, v in pins(before).items() if pins(after).get(k) != v}
    added = sorted(set(pins(after)) - set(pins(before)))
    print("added:", ", ".join(f"{k}=={pins(after)[k]}" for k in added) or "nothing")
    assert not changed, f"bundled packages changed: {changed}"

    env = dict(os.environ, ORTHODIFFUSION_HOME=str(work / "home"), OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "OrthoDiffusionLib.cli.main"]
    first, tuned, rolled = work / "result", work / "result-tuned", work / "result-rolled"
    predict = lambda out: cli + ["predict", str(sample_knee_path()), "--out", str(out), "--device", "cpu",  # noqa
                                 "--case-id", "knee1"]
    run(predict(first), env)

    import SimpleITK as sitk

    os.environ["ORTHODIFFUSION_HOME"] = env["ORTHODIFFUSION_HOME"]
    from OrthoDiffusionLib.results.corrections import CorrectionsStore, prediction_record

    labels = sitk.ReadImage(str(first / "labels.nrrd"))
    arr = sitk.GetArrayFromImage(labels)
    arr[arr == 3] = 0  # erase the patella
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(labels)
    acl = next(f for f in json.loads((first / "findings.json").read_text())["findings"] if f["key"] == "ACL")
    CorrectionsStore().save("knee1", edited, {"ACL": {"decision": not acl["decision"], "action": "flipped"}},
                            source={"result_dir": str(first), "prediction": prediction_record(first)})
    run(cli + ["finetune", "--model", "knee-demo", "--device", "cpu", "--quiet"], env)
    run(predict(tuned), env)
    versions = json.loads(subprocess.run(cli + ["finetune", "--model", "knee-demo", "--list", "--json"], env=env,
                                         capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    parent = next(r["parent"] for r in versions["versions"] if r["current"])
    run(cli + ["finetune", "--model", "knee-demo", "--rollback", parent], env)
    run(predict(rolled), env)
    same = np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(rolled / "labels.nrrd"))),
                          sitk.GetArrayFromImage(labels))
    probs = lambda d: [f["probability"] for f in json.loads((d / "findings.json").read_text())["findings"]]  # noqa
    patella = lambda d: int((sitk.GetArrayFromImage(sitk.ReadImage(str(d / "labels.nrrd"))) == 3).sum())  # noqa
    print(f"patella voxels: first {patella(first)}, fine-tuned {patella(tuned)}, rolled back {patella(rolled)}")
    print(f"rolled back == first: labels {same}, probabilities {probs(rolled) == probs(first)}")
    assert same and probs(rolled) == probs(first) and patella(tuned) < patella(first)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slicer512-run")))
