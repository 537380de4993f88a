"""Prepared run for a short GPU loan (#15 item 3): cohort → three plane backbones → CUDA-vs-CPU predict.

One command, bounded time, nothing downloaded, everything from this repository:

1. ``synth``: an unlabeled synthetic cohort generated on the machine's CPUs (domain randomisation of
   the test bed: three centres, 1.5 T and 3 T; labels unused), in chunks until ``--cases`` or a
   quarter of the budget;
2. ``volumes``: each plane's volumes preprocessed once (``released``, the model input) in parallel;
3. ``pretrain``: the three plane backbones, bf16 autocast on CUDA, each under a wall-time budget
   (``--max-wall-s``): one GPU → the three planes at once, one process each; several GPUs → one
   plane after the other over all of them with torchrun (NCCL). ``--init knee-demo`` (default)
   continues from the committed knee-demo backbones; ``--init none`` starts from random weights;
4. ``export``: each EMA backbone as our ``.safetensors`` (+ manifest) and as the published ``.pt``
   container (+ config sidecar);
5. ``predict``: the knee-demo model on the embedded sample knee on CUDA (default cuDNN settings, then
   strict fp32 with TF32 off) and on the CPU; **tolerance: finding probabilities within 1e-3
   (absolute, every draw) and label maps agreeing on ≥ 99 % of the voxels** (checked on the strict
   fp32 pair; the default pair is reported with the same numbers);
6. ``report.json`` (environment, phase times, per-plane steps / samples per second / held-out loss,
   the comparison and its verdict) and, with ``--bundle DIR``, at most 8 files ≤ 16 MiB for the
   device tool's ``$OUT`` (report, the three backbones, a tar.gz of logs, curves and manifests).

``--dry-run``: tiny cohort, a few steps on random crops, CPU only, CPU-vs-CPU predict with one draw;
seconds, no GPU (a test runs it). Research use, not for clinical decisions.

    python scripts/gpu_foundation.py OUT [--budget-s 420] [--cases 400] [--init knee-demo|none|FOLDER]
    python scripts/gpu_foundation.py OUT --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the GPU machine runs the checkout, nothing installed
    sys.path.insert(0, str(REPO))

from OrthoDiffusionLib import DISCLAIMER  # noqa: E402 (after the path set-up)
from OrthoDiffusionLib.planes import PLANES  # noqa: E402
NEEDED = ("numpy", "torch", "SimpleITK", "safetensors", "matplotlib", "tqdm", "scipy", "filelock")


def _say(msg: str) -> None:
    print(f"[gpu_foundation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Clock:
    """Seconds since the start, and what is left of the budget."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.monotonic(), float(budget_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def check_imports() -> None:
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"gpu_foundation: missing Python packages {', '.join(missing)}; carry them as wheels "
                         "(scripts/gpu_wheels.sh, docs/pretraining.md 'When a GPU is lent')")


def third_party_modules() -> list[str]:
    """Top-level non-stdlib modules this process imported (what must exist on the GPU machine)."""
    own = {"OrthoDiffusionLib", "__main__", "gpu_foundation", "gpu_foundation_predict"}
    names = {m.split(".")[0] for m in list(sys.modules)}
    return sorted(n for n in names if n not in sys.stdlib_module_names and n not in own and not n.startswith("_"))


def environment() -> dict:
    import platform

    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None, "gpus": gpus,
            "bf16_supported": bool(gpus) and torch.cuda.is_bf16_supported(), "cpu_cores": os.cpu_count(),
            "host": platform.node()}


# -- 1. cohort ------------------------------------------------------------------------------------

def make_cohort(folder: Path, cases: int, workers: int, working_mm: float, seed: int, deadline_s: float,
                clock: Clock) -> tuple[list[Path], int]:
    """Chunks of synthetic cases (each its own manifest) until ``cases`` or the deadline."""
    from OrthoDiffusionLib.synth.generate import SynthConfig, synthesize_cohort

    manifests, done, chunk = [], 0, max(1, 2 * workers)
    while done < cases and (not manifests or clock.elapsed() < deadline_s):
        n = min(chunk, cases - done)
        manifests.append(synthesize_cohort(n, folder / f"chunk{len(manifests):03d}",
                                           SynthConfig(seed=seed + len(manifests), working_mm=working_mm),
                                           workers=min(workers, n), progress=False))
        done += n
        _say(f"synth: {done}/{cases} cases, {clock.elapsed():.0f} s")
    return manifests, done


