"""Benchmark: feature extraction with the released backbone configuration (random weights).

16×256×256 input, one plane, t = 100, block mid_2, 2 CPU threads; wall time and peak RSS of the
early-exit path (stops after mid_2, no decoder) against the full forward. Each mode runs in its
own process so peak RSS is that mode's alone.

    .venv/bin/python bench/bench_features.py [--repeats 2] [--preset released|knee-demo] [--reference-repo PATH]

``--preset knee-demo`` times the shipped demo architecture (16x64x64) instead.

``--reference-repo`` points at a checkout of the official code (github lt-0123/OrthoDiffusion, MIT;
kept outside this repository) to time its ``ret_mid=True`` feature path on the same weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
from OrthoDiffusionLib.features import FeatureExtractor, FeatureSpec
from OrthoDiffusionLib.training.presets import PRESETS
mode, repeats, ref, preset = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.manual_seed(0)
cfg = UNetConfig(**PRESETS[preset]["model"])
model = DiffusionUNet(cfg).eval()
x = torch.rand(cfg.depth_size, cfg.image_size, cfg.image_size) * 2 - 1
def run():
    if mode == "early":
        return FeatureExtractor(model).extract(x, "bench", "sagittal", FeatureSpec((100,), ("mid_2",)))
    if mode == "full":
        with torch.inference_mode():
            return model(x[None, None], torch.tensor([100]), taps=["mid_2"], stop_after="final")
    sys.path.insert(0, ref)
    from diffusion_model.unet import create_model
    refm = create_model(256, 64, 1, channel_mult="1,1,2,2,4", attention_resolutions="16").eval()
    refm.load_state_dict(model.state_dict())
    with torch.inference_mode():
        return refm(x[None, None], torch.tensor([100]), ret_mid=True)
run()  # warm-up (oneDNN primitive creation)
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"mode": mode, "best_s": min(times), "times_s": times,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference-repo", default=None)
    ap.add_argument("--preset", default="released", choices=["released", "knee-demo"])
    args = ap.parse_args()
    if args.reference_repo and args.preset != "released":
        ap.error("--reference-repo times the released configuration only")
    modes = ["early", "full"] + (["reference"] if args.reference_repo else [])
    rows = []
    for mode in modes:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.repeats), args.reference_repo or "", args.preset],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print("\n| path | best wall time (s) | all runs (s) | peak RSS (GB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['best_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['times_s'])} | {r['peak_rss_gb']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
