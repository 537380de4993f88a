"""Benchmark: `predict` on one 3-plane case, per stage (time and peak RSS), side by side for
(a) the shipped knee-demo model and (b) the released architecture (34.5 M parameters per plane,
16×256×256 input, random weights, randomly initialised heads of the right shapes).

The case is the embedded sample knee (real sagittal MESE; coronal and axial are reformats, so
the reformatting is timed in [loading]). Each model runs in its own process (peak RSS = that
process alone, torch and the model included), with ``--threads`` torch threads, no feature cache.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_predict.py [--draws K] [--threads 2] [--json OUT]
        [--slices 32 --windows sliding]   # whole-series segmentation of a 32-slice series

Without ``--draws`` each model runs with its own default (catalogue ``inference.draws``: 3 for
knee-demo, 2 for released-size backbones as `import-official` registers them).

Random weights give meaningless findings; only the time and memory are measured.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "Python"))  # the stand-in model builders

# the published multi-plane setting (docs/pipeline.md)
RELEASED_SPEC = {"sagittal": (150, "mid_0"), "coronal": (50, "mid_2"), "axial": (200, "mid_0")}

CHILD = r"""
import time
t_start = time.perf_counter()
import json, resource, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from OrthoDiffusionLib.jobs import PredictJob
from OrthoDiffusionLib.inference.predict import predict_study
from OrthoDiffusionLib.resources import sample_knee_path
t_import = time.perf_counter() - t_start
model, out, _, draws = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) or None
study, windows = (sys.argv[5] or str(sample_knee_path())), (sys.argv[6] or None)
job = PredictJob(inputs=[study], out=out, model=model, device="cpu", draws=draws,
                 reformat=True, no_cache=True, windows=windows)
pred = predict_study(job, log=lambda m: None)
print(json.dumps({"model": model, "stages": pred.result.provenance["stages"], "total_s": pred.result.timings["total_s"],
                  "writing_s": pred.result.timings.get("writing_s"), "import_s": round(t_import, 3),
                  "process_s": round(time.perf_counter() - t_start, 3),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime
                                 + resource.getrusage(resource.RUSAGE_SELF).ru_stime, 2),
                  "threads": torch.get_num_threads(), "planes": pred.result.planes_present,
                  "draws": int(pred.draw_probabilities.shape[0]),
                  "windows": pred.result.provenance.get("segmentation_windows")}))
"""


BATCH_CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(2)
from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
from OrthoDiffusionLib.features import FeatureExtractor, FeatureSpec
torch.manual_seed(0)
model = DiffusionUNet(UNetConfig.released()).eval()
x = torch.rand(16, 256, 256) * 2 - 1
t0 = time.perf_counter()
FeatureExtractor(model, max_batch=int(sys.argv[1])).extract(x, "bench", "sagittal",
                                                           FeatureSpec((150,), ("mid_0",), n_draws=3))
print(sys.argv[1], round(time.perf_counter() - t0, 2), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2)
"""