# -- 2. volumes -----------------------------------------------------------------------------------

def prepare_volumes(manifests: list[Path], config: str, work: Path, workers: int) -> dict:
    import numpy as np

    from OrthoDiffusionLib.training import load_config
    from OrthoDiffusionLib.training.data import load_plane_volumes

    mc, _ = load_config(config)
    out = {}
    for plane in PLANES:
        items = load_plane_volumes(manifests, plane, mc.depth_size, (mc.image_size, mc.image_size), workers=workers,
                                   log=_say)
        path = work / f"volumes_{plane}.npy"
        np.save(path, np.stack([it.array for it in items]))
        out[plane] = {"volumes": str(path), "names": [it.name for it in items], "count": len(items)}
        _say(f"volumes: {plane} {len(items)} × {items[0].array.shape}")
    return out


# -- 3. pretraining (one process per plane, or torchrun over all GPUs) -------------------------------

def train_worker(job_file: str) -> int:
    """``--train-plane JOB``: one plane's run_pretraining on the preprocessed volumes (rank 0 writes)."""
    import numpy as np
    import torch

    from OrthoDiffusionLib.runtime import torchrun_env
    from OrthoDiffusionLib.training import load_config, run_pretraining, train_config_from

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    mc, defaults = load_config(job["config"])
    cfg = train_config_from(defaults, **job["train"])
    arrays = np.load(job["volumes"])
    summary = run_pretraining(cfg, mc, volumes=list(arrays), names=job["names"])
    if torchrun_env().rank == 0:
        losses = summary.pop("losses")
        summary["loss_first"], summary["loss_last10"] = losses[0], float(np.mean(losses[-10:]))
        summary["batch_size"], summary["samples"] = cfg.batch_size, (summary["end_step"] - summary["start_step"]) * \
            cfg.batch_size * summary["world_size"]
        summary["cuda_max_memory_gb"] = (torch.cuda.max_memory_allocated() / 1024 ** 3
                                         if torch.cuda.is_available() else None)
        Path(job["summary"]).write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return 0


def _train_options(args, plane: str, index: int, runs: Path, budget_s: float | None, cores_each: int) -> dict:
    init = None
    if args.init != "none":
        folder = REPO / "Resources" / "Models" / "knee-demo" if args.init == "knee-demo" else Path(args.init)
        init = str(folder / f"{plane}.safetensors")
    train = dict(plane=plane, out=str(runs / plane), data=["synthetic cohort (gpu_foundation)"],
                 seed=args.seed + index, init=init, max_wall_s=budget_s, progress=False, threads=cores_each,
                 heldout=args.heldout, ckpt_every=args.ckpt_every, eval_every=args.eval_every,
                 loss_weighting=args.loss_weighting, lr_schedule="constant", command=" ".join(sys.argv))
    if args.dry_run:
        train.update(device="cpu", steps=3, batch_size=2, crop=(16, 16, 16), n_samples=1, sample_steps=2,
                     eval_every=3, ckpt_every=3, heldout=1)
    else:
        train.update(device="cuda", amp=args.amp, steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                     warmup_steps=args.warmup_steps, n_samples=3, sample_steps=20)
    return train


