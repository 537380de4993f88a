"""scripts/gpu_foundation.py, the prepared GPU-loan run, in its CPU dry-run mode: tiny cohort, three
plane backbones continued from knee-demo, export to both formats, predict compared across two runs,
report and a bundle that fits the device tool's $OUT limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from OrthoDiffusionLib.backbone.checkpoints import load_backbone, load_official
from OrthoDiffusionLib.storage import sha256_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_foundation.py"


def test_dry_run_end_to_end(tmp_path):
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--dry-run", "--bundle", str(bundle)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not for clinical decisions" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["dry_run"] and "not for clinical" in report["disclaimer"]
    assert report["cohort"]["cases"] == 3 and not report["cohort"]["labels_used"]
    assert set(report["phases_s"]) == {"synth", "volumes", "pretrain", "export", "predict"}
    knee_demo = REPO / "Resources" / "Models" / "knee-demo"
    for plane in ("sagittal", "coronal", "axial"):
        run = report["pretrain"][plane]
        assert run["returncode"] == 0 and run["steps_trained"] == 3 and run["samples"] == 6
        assert run["heldout_curve"] and run["heldout_curve"][-1][0] == 3  # the held-out loss at the last step
        model, info = load_backbone(out / "backbones" / f"{plane}.safetensors")
        assert info["provenance"]["init"]["sha256"] == sha256_file(knee_demo / f"{plane}.safetensors")
        back, _ = load_official(out / "backbones" / f"{plane}.pt")  # the published container + its sidecar
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
        assert report["backbones"][plane]["sha256"] == sha256_file(out / "backbones" / f"{plane}.safetensors")
        assert (out / "runs" / plane / "loss.png").is_file()
    pred = report["predict"]
    assert pred["passed"] and pred["compared"].startswith("cpu vs cpu")
    assert pred["tolerance"] == {"probability_abs": 1e-3, "label_voxel_agreement": 0.99}
    assert pred["cpu_vs_cpu"]["max_abs_probability_diff"] == 0.0 and pred["cpu_vs_cpu"]["label_agreement"] == 1.0
    assert len(pred["findings_cpu"]) == 8
    assert "SimpleITK" in report["third_party_modules"] and "torch" in report["third_party_modules"]
    files = sorted(p.name for p in bundle.iterdir())
    assert files == ["axial.safetensors", "coronal.safetensors", "foundation-logs.tar.gz", "report.json",
                     "sagittal.safetensors"]
    assert all((bundle / f).stat().st_size <= 16 * 1024 * 1024 for f in files)
    import tarfile

    with tarfile.open(bundle / "foundation-logs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/sagittal/log.csv" in names and "logs/pretrain_axial.log" in names
    assert not [n for n in names if n.endswith((".nii.gz", ".npy", ".safetensors"))]


def test_refuses_a_used_folder_and_a_missing_gpu(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("mine")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "used"), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "is not empty" in proc.stderr
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "new")], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and "no CUDA GPU here" in proc.stderr
