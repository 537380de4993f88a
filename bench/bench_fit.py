"""Benchmark: `orthodiffusion fit` on cached features (issue #5 speed targets).

Runs the real CLI in a subprocess on a cohort with a warm feature cache (`--rows all`: every row
becomes `train`, so "200 cases" means 200 fitted cases; `--rows split`: the cohort's own train rows
are fitted and its val rows scored), and reads the stage timings the fit records in
its head-set manifest (`timings`: features_s = cache reads + preprocessing, diagnosis_s = MPAE with
5-fold out-of-fold experts + gate + refit + EHR fusion, segmentation_s = the decoder). Wall time,
CPU time and peak RSS are those of the fit process.

    .venv/bin/python bench/bench_fit.py --cohort build/exp-cohort/manifest.csv \
        --cache build/d2/le/feature_cache --task diagnosis [--threads 2] [--seg-epochs N]

The cache is the one `docs/results/label_efficiency.py` fills (same keys as `fit`); a cold cache
works too, it only makes features_s long. Synthetic test-bed data: the metrics it prints say
nothing clinical. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True, help="cohort manifest (every row is fitted)")
    ap.add_argument("--cache", required=True, help="feature cache folder")
    ap.add_argument("--task", choices=["diagnosis", "segmentation", "all"], default="diagnosis")
    ap.add_argument("--threads", type=int, default=None, help="fit --threads (default: the fit default)")
    ap.add_argument("--seg-epochs", type=int, default=None, help="fit --seg-epochs (default: the fit default)")
    ap.add_argument("--rows", default="all", choices=["all", "split"],
                    help="all: every row is fitted (default); split: the cohort's own split (train fitted, "
                         "val scored)")
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args()

    from OrthoDiffusionLib.io.manifest import read_manifest, write_manifest

    manifest = read_manifest(args.cohort)
    rows = manifest.rows
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        tmp = Path(tmp)
        for r in rows:
            r.split = "train" if args.rows == "all" else r.split
        path = write_manifest(rows, tmp / "manifest.csv", label_set=manifest.label_set)
        cmd = [sys.executable, "-m", "OrthoDiffusionLib", "fit", "--manifest", str(path), "--task", args.task,
               "--cache", str(Path(args.cache).resolve()), "--out", str(tmp / "heads"), "--device", "cpu",
               "--replay", "0", "--quiet"]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--seg-epochs", str(args.seg_epochs)] if args.seg_epochs else []
        env = {**os.environ, "ORTHODIFFUSION_HOME": str(tmp / "home")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"fit failed:\n{proc.stderr[-3000:]}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        version = json.loads((tmp / "heads" / "current.json").read_text())["version"]
        head = json.loads((tmp / "heads" / "versions" / version / "manifest.json").read_text())
    n_fit = sum(r.split in (None, "train") for r in rows)
    res = {"cases": n_fit, "task": args.task, "threads": head["fit_job"].get("threads"),
           "seg_epochs": head["fit_job"]["seg_epochs"], "timings": head["timings"], "process_wall_s": round(wall, 2),
           "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
           "metrics": {k: v for k, v in head["metrics"].items() if not k.endswith("_history")},
           "histories": {k: v for k, v in head["metrics"].items() if k.endswith("_history")},
           "load_average": os.getloadavg()}
    print(json.dumps(res, indent=1))
    t = head["timings"]
    print(f"\n| cases | task | threads | features_s | diagnosis_s | segmentation_s | process wall s | CPU s | peak RSS MiB |\n"
          f"|---|---|---|---|---|---|---|---|---|\n| {n_fit} | {args.task} | {res['threads'] or 'default'} | "
          f"{t.get('features_s', '–')} | {t.get('diagnosis_s', '–')} | {t.get('segmentation_s', '–')} | "
          f"{res['process_wall_s']} | {res['process_cpu_s']} | {res['peak_rss_mib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