def pretrain_planes(args, volumes: dict, work: Path, runs: Path, logs: Path, clock: Clock, reserve_s: float) -> dict:
    import torch

    gpus = torch.cuda.device_count() if not args.dry_run else 0
    together = gpus == 1  # one GPU: three processes share it, each plane gets the whole budget
    cores = os.cpu_count() or 1
    # the CPU rehearsal runs on shared cores: one thread (two OpenMP threads there are many times slower)
    cores_each = 1 if args.dry_run else max(1, cores // 3) if together else max(1, cores // max(1, gpus))
    results = {}
    running = []
    for i, plane in enumerate(PLANES):
        if args.dry_run:
            budget = None
        else:
            share = 1 if together else len(PLANES) - i
            budget = max(20.0, (clock.left() - reserve_s) / share - args.startup_s)
        job = {"config": args.config, "volumes": volumes[plane]["volumes"], "names": volumes[plane]["names"],
               "summary": str(work / f"summary_{plane}.json"),
               "train": _train_options(args, plane, i, runs, budget, cores_each)}
        job_file = work / f"job_{plane}.json"
        job_file.write_text(json.dumps(job, indent=1), encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--train-plane", str(job_file)]
        if gpus > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *cmd[1:]]
        env = dict(os.environ, OMP_NUM_THREADS=str(cores_each), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        log = open(logs / f"pretrain_{plane}.log", "w", encoding="utf-8")
        _say(f"pretrain {plane}: {'torchrun × ' + str(gpus) if gpus > 1 else 'one process'}, "
             f"budget {budget and round(budget)} s, init {job['train']['init'] or 'random'}")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        running.append((plane, proc, log, budget))
        if not together:
            results.update(_wait([running.pop()], work, args))
    results.update(_wait(running, work, args))
    return results


def _wait(running, work: Path, args) -> dict:
    out = {}
    for plane, proc, log, budget in running:
        limit = None if budget is None else budget + args.startup_s + 90  # hard stop past the soft budget
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
        summary = work / f"summary_{plane}.json"
        out[plane] = {"returncode": rc, **(json.loads(summary.read_text()) if summary.is_file() else {})}
        _say(f"pretrain {plane}: rc {rc}, steps {out[plane].get('end_step')}, "
             f"{out[plane].get('steps_per_s', 0):.2f} steps/s")
    return out


def heldout_curve(run: Path) -> list:
    from OrthoDiffusionLib.training.runlog import read_log

    return [[int(r["step"]), float(r["heldout_loss"])] for r in read_log(run / "log.csv") if r.get("heldout_loss")]


# -- 4. export ------------------------------------------------------------------------------------

def export_backbones(runs: Path, dest: Path) -> dict:
    from OrthoDiffusionLib.backbone.checkpoints import load_backbone
    from OrthoDiffusionLib.backbone.official import export_official
    from OrthoDiffusionLib.storage import sha256_file

    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for plane in PLANES:
        src = runs / plane / "backbone" / f"{plane}.safetensors"
        if not src.is_file():
            out[plane] = {"error": "no backbone (the run failed; see logs)"}
            continue
        shutil.copy2(src, dest / src.name)
        shutil.copy2(src.with_suffix(".json"), dest / f"{plane}.json")
        model, info = load_backbone(dest / src.name)
        steps = int(info.get("provenance", {}).get("steps") or 0)
        pt = export_official(model.state_dict(), dest / f"{plane}.pt", step=steps, config=model.config)
        out[plane] = {"safetensors": str(dest / src.name), "sha256": sha256_file(dest / src.name), "pt": str(pt),
                      "pt_sha256": sha256_file(pt), "steps": steps}
    return out


# -- the run -------------------------------------------------------------------------------------

def run(args) -> dict:
    import torch

    clock = Clock(args.budget_s)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"gpu_foundation: {out} is not empty; give a new folder")
    work, runs, logs = out / "work", out / "runs", out / "logs"
    for d in (work, runs, logs):
        d.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available():  # a check that creates no CUDA context (synth forks)
        raise SystemExit("gpu_foundation: no CUDA GPU here; use --dry-run for the CPU rehearsal")
    workers = args.workers or (1 if args.dry_run else max(1, min(os.cpu_count() or 1, 16)))
    report = {"disclaimer": DISCLAIMER, "dry_run": args.dry_run, "budget_s": args.budget_s,
              "command": " ".join(sys.argv), "phases_s": {}}
    _say(f"start: torch {torch.__version__}, CUDA available {torch.cuda.is_available()}, {os.cpu_count()} CPU cores, "
         f"budget {args.budget_s} s")

    t = clock.elapsed()
    cases = 3 if args.dry_run else args.cases
    manifests, made = make_cohort(out / "cohort", cases, workers, 2.0 if args.dry_run else args.working_mm,
                                  args.seed + 1000, 0.25 * args.budget_s, clock)
    report["cohort"] = {"cases": made, "asked": cases, "manifests": [str(m.relative_to(out)) for m in manifests],
                        "synthetic": True, "labels_used": False}
    report["phases_s"]["synth"] = round(clock.elapsed() - t, 1)

    t = clock.elapsed()
    volumes = prepare_volumes(manifests, args.config, work, workers)
    report["volumes"] = {p: v["count"] for p, v in volumes.items()}
    report["phases_s"]["volumes"] = round(clock.elapsed() - t, 1)

    report["environment"] = env = environment()  # after the forking phases: this one creates a CUDA context
    _say(f"GPUs: {env['gpus'] or 'none'}")
    t = clock.elapsed()
    planes = pretrain_planes(args, volumes, work, runs, logs, clock, args.reserve_s)
    for plane, summary in planes.items():
        summary["heldout_curve"] = heldout_curve(runs / plane)
        steps, wall = summary.get("end_step", 0) - summary.get("start_step", 0), summary.get("wall_s") or 0
        summary["samples_per_s"] = round(summary.get("samples", 0) / wall, 2) if wall else None
        summary.pop("train_volumes", None)
        summary["steps_trained"] = steps
    report["pretrain"] = planes
    report["phases_s"]["pretrain"] = round(clock.elapsed() - t, 1)

    t = clock.elapsed()
    report["backbones"] = export_backbones(runs, out / "backbones")
    report["phases_s"]["export"] = round(clock.elapsed() - t, 1)

    t = clock.elapsed()
    from gpu_foundation_predict import predict_check, write_bundle  # beside this file

    report["predict"] = predict_check(out / "predict", args.dry_run)
    report["phases_s"]["predict"] = round(clock.elapsed() - t, 1)
    report["total_s"] = round(clock.elapsed(), 1)
    report["third_party_modules"] = third_party_modules()
    report["ok"] = bool(report["predict"]["passed"]) and all(p.get("returncode") == 0 for p in planes.values())
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    if args.bundle:
        report["bundle"] = write_bundle(out, Path(args.bundle))
    _say(f"done in {report['total_s']} s: {'OK' if report['ok'] else 'NOT OK'}; report {out / 'report.json'} "
         f"[{DISCLAIMER}]")
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="output folder (new or empty)")
    ap.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny cohort, a few steps, seconds")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="wall budget of the whole run (default 420: room for a rerun in a 15-minute loan)")
    ap.add_argument("--cases", type=int, default=400, help="synthetic cases at most (default 400)")
    ap.add_argument("--working-mm", type=float, default=1.2, help="synth working grid (default 1.2 mm)")
    ap.add_argument("--workers", type=int, default=None, help="CPU processes for synth and loading (default: cores)")
    ap.add_argument("--config", default="knee-demo", help="model preset (default knee-demo, the committed architecture)")
    ap.add_argument("--init", default="knee-demo", help="knee-demo (committed backbones), none, or a backbone folder")
    ap.add_argument("--batch-size", type=int, default=32, help="per process (default 32)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=100_000, help="upper bound; the wall budget stops it first")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    ap.add_argument("--loss-weighting", default="uniform", choices=["uniform", "min-snr"])
    ap.add_argument("--heldout", type=int, default=8, help="volumes per plane held out for the held-out loss")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--reserve-s", type=float, default=75.0, help="kept back for export and predict (default 75)")
    ap.add_argument("--startup-s", type=float, default=30.0, help="per-process start-up allowance (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", default=None, help="also copy ≤ 8 files of ≤ 16 MiB here (the device tool's $OUT)")
    ap.add_argument("--train-plane", default=None, help=argparse.SUPPRESS)  # internal: one plane's worker
    a = ap.parse_args(argv)
    if a.train_plane is None and not a.out:
        ap.error("give the output folder")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_plane:
        return train_worker(args.train_plane)
    check_imports()
    report = run(args)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