def draw_batching() -> None:
    """Released backbone, one plane, K = 3 draws: one draw per pass vs the three batched."""
    print("| max_batch | feature time s | peak RSS GiB |\n|---|---|---|")
    for mb in (1, 4):
        out = subprocess.run([sys.executable, "-c", BATCH_CHILD, str(mb)], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
        print(f"| {out[0]} | {out[1]} | {float(out[2]):.2f} |")


def make_released_model(folder: Path) -> Path:
    """A model folder in the released configuration: random backbones (make_standin_model, preset
    'released'), the published per-plane (t, block), and random heads of the right shapes built by
    the heads registry and saved through the HeadStore."""
    import torch

    from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
    from OrthoDiffusionLib.heads.registry import build_head
    from OrthoDiffusionLib.heads.store import save_head_set
    from OrthoDiffusionLib.labelsets import load_label_set
    from standins import make_standin_model
    from OrthoDiffusionLib.storage import atomic_write_json, read_json
    from OrthoDiffusionLib.training.presets import PRESETS

    make_standin_model(folder, model_id="released-random", preset="released")
    entry = read_json(folder / "model.json")
    for plane, (t, block) in RELEASED_SPEC.items():
        entry["planes"][plane].update(timestep=t, block=block)
    atomic_write_json(folder / "model.json", entry)

    # block output shapes from a meta-device forward (no memory, no compute)
    cfg = UNetConfig(**PRESETS["released"]["model"])
    with torch.device("meta"):
        net = DiffusionUNet(cfg)
        _, taps = net(torch.zeros(1, 1, cfg.depth_size, cfg.image_size, cfg.image_size), torch.zeros(1, dtype=torch.long),
                      taps=sorted({b for _, b in RELEASED_SPEC.values()}))
    shapes = {b: list(v.shape[1:]) for b, v in taps.items()}
    channels = [shapes[RELEASED_SPEC[p][1]][0] for p in ("sagittal", "coronal", "axial")]
    findings, structures = load_label_set("knee-8"), load_label_set("knee-11")
    torch.manual_seed(0)
    sag = shapes[RELEASED_SPEC["sagittal"][1]]
    heads = {"mpae": build_head("mpae", {"in_channels": channels, "n_labels": len(findings.keys)}),
             "seg_sagittal": build_head("segmentation_decoder", {
                 "in_channels": sag[0], "n_classes": max(structures.values) + 1, "in_shape": sag[1:],
                 "out_shape": [cfg.depth_size, cfg.image_size, cfg.image_size]})}
    save_head_set(folder / "heads", heads, {
        "label_set": "knee-8", "task": "all", "note": "random initialisation, for timing only",
        "feature_spec": {p: {"timestep": t, "block": b, "seed": 0, "preprocessing": "released"}
                         for p, (t, b) in RELEASED_SPEC.items()},
        "thresholds": {}, "data_summary": {"synthetic": True, "n_train": 0}})
    return folder


def resampled_knee(n_slices: int, folder: Path) -> Path:
    """The sample knee (24 sagittal slices of 4 mm) resampled to ``n_slices`` over the same extent."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.resources import sample_knee_path

    img = sitk.ReadImage(str(sample_knee_path()))
    size, spacing = list(img.GetSize()), list(img.GetSpacing())
    axis = max(range(3), key=lambda i: spacing[i])
    extent = size[axis] * spacing[axis]
    size[axis], spacing[axis] = n_slices, extent / n_slices
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(),
                        0.0, img.GetPixelID())
    path = folder / f"knee_{n_slices}_slices.nii.gz"
    sitk.WriteImage(out, str(path))
    return path


def run_child(model: str, out: Path, threads: int, draws: int, study: str = "", windows: str = "") -> dict:
    import os

    # a private ORTHODIFFUSION_HOME: the shipped knee-demo heads, not a user's refitted ones
    env = {**os.environ, "ORTHODIFFUSION_HOME": str(out.parent / "home"), "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", CHILD, model, str(out), str(threads), str(draws), study, windows], cwd=REPO,
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{model}: child failed\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    stages = ["loading", "preprocess", "features", "segment", "diagnose"]
    head = "| stage | " + " | ".join(f"{r['label']} s | {r['label']} peak RSS GiB" for r in rows) + " |"
    lines = [head, "|---|" + "---|---|" * len(rows)]
    for s in stages:
        cells = []
        for r in rows:
            st = r["stages"].get(s, {})
            cells += [f"{st.get('seconds', float('nan')):.2f}", f"{st.get('peak_rss_mb', float('nan')) / 1024:.2f}"]
        lines.append(f"| [{s}] | " + " | ".join(cells) + " |")
    lines.append("| writing | " + " | ".join(f"{r['writing_s']:.2f} | –" for r in rows) + " |")
    lines.append("| **predict total** | " + " | ".join(f"**{r['total_s']:.2f}** | **{r['peak_rss_mb'] / 1024:.2f}**"
                                                      for r in rows) + " |")
    lines.append("| python + torch import | " + " | ".join(f"{r['import_s']:.2f} | –" for r in rows) + " |")
    lines.append("| whole process | " + " | ".join(f"{r['process_s']:.2f} | {r['peak_rss_mb'] / 1024:.2f}"
                                                 for r in rows) + " |")
    lines.append("| whole process CPU time (user + sys) | " + " | ".join(f"{r['cpu_s']:.2f} | –" for r in rows) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=0, help="noise draws K for both models (default 0: each model's own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--demo", default="knee-demo", help="model (a): id or folder (default: the shipped knee-demo)")
    ap.add_argument("--slices", type=int, default=0,
                    help="predict the sample knee resampled to this many sagittal slices (default: as shipped, 24)")
    ap.add_argument("--windows", default="", choices=["", "central", "sliding"],
                    help="segmentation windows for both models (default: each model's own)")
    ap.add_argument("--draw-batching", action="store_true",
                    help="instead: peak RSS of one released plane with K=3 draws, one per pass vs batched")
    args = ap.parse_args()
    if args.draw_batching:
        draw_batching()
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        released = make_released_model(tmp / "released-model")
        print(f"released-architecture model folder built in {time.perf_counter() - t0:.1f} s", flush=True)
        study = str(resampled_knee(args.slices, tmp)) if args.slices else ""
        rows = []
        for label, model in (("knee-demo", args.demo), ("released", str(released))):
            r = run_child(model, tmp / f"out-{label}", args.threads, args.draws, study, args.windows)
            r["label"] = label
            rows.append(r)
            print(f"{label}: K = {r['draws']} draws, predict {r['total_s']:.2f} s, "
                  f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB", flush=True)
    draws = ", ".join(f"{r['label']} K = {r['draws']}" for r in rows)
    print(f"\nnoise draws: {draws}; {args.threads} threads, planes {', '.join(rows[0]['planes'])}; "
          f"segmentation windows (starts per plane): {rows[1].get('windows')}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"draws": args.draws, "threads": args.threads, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
