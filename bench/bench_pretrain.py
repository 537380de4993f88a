"""Pretraining throughput and convergence on this machine, knee-demo config (16x64x64 input, 2.09 M
parameters), data = the real kit's sagittal MESE series (8 echoes, the last one held out).

Default (``--compare``): the published objective before the #15 changes next to the adopted ones,
one process with one thread each (so samples/s is also samples/s per core), run one after the
other in one invocation, with the load average read before and after every run:

- ``before``: whole 16x64x64 inputs, batch 2, uniform ε-MSE, constant lr after the preset warm-up;
- ``after``: random 16x32x32 crops, batch 8 (the same voxels per step): of the changes the ablation
  (``--ablation``) measured, the one adopted (the ``knee-demo-crops`` preset);
- ``crops-b2``: random 16x32x32 crops at batch 2 (what a crop costs per sample);
- ``channels-last``: ``before`` with the channels_last_3d memory format.

``before`` and ``after`` train ``--steps`` steps from the same random weights; their last row is
the held-out ε-MSE of the EMA model on the held-out echo, whole 16x64x64 input, fixed t and noise
(the same measurement for both, whatever the loss weighting). The first ``--warmup`` steps are left
out of the rates.

    nice -n 10 .venv/bin/python bench/bench_pretrain.py [--steps 50] [--write-notes]   # → bench/pretrain.md
    nice -n 10 .venv/bin/python bench/bench_pretrain.py --ablation [--write-notes]     # one change at a time
    nice -n 10 .venv/bin/python bench/bench_pretrain.py --scaling [--write-readme]     # processes x threads

``--scaling`` is the earlier table: 1 process (1 and 2 threads) and 2 gloo DDP processes, written
into bench/README.md under "Pretraining".
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
CROP_VOXELS_RATIO = (16 * 32 * 32) / (16 * 64 * 64)

ARMS = {
    "before": [],
    "after": ["--crop", "16,32,32"],  # at batch 8: the knee-demo-crops preset
    "crops-b2": ["--crop", "16,32,32"],
    "channels-last": ["--channels-last"],
    # --ablation: the other changes, at the same step budget
    "crops+min-snr": ["--crop", "16,32,32", "--loss-weighting", "min-snr"],
    "min-snr": ["--loss-weighting", "min-snr"],
    "cosine": ["--lr-schedule", "cosine"],
}
PLANS = {  # name → [(arm, batch, trained to the full --steps with a held-out loss, else throughput only)]
    "compare": [("before", 2, True), ("after", 8, True), ("crops-b2", 2, False), ("channels-last", 2, False)],
    "ablation": [("min-snr", 2, True), ("cosine", 2, True), ("crops+min-snr", 8, True)],
}


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").is_file() else float("nan")


def _run(world: int, threads: int, steps: int, warmup: int, batch: int, out: Path, extra=(), eval_last=False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    args = ["pretrain", "--plane", "sagittal", "--data", str(DATA), "--config", "knee-demo", "--out", str(out),
            "--steps", str(steps), "--batch-size", str(batch), "--ckpt-every", "0",
            "--eval-every", str(steps if eval_last else 0), "--n-samples", "0", "--device", "cpu",
            "--threads", str(threads), "--no-progress", "--seed", "0", *extra]
    if world == 1:
        cmd = [sys.executable, "-m", "OrthoDiffusionLib", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "OrthoDiffusionLib", *args]
    # a fresh wrapper process per run, so RUSAGE_CHILDREN covers exactly this run's processes
    wrap = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    load_before, t0 = _load(), time.time()
    proc = subprocess.run([sys.executable, "-c", wrap, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rss_kb = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1))
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t = [float(r["time_s"]) for r in rows]
    rate = (steps - warmup) / (t[-1] - t[warmup - 1])
    per_t = re.findall(r"t(\d+)=([\d.]+)", proc.stderr.strip().splitlines()[-1]) if eval_last else []
    return {"world": world, "threads": threads, "batch": batch, "steps_per_s": rate,
            "samples_per_s": rate * batch * world, "s_per_step": 1 / rate, "wall_s": wall,
            "peak_rss_gb": rss_kb / 1024 ** 2, "heldout": rows[-1].get("heldout_loss") or "",
            "train_loss_last10": sum(float(r["loss"]) for r in rows[-10:]) / len(rows[-10:]),
            "load_before": load_before, "load_after": _load(), "heldout_per_t": dict(per_t)}


def compare(plan: str, steps: int, warmup: int, short: int) -> tuple[list[tuple[str, dict]], str]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch, full in PLANS[plan]:
            n = steps if full else short
            r = _run(1, 1, n, warmup, batch, Path(tmp) / name, ARMS[name], eval_last=full)
            r["steps"] = n
            print(name, r, flush=True)
            results.append((name, r))
    return results, _compare_notes(plan, results, warmup)


def _compare_notes(plan: str, results, warmup: int) -> str:
    import torch

    flag = " --ablation" if plan == "ablation" else ""
    title = ("## Ablation: one change at a time" if plan == "ablation"
             else "## Before and after, one invocation")
    lines = [
        title,
        "",
        f"`nice -n 10 .venv/bin/python bench/bench_pretrain.py{flag} --write-notes` "
        f"({time.strftime('%Y-%m-%d %H:%M %Z')}), "
        f"one invocation, the runs one after the other. knee-demo config (16×64×64 input, 2.09 M parameters), fp32, "
        f"AdamW, preset lr 3e-4 with 20 warm-up steps, 1 process × 1 thread (`--threads 1`), seed 0, data = the kit's "
        f"sagittal MESE (8 echoes; echo 8 held out). CPU: {os.cpu_count()} cores shared with other engineers' jobs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}. The first {warmup} steps are "
        "left out of the rates. **Research use, not for clinical decisions.**",
        "",
        "| run | options | steps | batch | voxels / sample | s/step | samples/s per core | voxel-samples/s per core "
        "(whole-input equivalents) | held-out ε-MSE at the end (EMA, whole input) | its t = 50 / 200 / 500 / 800 | "
        "train loss (last 10 steps) | peak RSS | load average before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results:
        crop = "--crop" in ARMS[name]
        vox = CROP_VOXELS_RATIO if crop else 1.0
        lines.append(
            f"| {name} | `{' '.join(ARMS[name]) or '(published objective)'}` | {r['steps']} | {r['batch']} | "
            f"{'16×32×32' if crop else '16×64×64'} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} | "
            f"{r['samples_per_s'] * vox:.2f} | {r['heldout'] or '–'} | "
            f"{' / '.join(r['heldout_per_t'].values()) or '–'} | {r['train_loss_last10']:.4f} | "
            f"{r['peak_rss_gb']:.2f} GB | {r['load_before']:.2f} → {r['load_after']:.2f} |")
    if plan != "compare":
        return "\n".join(lines + [""])
    base, after = dict(results)["before"], dict(results)["after"]
    lines += [
        "",
        f"Samples/s per core: **{base['samples_per_s']:.2f} before → {after['samples_per_s']:.2f} after** "
        f"(×{after['samples_per_s'] / base['samples_per_s']:.2f}; a crop sample has a quarter of the voxels, so in "
        f"whole-input equivalents {after['samples_per_s'] * CROP_VOXELS_RATIO:.2f}). The held-out columns are the same "
        "measurement for every run (whole input, fixed t and noise); the training-loss column is not comparable across "
        "loss weightings (min-SNR weights are ≤ 1).",
        "",
    ]
    return "\n".join(lines)


# -- the earlier processes x threads table ------------------------------------------------------------

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
        f"`bench/bench_pretrain.py --scaling` ({time.strftime('%Y-%m-%d')}): knee-demo config (16×64×64 input, "
        "num_channels 16, channel_mult (1,2,2,4), norm_groups 8, 2.09 M parameters), fp32, AdamW, "
        f"{steps} steps of which the first {warmup} are warm-up, data = the kit's sagittal MESE (8 echoes). "
        f"CPU: {os.cpu_count()} cores shared with other jobs ({platform.processor() or platform.machine()}), "
        f"torch {__import__('torch').__version__}. **GPU: not lent in this session.** Before/after the #15 "
        "pretraining options: [pretrain.md](pretrain.md).",
        "",
        "| processes | threads / process | batch / process | global batch | steps/s | s/step | samples/s | "
        "speed-up (samples/s vs 1 process × 1 thread) | efficiency (speed-up / cores used) | peak RSS (largest process) "
        "| load average before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speedup = r["samples_per_s"] / base["samples_per_s"]
        cores = r["world"] * r["threads"]
        lines.append(f"| {r['world']} | {r['threads']} | {r['batch']} | {r['batch'] * r['world']} | "
                     f"{r['steps_per_s']:.3f} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{speedup:.2f} | {speedup / cores:.2f} | {r['peak_rss_gb']:.2f} GB | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} |")
    lines += ["",
              "The machine has 2 cores, so the honest scaling number is the 2-process gloo DDP row: its "
              "efficiency is samples/s relative to twice the 1-process × 1-thread rate (1.0 = perfect). The "
              "1 × 2-thread row shows intra-op threading on the same two cores. The cores are shared with other "
              "jobs, which hurts 2-thread OpenMP much more than 1-thread processes; timings vary by ±30 % or more "
              "from run to run.", ""]
    if feat:
        lines += [f"Inference with the same config: the 3-plane `mid_2` feature pass (t = 100, batch 1, encoder + "
                  f"middle block only) takes **{feat[1]:.2f} s** with 1 thread and **{feat[2]:.2f} s** with 2 threads "
                  "for all three planes together (best of 5).", ""]
    return "\n".join(lines)


def write_notes(section: str) -> None:
    """Replace (or add) this ``## `` section of bench/pretrain.md, keeping the rest of the notes."""
    notes = REPO / "bench" / "pretrain.md"
    text = notes.read_text(encoding="utf-8") if notes.is_file() else "# Pretraining on the CPU: the #15 options\n\n"
    heading = section.splitlines()[0]
    pattern = re.compile("^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda m: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    notes.write_text(text, encoding="utf-8")


def write_readme(section: str) -> None:
    readme = REPO / "bench" / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Pretraining\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text, encoding="utf-8")


