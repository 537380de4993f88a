"""Pretraining throughput on this machine: steps/s and samples/s of the knee-demo config (16x64x64,
2.09 M parameters, batch 2 per process) for 1 process (1 and 2 threads) and 2 gloo DDP processes
(1 thread each, via torchrun), plus peak RSS per process.

    .venv/bin/python bench/bench_pretrain.py [--steps 12] [--warmup 2] [--write-readme]

The run uses the real kit's sagittal MESE series (all echoes) as data; the first ``--warmup`` steps
are excluded from the rate. Results are printed as a Markdown table and, with ``--write-readme``,
written to bench/README.md under the heading "Pretraining" (only that section is replaced).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "knee_mese_t2_sag_8echo.nii.gz"


def _run(world: int, threads: int, steps: int, warmup: int, batch: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    args = ["pretrain", "--plane", "sagittal", "--data", str(DATA), "--config", "knee-demo", "--out", str(out),
            "--steps", str(steps), "--batch-size", str(batch), "--ckpt-every", "0", "--eval-every", "0",
            "--n-samples", "0", "--device", "cpu", "--threads", str(threads), "--no-progress", "--seed", "0"]
    if world == 1:
        cmd = [sys.executable, "-m", "OrthoDiffusionLib", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "OrthoDiffusionLib", *args]
    # a fresh wrapper process per run, so RUSAGE_CHILDREN covers exactly this run's processes
    wrap = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", wrap, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rss_kb = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1))
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t = [float(r["time_s"]) for r in rows]
    rate = (steps - warmup) / (t[-1] - t[warmup - 1])
    return {"world": world, "threads": threads, "batch": batch, "steps_per_s": rate,
            "samples_per_s": rate * batch * world, "s_per_step": 1 / rate, "wall_s": wall,
            "peak_rss_gb": rss_kb / 1024 ** 2}


def _feature_time(threads: int, repeats: int = 5) -> float:
    """Best-of wall time of the 3-plane mid_2 feature pass (t = 100, batch 1, encoder + middle only)."""
    import torch

    from OrthoDiffusionLib.backbone import DiffusionUNet
    from OrthoDiffusionLib.training.presets import load_config

    torch.set_num_threads(threads)
    cfg, _ = load_config("knee-demo")
    models = [DiffusionUNet(cfg).eval() for _ in range(3)]
    x, t = torch.randn(1, 1, cfg.depth_size, cfg.image_size, cfg.image_size), torch.tensor([100])
    best = float("inf")
    with torch.inference_mode():
        for m in models:
            m(x, t, taps=["mid_2"])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for m in models:
                m(x, t, taps=["mid_2"])
            best = min(best, time.perf_counter() - t0)
    return best


def _table(results: list[dict], steps: int, warmup: int, feat: dict | None = None) -> str:
    base = next(r for r in results if r["world"] == 1 and r["threads"] == 1)
    lines = [
        "## Pretraining",
        "",
        f"`bench/bench_pretrain.py` ({time.strftime('%Y-%m-%d')}): knee-demo config (16×64×64 input, "
        "num_channels 16, channel_mult (1,2,2,4), norm_groups 8, 2.09 M parameters), fp32, AdamW, "
        f"{steps} steps of which the first {warmup} are warm-up, data = the kit's sagittal MESE (8 echoes). "
        f"CPU: {os.cpu_count()} cores shared with other jobs ({platform.processor() or platform.machine()}), "
        f"torch {__import__('torch').__version__}. **GPU: not lent in this session.**",
        "",
        "| processes | threads / process | batch / process | global batch | steps/s | s/step | samples/s | "
        "speed-up (samples/s vs 1 process × 1 thread) | efficiency (speed-up / cores used) | peak RSS (largest process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speedup = r["samples_per_s"] / base["samples_per_s"]
        cores = r["world"] * r["threads"]
        lines.append(f"| {r['world']} | {r['threads']} | {r['batch']} | {r['batch'] * r['world']} | "
                     f"{r['steps_per_s']:.3f} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{speedup:.2f} | {speedup / cores:.2f} | {r['peak_rss_gb']:.2f} GB |")
    lines += ["",
              "The machine has 2 cores, so the honest scaling number is the 2-process gloo DDP row: its "
              "efficiency is samples/s relative to twice the 1-process × 1-thread rate (1.0 = perfect). The "
              "1 × 2-thread row shows intra-op threading on the same two cores. The cores are shared with other "
              "jobs (their load was 3-5 during the run), which hurts 2-thread OpenMP much more than 1-thread "
              "processes; timings vary by ±30 % or more from run to run.", ""]
    if feat:
        lines += [f"Inference with the same config: the 3-plane `mid_2` feature pass (t = 100, batch 1, encoder + "
                  f"middle block only) takes **{feat[1]:.2f} s** with 1 thread and **{feat[2]:.2f} s** with 2 threads "
                  "for all three planes together (best of 5).", ""]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    readme = REPO / "bench" / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Pretraining\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true")
    a = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world, threads in ((1, 1), (1, 2), (2, 1)):
            r = _run(world, threads, a.steps, a.warmup, a.batch, Path(tmp) / f"w{world}t{threads}")
            print(r, flush=True)
            results.append(r)
    feat = {n: _feature_time(n) for n in (1, 2)}
    print(feat)
    section = _table(results, a.steps, a.warmup, feat)
    print(section)
    if a.write_readme:
        write_readme(section)


if __name__ == "__main__":
    main()
