"""Benchmark `synthesize_cohort`: wall time and peak RSS for N cases with W workers.

    python bench/bench_synth.py --n 40 --workers 2 [--out /tmp/synth_bench] [--randomize [--randomize-strength S]]
    python bench/bench_synth.py --figure docs/testbed_randomized.png   # panel of randomised cases

Prints one JSON line: cases, workers, wall seconds, seconds per case, extrapolated time for 200
cases, peak RSS of the parent and of the largest worker (MiB), output size, load average at the
start and end (the 2-core VM is shared: quote it with the timing).
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

import numpy as np

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
    ap.add_argument("--randomize", action="store_true", help="domain randomisation (docs/testbed.md)")
    ap.add_argument("--randomize-strength", type=float, default=1.0)
    ap.add_argument("--working-mm", type=float, default=0.8)
    ap.add_argument("--figure", default=None, help="write a PNG panel of randomised cases instead of timing")
    args = ap.parse_args(argv)
    if args.figure:
        return figure(args.figure, args.seed, args.working_mm, args.randomize_strength)
    from OrthoDiffusionLib.synth.findings import FINDING_KEYS
    from OrthoDiffusionLib.synth.generate import SynthConfig, synthesize_cohort

    extra = ({} if args.finding_difficulty is None
             else {"finding_difficulty": {k: args.finding_difficulty for k in FINDING_KEYS}})

    if args.randomize:
        extra.update(randomize=True, randomize_strength=args.randomize_strength)
    out = Path(args.out or tempfile.mkdtemp(prefix="synth_bench_"))
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    synthesize_cohort(args.n, out, SynthConfig(seed=args.seed, working_mm=args.working_mm, **extra),
                      workers=args.workers, progress=False)
    wall = time.perf_counter() - t0
    size = int(subprocess.run(["du", "-sb", str(out)], capture_output=True, text=True).stdout.split()[0])
    res = {
        "cases": args.n, "workers": args.workers, "randomize": args.randomize,
        "randomize_strength": args.randomize_strength if args.randomize else None, "working_mm": args.working_mm, "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 1), "s_per_case_wall": round(wall / args.n, 2),
        "extrapolated_200_cases_s": round(wall / args.n * 200, 0),
        "peak_rss_parent_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 0),
        "cpu_s_per_case": round(sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                                    for a in ("ru_utime", "ru_stime")) / args.n, 2),
        "output_mib": round(size / 2**20, 1), "mib_per_case": round(size / 2**20 / args.n, 2),
        "loadavg_1min_at_start": round(load_start, 2), "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(res))
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def figure(path: str, seed: int, working_mm: float, strength: float, n_random: int = 4) -> int:
    """Mid slices (sagittal, coronal) of one plain case and ``n_random`` randomised ones, same anatomy
    per column index (the randomised cases are cases 0..n-1 of the same seed)."""
    from OrthoDiffusionLib.evaluation.plots import new_figure, save_figure
    from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case

    plain = SynthConfig(seed=seed, working_mm=working_mm)
    rnd = SynthConfig(seed=seed, working_mm=working_mm, randomize=True, randomize_strength=strength)
    cases = [("physics only, case 0", generate_case(0, plain))]
    cases += [(f"randomised, case {i}", generate_case(i, rnd)) for i in range(n_random)]
    planes = ("sagittal", "coronal")
    fig = new_figure((2.6 * len(cases), 3.3 * len(planes) + 0.9))
    for col, (title, case) in enumerate(cases):
        d = case.meta.get("randomization")
        for row, plane in enumerate(planes):
            st = case.stacks[plane]
            ax = fig.add_subplot(len(planes), len(cases), row * len(cases) + col + 1)
            img = st.image[:, :, st.image.shape[2] // 2].T
            ax.imshow(img, cmap="gray", vmin=0, vmax=float(np.percentile(img, 99.5)))
            ax.set_xticks([]), ax.set_yticks([])
            g = st.geometry
            text = f"{g.spacing[0]:.2f} mm, {g.thickness:.1f}+{g.gap:.1f} mm"
            if d:
                p = d["planes"][plane]
                text += f"\nmix {p['intensity_mix']:.2f} \u03b3 {p['gamma']:.2f} noise x{p['noise_factor']:.1f}"
                text += " inverted" if d["inverted"] else ""
            ax.set_title(f"{title}\n{plane}" if row == 0 else plane, fontsize=8)
            ax.set_xlabel(text, fontsize=7)
    save_figure(fig, path, "Synthetic knee test bed: domain randomisation (synthetic images, not patients)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