def scaling(steps: int, warmup: int, batch: int) -> str:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world, threads in ((1, 1), (1, 2), (2, 1)):
            r = _run(world, threads, steps, warmup, batch, Path(tmp) / f"w{world}t{threads}")
            print(r, flush=True)
            results.append(r)
    feat = {n: _feature_time(n) for n in (1, 2)}
    print(feat)
    return _table(results, steps, warmup, feat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scaling", action="store_true", help="the processes x threads table instead of before/after")
    ap.add_argument("--steps", type=int, default=None, help="steps of the trained runs (default 50; --scaling: 12)")
    ap.add_argument("--short-steps", type=int, default=12, help="steps of the throughput-only runs (default 12)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="--scaling: batch per process")
    ap.add_argument("--write-readme", action="store_true", help="--scaling: replace bench/README.md 'Pretraining'")
    ap.add_argument("--ablation", action="store_true", help="one change at a time instead of before/after")
    ap.add_argument("--write-notes", action="store_true", help="write the section into bench/pretrain.md")
    a = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA}")
    if a.scaling:
        section = scaling(a.steps or 12, a.warmup, a.batch)
        print(section)
        if a.write_readme:
            write_readme(section)
        return
    plan = "ablation" if a.ablation else "compare"
    _, notes = compare(plan, a.steps or 50, a.warmup, a.short_steps)
    print(notes)
    if a.write_notes:
        write_notes(notes)


if __name__ == "__main__":
    main()
