"""Benchmark: `orthodiffusion finetune` after one corrected case, knee-demo model, 2 CPU threads.

Setup (not timed): a temporary ORTHODIFFUSION_HOME and feature cache; `predict` on the sample knee
(sagittal only, 3 noise draws: fills the feature cache); a correction that erases the predicted
patella and flips ACL, stored with the prediction record as the Slicer module does. Timed: the
whole `orthodiffusion finetune --model knee-demo` command in a fresh process (Python start-up and
imports included): heads on cached features, segmentation head included, writing the new head
version. Each repeat makes a new version from the previous one.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_finetune.py [--repeats 3] [--replay 16]

Prints JSON with wall times, the command's own stage times and ``uptime`` before/after.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup(home: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from OrthoDiffusionLib.results.corrections import CorrectionsStore, prediction_record
    from OrthoDiffusionLib.jobs import PredictJob
    from OrthoDiffusionLib.inference.predict import predict_study
    from OrthoDiffusionLib.resources import sample_knee_path

    out = home / "pred"
    predict_study(PredictJob(inputs=[str(sample_knee_path())], out=str(out), model="knee-demo", device="cpu",
                             draws=3, reformat=False, case_id="bench-knee"), log=lambda m: None)
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    arr = sitk.GetArrayFromImage(labels)
    arr[arr == 3] = 0  # the annotator erases the patella
    edited = sitk.GetImageFromArray(arr.astype(np.uint8))
    edited.CopyInformation(labels)
    findings = json.loads((out / "findings.json").read_text())["findings"]
    acl = next(f for f in findings if f["key"] == "ACL")
    CorrectionsStore().save("bench-knee", edited, {"ACL": {"decision": not acl["decision"], "action": "flipped"}},
                            source={"prediction": prediction_record(out)})


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replay", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="od-bench-ft-") as tmp:
        home = Path(tmp)
        os.environ.update(ORTHODIFFUSION_HOME=str(home / "home"), ORTHODIFFUSION_CACHE=str(home / "cache"),
                          OMP_NUM_THREADS="2")
        sys.path.insert(0, str(REPO))
        import torch

        torch.set_num_threads(2)
        _setup(home)
        cmd = [sys.executable, "-m", "OrthoDiffusionLib", "finetune", "--model", "knee-demo", "--json", "--quiet",
               "--device", "cpu", "--replay", str(args.replay)]
        rows, before = [], _uptime()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=os.environ)
            wall = time.perf_counter() - t0
            s = json.loads(out.stdout.strip().splitlines()[-1])
            case = next(iter(s["cases"].values()))
            rows.append({"wall_s": round(wall, 2), "in_process_s": s["seconds"], "stages_s": s["stages"],
                         "version": s["version"], "replay_used": s["replay"]["used"],
                         "mean_dice": [round(case["mean_dice_before"], 4), round(case["mean_dice_after"], 4)]})
        result = {"command": " ".join(["orthodiffusion"] + cmd[3:]), "threads": 2, "runs": rows,
                  "best_wall_s": min(r["wall_s"] for r in rows), "uptime_before": before, "uptime_after": _uptime()}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
