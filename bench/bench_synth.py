"""Benchmark `synthesize_cohort`: wall time and peak RSS for N cases with W workers.

    python bench/bench_synth.py --n 40 --workers 2 [--out /tmp/synth_bench]

Prints one JSON line: cases, workers, wall seconds, seconds per case, extrapolated time for 200
cases, peak RSS of the parent and of the largest worker (MiB), output size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--finding-difficulty", type=float, default=None,
                    help="every finding at this difficulty (0.5: the generator before per-finding defaults)")
    args = ap.parse_args(argv)
    from OrthoDiffusionLib.synth.findings import FINDING_KEYS
    from OrthoDiffusionLib.synth.generate import SynthConfig, synthesize_cohort

    extra = ({} if args.finding_difficulty is None
             else {"finding_difficulty": {k: args.finding_difficulty for k in FINDING_KEYS}})

    out = Path(args.out or tempfile.mkdtemp(prefix="synth_bench_"))
    t0 = time.perf_counter()
    synthesize_cohort(args.n, out, SynthConfig(seed=args.seed, **extra), workers=args.workers, progress=False)
    wall = time.perf_counter() - t0
    size = int(subprocess.run(["du", "-sb", str(out)], capture_output=True, text=True).stdout.split()[0])
    res = {
        "cases": args.n, "workers": args.workers, "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 1), "s_per_case_wall": round(wall / args.n, 2),
        "extrapolated_200_cases_s": round(wall / args.n * 200, 0),
        "peak_rss_parent_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 0),
        "cpu_s_per_case": round(sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                                    for a in ("ru_utime", "ru_stime")) / args.n, 2),
        "output_mib": round(size / 2**20, 1), "mib_per_case": round(size / 2**20 / args.n, 2),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(res))
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
