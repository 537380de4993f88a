"""torchrun / DDP (gloo, CPU): a 2-process run completes from the CLI, rank 0 writes a checkpoint that
loads, and a second run with the same seed and world size gives identical losses and weights."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.backbone.checkpoints import load_backbone

pytestmark = pytest.mark.slow


def _write_folder(folder, n=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.normal(100, 20, size=(24, 24, 8)).astype(np.float32)  # (z, y, x): x is the thick L-R axis
        arr[6:18, 6:18, :] += 150
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((3.5, 0.6, 0.6))  # coarsest axis x -> sagittal slices
        sitk.WriteImage(img, str(folder / f"case{i}.nii.gz"))
    return folder


def _torchrun(data, out, steps=3):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "OrthoDiffusionLib", "pretrain", "--plane", "sagittal", "--data", str(data), "--config", "tiny",
           "--out", str(out), "--steps", str(steps), "--ckpt-every", "2", "--eval-every", "0", "--n-samples", "0",
           "--seed", "5", "--device", "cpu", "--threads", "1", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)], proc


def test_two_process_gloo_run_and_reproducibility(tmp_path):
    data = _write_folder(tmp_path / "vols")
    losses_a, proc = _torchrun(data, tmp_path / "a")
    assert len(losses_a) == 3 and all(np.isfinite(losses_a))
    assert "world size 2" in proc.stderr
    ck = tmp_path / "a" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_000003"
    import json

    state = json.loads((ck / "step_000003" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rank_states"]) == 2
    model, manifest = load_backbone(tmp_path / "a" / "backbone" / "sagittal.safetensors")
    assert manifest["provenance"]["world_size"] == 2

    losses_b, _ = _torchrun(data, tmp_path / "b")
    assert losses_a == losses_b
    from safetensors.torch import load_file

    wa = load_file(str(ck / "step_000003" / "ema.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_000003" / "ema.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)
