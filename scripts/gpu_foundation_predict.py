"""Phases 5 and 6 of scripts/gpu_foundation.py: ``predict`` on CUDA (default cuDNN settings, then
strict fp32) and on the CPU, compared with a stated tolerance, and the bundle for the device tool's
``$OUT``. Research use, not for clinical decisions.

Tolerance: finding probabilities within 1e-3 (absolute, every noise draw) and label maps agreeing on
at least 99 % of the voxels; the verdict is taken on the strict fp32 pair.
"""

from __future__ import annotations

import shutil
import tarfile
import time
from pathlib import Path

from OrthoDiffusionLib.planes import PLANES  # gpu_foundation.py has put the repository on the path
PROB_TOL, LABEL_AGREEMENT = 1e-3, 0.99
BUNDLE_FILE_LIMIT = 16 * 1024 * 1024  # the device tool returns files up to this size


# -- predict on CUDA and on the CPU -------------------------------------------------------------------

def _predict(device: str, out: Path, draws: int | None, strict_fp32: bool = False):
    import torch

    from OrthoDiffusionLib.inference.predict import predict_study
    from OrthoDiffusionLib.jobs import PredictJob
    from OrthoDiffusionLib.resources import sample_knee_path

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if strict_fp32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t0 = time.perf_counter()
        pred = predict_study(PredictJob(inputs=[str(sample_knee_path())], out=str(out), model="knee-demo",
                                        device=device, draws=draws, no_cache=True, seed=0), log=lambda m: None)
        return pred, time.perf_counter() - t0
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compare_predictions(a, b) -> dict:
    import numpy as np
    import SimpleITK as sitk

    la, lb = sitk.GetArrayFromImage(a.labels), sitk.GetArrayFromImage(b.labels)
    fg = (la > 0) | (lb > 0)
    prob = float(np.max(np.abs(a.draw_probabilities - b.draw_probabilities)))
    agree = float(np.mean(la == lb))
    return {"max_abs_probability_diff": prob, "max_abs_mean_probability_diff": float(np.max(np.abs(a.probabilities - b.probabilities))),
            "label_agreement": agree, "label_agreement_foreground": float(np.mean(la[fg] == lb[fg])) if fg.any() else 1.0,
            "decisions_equal": [f.decision for f in a.result.findings] == [f.decision for f in b.result.findings],
            "max_abs_uncertainty_diff": float(np.max(np.abs(sitk.GetArrayFromImage(a.uncertainty)
                                                            - sitk.GetArrayFromImage(b.uncertainty)))),
            "within_tolerance": prob <= PROB_TOL and agree >= LABEL_AGREEMENT}


def predict_check(folder: Path, dry_run: bool) -> dict:
    import torch

    draws = 1 if dry_run else None
    cpu, t_cpu = _predict("cpu", folder / "cpu", draws)
    result = {"input": "Resources/SampleData/knee_mese_t2_sag_echo1.nii.gz", "model": "knee-demo",
              "tolerance": {"probability_abs": PROB_TOL, "label_voxel_agreement": LABEL_AGREEMENT},
              "seconds": {"cpu": round(t_cpu, 2)},
              "findings_cpu": {f.key: f.probability for f in cpu.result.findings}}
    if dry_run or not torch.cuda.is_available():  # the comparison code still runs: CPU against a second CPU run
        again, t = _predict("cpu", folder / "cpu-again", draws)
        result.update(compared="cpu vs cpu (no GPU: dry run)", seconds={**result["seconds"], "cpu_again": round(t, 2)},
                      cpu_vs_cpu=compare_predictions(cpu, again))
        result["passed"] = result["cpu_vs_cpu"]["within_tolerance"]
        return result
    cuda, t_cuda = _predict("cuda", folder / "cuda", draws)
    strict, t_strict = _predict("cuda", folder / "cuda-fp32", draws, strict_fp32=True)
    result["seconds"].update(cuda=round(t_cuda, 2), cuda_fp32=round(t_strict, 2))
    result.update(compared="cuda vs cpu", cuda_default_vs_cpu=compare_predictions(cuda, cpu),
                  cuda_fp32_vs_cpu=compare_predictions(strict, cpu),
                  findings_cuda={f.key: f.probability for f in cuda.result.findings})
    result["passed"] = result["cuda_fp32_vs_cpu"]["within_tolerance"]
    return result


# -- the bundle for the device tool's $OUT ---------------------------------------------------------------

def write_bundle(out: Path, bundle: Path) -> list[str]:
    """≤ 8 files, each ≤ 16 MiB: report, the three backbones, one tar.gz of the small files."""
    bundle.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(bundle / "foundation-logs.tar.gz", "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(out)
            small = path.is_file() and path.stat().st_size < 2 * 1024 * 1024
            wanted = path.suffix in {".csv", ".png", ".json", ".log", ".txt"} and "checkpoints" not in rel.parts
            if small and wanted and (rel.parts[0] != "cohort" or path.name == "manifest.csv"):
                tar.add(path, arcname=str(rel))
    written.append("foundation-logs.tar.gz")
    for plane in PLANES:
        src = out / "backbones" / f"{plane}.safetensors"
        if src.is_file() and src.stat().st_size <= BUNDLE_FILE_LIMIT:
            shutil.copy2(src, bundle / src.name)
            written.append(src.name)
    shutil.copy2(out / "report.json", bundle / "report.json")
    return written + ["report.json"]
