"""Label-efficiency experiment on a synthetic test-bed cohort (issue #5, "Must show").

    .venv/bin/python docs/results/label_efficiency.py --cohort build/exp-cohort/manifest.csv \
        --out docs/results/label_efficiency [--work build/d2/le] [--arms baseline,ours]

Arms, on the cohort's own train/val/test split (test only for reporting; the cohort's val split is
not used by either arm: each arm early-stops on an internal split of its labelled training cases):
  (a) ours: knee-demo backbone features (cached) + heads: MPAE (shared gate, out-of-fold as
      published), MPAE + EHR late fusion, concat feature fusion; the sagittal segmentation decoder.
  (b) baseline: from-scratch MONAI ResNet (ResNet-10 layout, narrowed) per plane + late fusion
      (MPAE gate fitted on internal-validation logits, and plain mean of the plane logits); a small
      MONAI UNet on the sagittal network grid.
Label fractions of the train split come from iterative stratification (heads.stratify); both arms
use the same subset. Every fit runs in its own subprocess (wall time and peak RSS per fit).
Synthetic test-bed numbers: they say nothing about clinical performance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PLANES = ("sagittal", "coronal", "axial")
SEG_PLANE = "sagittal"
METHODS = {  # name -> (arm, description)
    "ours_mpae": ("ours", "backbone features + MPAE (shared gate, OOF)"),
    "ours_mpae_ehr": ("ours", "backbone features + MPAE + EHR late fusion"),
    "ours_concat": ("ours", "backbone features + concat feature fusion"),
    "base_cnn_gate": ("baseline", "from-scratch 3D ResNet per plane + MPAE gate"),
    "base_cnn_mean": ("baseline", "from-scratch 3D ResNet per plane + mean of plane logits"),
}
SEG_METHODS = {"ours_seg": "backbone features + sagittal decoder", "base_unet": "from-scratch MONAI UNet"}


# ----------------------------------------------------------------------------------------- utils
def rss_now_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sha256(path) -> str:
    from OrthoDiffusionLib.storage import sha256_file

    return sha256_file(path)


def load_rows(cohort):
    from OrthoDiffusionLib.io.manifest import read_manifest

    return read_manifest(cohort, label_set="knee-8").rows


def labels_of(rows, keys) -> np.ndarray:
    return np.array([[np.nan if r.findings.get(k) is None else float(r.findings[k]) for k in keys] for r in rows],
                    dtype=np.float32)


def subset(rows, keys, fraction, seed):
    """Indices (into the cohort rows) of the labelled training subset for ``fraction``."""
    from OrthoDiffusionLib.heads.stratify import label_fraction_subset

    train = [i for i, r in enumerate(rows) if r.split == "train"]
    y = labels_of([rows[i] for i in train], keys)
    keep = np.sort(label_fraction_subset(y, fraction, seed, [rows[i].patient_id for i in train]))
    return np.asarray(train)[keep]


# ----------------------------------------------------------------------------------------- caches
def cohort_key(rows) -> str:
    import hashlib

    return hashlib.sha256("\n".join(r.study_id for r in rows).encode()).hexdigest()[:10]


def prepare_inputs(args, rows, work: Path) -> Path:
    """Preprocessed backbone inputs (released preprocessing, [16, 64, 64]) of every plane plus the
    sagittal label map on the same network grid: one file, shared by both arms."""
    path = work / f"inputs_{cohort_key(rows)}.pt"
    if path.is_file():
        return path
    import SimpleITK as sitk
    import torch
    from tqdm import tqdm

    from OrthoDiffusionLib.io import preprocess, volume_hash
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.features.cohort import read_plane_image

    spec = get_model(args.model)
    cfg = json.loads(Path(spec.backbone_path(SEG_PLANE)).with_suffix(".json").read_text())["config"]
    depth, size = int(cfg["depth_size"]), int(cfg["image_size"])
    n = len(rows)
    x = {p: torch.zeros(n, 1, depth, size, size, dtype=torch.float32) for p in PLANES}
    hashes = [{} for _ in range(n)]
    present = torch.zeros(n, 3, dtype=torch.bool)
    targets = torch.full((n, depth, size, size), -1, dtype=torch.int8)
    case_dir = work / "case_inputs"  # per case, so a partly generated cohort can be preprocessed ahead
    case_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(tqdm(rows, desc="preprocess", unit="case")):
        cpath = case_dir / f"{r.study_id}.pt"
        if cpath.is_file():
            c = torch.load(cpath, weights_only=False)
        else:
            c = {"inputs": {}, "hashes": {}, "target": None}
            for p in PLANES:
                if r.images.get(p) is None:
                    continue
                image = read_plane_image(r.images[p])
                arr, tf = preprocess(image, mode=spec.preprocessing, plane=p, depth=depth, size=(size, size))
                c["hashes"][p] = volume_hash(image)  # the feature noise seed depends on it, as in the pipeline
                c["inputs"][p] = torch.as_tensor(arr)
                if p == SEG_PLANE and r.labels.get(f"labels_{p}") is not None:
                    lab = sitk.ReadImage(str(r.labels[f"labels_{p}"]))
                    c["target"] = torch.as_tensor(tf.to_network(lab, is_label=True).astype(np.int8))
            from OrthoDiffusionLib.storage import atomic_path

            with atomic_path(cpath) as tmp:
                torch.save(c, tmp)
        for j, p in enumerate(PLANES):
            if p in c["inputs"]:
                x[p][i, 0] = c["inputs"][p]
                present[i, j] = True
        hashes[i] = c["hashes"]
        if c["target"] is not None:
            targets[i] = c["target"]
    torch.save({"study_ids": [r.study_id for r in rows], "inputs": x, "present": present,
                "seg_targets": targets, "hashes": hashes, "preprocessing": spec.preprocessing}, path)
    return path


def backbone_shas(args) -> dict:
    from OrthoDiffusionLib.models.catalogue import get_model

    spec = get_model(args.model)
    return {p: sha256(spec.backbone_path(p)) for p in spec.planes}


def prepare_features(args, rows, work: Path, shas: dict) -> Path:
    key = "-".join(shas[p][:10] for p in PLANES if p in shas)
    path = work / f"features_{cohort_key(rows)}_{key}.pt"
    if path.is_file():
        return path
    import torch

    from tqdm import tqdm

    from OrthoDiffusionLib.features import FeatureCache, FeatureExtractor
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.models.loading import load_backbones

    # Same features as `orthodiffusion fit` (extract_cohort): same preprocessed arrays, same content
    # hashes (noise seeds), one draw with the given seed; computed from the inputs cached above so the
    # images are read once.
    torch.set_num_threads(1)
    spec = get_model(args.model)
    data = torch.load(work / f"inputs_{cohort_key(rows)}.pt", weights_only=False)
    backbones = load_backbones(spec)
    cache = FeatureCache(work / "feature_cache")
    n = len(rows)
    feats = {p: [None] * n for p in PLANES}
    t0 = time.perf_counter()
    only = [p for p in (args.feature_planes or "").split(",") if p]
    with torch.no_grad():
        for p, (model, sha) in backbones.items():
            if only and p not in only:
                continue
            ex = FeatureExtractor(model, backbone_sha256=sha, cache=cache)
            fspec = spec.feature_spec(p, n_draws=1, seed=args.seed)
            for i in tqdm(range(n), desc=f"features {p}", unit="case"):
                if data["present"][i, PLANES.index(p)]:
                    feats[p][i] = next(iter(ex.extract(data["inputs"][p][i, 0].numpy(), data["hashes"][i][p], p,
                                                       fspec).values()))[0]
    if only:  # filling the per-case feature cache in parallel processes; no assembled file
        return None
    out = {}
    for p, items in feats.items():
        ref = next((t for t in items if t is not None), None)
        out[p] = None if ref is None else torch.stack([t if t is not None else torch.zeros_like(ref) for t in items]).float()
    from OrthoDiffusionLib.storage import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"study_ids": data["study_ids"], "features": out, "present": data["present"], "backbones": shas,
                    "extract_s": round(time.perf_counter() - t0, 1)}, tmp)
    return path


# ----------------------------------------------------------------------------------------- fits
def fit_worker(job: dict) -> dict:
    """One fit in this (sub)process; writes predictions on the test split; returns timings/RSS."""
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    from OrthoDiffusionLib.labelsets import load_label_set

    rows = load_rows(job["cohort"])
    keys = load_label_set("knee-8").keys
    structures = load_label_set("knee-11")
    sel = np.asarray(job["subset"], dtype=int)
    test = np.array([i for i, r in enumerate(rows) if r.split == "test"])
    y = torch.as_tensor(labels_of(rows, keys))
    data = torch.load(job["data"], weights_only=False)
    rss_loaded = rss_now_mib()
    out: dict = {"name": job["name"], "kind": job["kind"], "n_fit_cases": int(len(sel)), "rss_after_load_mib": round(rss_loaded, 1)}
    preds: dict = {"test_index": test}
    groups = [rows[i].patient_id for i in sel]
    kind = job["kind"]
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    if kind in ("ours_diag", "speed_diag"):
        from OrthoDiffusionLib.heads.diagnosis import ConcatFusionHead
        from OrthoDiffusionLib.heads.fit import FitConfig, validation_split, fit_ehr_fusion, fit_mpae, masked_bce, train_module

        feats, present = data["features"], data["present"]
        f_sel = {p: (v[sel] if v is not None else None) for p, v in feats.items()}
        cfg = FitConfig(seed=job["seed"])
        heads = job.get("sap_heads")  # None: the library default (published head width)
        head, rep = fit_mpae(f_sel, y[sel].numpy(), present[sel], cfg=cfg, n_folds=5, groups=groups, num_heads=heads,
                             workers=int(job.get("threads", 1)))
        out["mpae_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        records = [dict(rows[i].ehr) for i in sel]
        ehr, hist = fit_ehr_fusion(rep["oof_logits"], records, y[sel].numpy(), cfg=FitConfig(lr=1e-2, seed=job["seed"]))
        out["ehr_s"] = round(time.perf_counter() - t1, 2)
        out["ehr_alpha"] = dict(zip(keys, [round(a, 3) for a in hist["alpha"]]))
        t2 = time.perf_counter()
        torch.manual_seed(job["seed"])
        concat = ConcatFusionHead([feats[p].shape[1] for p in PLANES], len(keys), num_heads=heads)
        ytr = y[sel]
        tr, va = validation_split(ytr.numpy(), cfg, groups)
        pres_sel = present[sel]

        def concat_loss(idx):
            return masked_bce(concat({p: (v[idx] if v is not None else None) for p, v in f_sel.items()},
                                     pres_sel[idx]).logits, ytr[idx])

        train_module(concat, concat_loss, tr, va, cfg)
        out["concat_s"] = round(time.perf_counter() - t2, 2)
        if kind == "ours_diag":
            f_te = {p: v[test] for p, v in feats.items()}
            with torch.no_grad():
                o = head(f_te, present[test])
                preds["ours_mpae"] = torch.sigmoid(o.logits).numpy()
                preds["ours_mpae_plane_weights"] = o.plane_weights.numpy()
                preds["ours_mpae_ehr"] = torch.sigmoid(ehr(o.logits, [dict(rows[i].ehr) for i in test])).numpy()
                preds["ours_concat"] = torch.sigmoid(concat(f_te, present[test]).logits).numpy()
    elif kind == "base_diag":
        from OrthoDiffusionLib.training.baselines import BaselineConfig, fit_baseline_diagnosis

        x, present = data["inputs"], data["present"]
        cfg = BaselineConfig(seed=job["seed"], max_epochs=job["epochs"], patience=job["patience"])
        model, rep = fit_baseline_diagnosis({p: v[sel].float() for p, v in x.items()}, y[sel].numpy(), present[sel],
                                            cfg, groups=groups, log=print)
        out["fusion"] = rep["fusion"]
        out["histories"] = rep["histories"]
        out["config"] = {k: v for k, v in cfg.__dict__.items() if k != "extra"}
        x_te = {p: v[test].float() for p, v in x.items()}
        z = model.expert_logits(x_te, present[test])
        with torch.no_grad():
            preds["base_cnn_mean"] = torch.sigmoid(model.fuse(z, present[test], "mean").logits).numpy()
            if rep["fusion"] == "gate":
                preds["base_cnn_gate"] = torch.sigmoid(model.fuse(z, present[test], "gate").logits).numpy()
    elif kind in ("ours_seg", "base_seg"):
        from OrthoDiffusionLib.adapt.fit import annotated_mask

        targets = torch.load(job["inputs"], weights_only=False)["seg_targets"].long()
        ann = annotated_mask(rows, structures.keys)
        keep = sel[(targets[sel] >= 0).flatten(1).any(1).numpy()]
        out["n_fit_cases"] = int(len(keep))
        if kind == "ours_seg":
            from OrthoDiffusionLib.heads.fit import FitConfig, fit_segmentation

            feats = data["features"][SEG_PLANE]
            model, hist = fit_segmentation(feats[keep], targets[keep], 1 + len(structures.keys), ann[keep],
                                           cfg=FitConfig(lr=3e-3, batch_size=4, max_epochs=job["epochs"], patience=10,
                                                         seed=job["seed"]))
            test_in = feats[test]
        else:
            from OrthoDiffusionLib.training.baselines import BaselineConfig, fit_baseline_segmentation

            imgs = data["inputs"][SEG_PLANE]
            cfg = BaselineConfig(seed=job["seed"], max_epochs=job["epochs"], patience=job["patience"], batch_size=4)
            model, hist = fit_baseline_segmentation(imgs[keep].float(), targets[keep], 1 + len(structures.keys),
                                                    ann[keep], cfg)
            out["config"] = {k: v for k, v in cfg.__dict__.items() if k != "extra"}
            test_in = imgs[test].float()
        out["history"] = hist
        with torch.no_grad():
            model.eval()
            preds[kind] = torch.cat([model(test_in[i:i + 8]).argmax(1) for i in range(0, len(test), 8)]).to(torch.uint8).numpy()
    else:
        raise ValueError(kind)
    out["fit_s"] = round(time.perf_counter() - t0, 2)
    out["fit_cpu_s"] = round(cpu_s() - cpu0, 2)  # CPU time: less sensitive to the shared machine's load
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    np.savez_compressed(job["pred_path"], **preds)
    return out


def run_fit(args, job: dict, work: Path) -> dict:
    res_path = work / "fits" / f"{job['name']}.json"
    if res_path.is_file() and not args.refit:
        return json.loads(res_path.read_text())
    res_path.parent.mkdir(parents=True, exist_ok=True)
    job["pred_path"] = str(work / "fits" / f"{job['name']}.npz")
    job_path = work / "fits" / f"{job['name']}.job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", str(job_path)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"fit {job['name']} failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(process_wall_s=round(wall, 1), loadavg_start=round(load0, 2), loadavg_end=round(os.getloadavg()[0], 2),
               finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    res_path.write_text(json.dumps(res, indent=1))
    print(f"  {job['name']}: fit {res['fit_s']} s (process {res['process_wall_s']} s), peak RSS {res['peak_rss_mib']} MiB, "
          f"load {res['loadavg_start']}→{res['loadavg_end']}", flush=True)
    return res


def fit_jobs(args, rows, keys, work, inputs_path, features_path):
    jobs = []
    common = {"cohort": str(args.cohort), "seed": args.seed, "sap_heads": args.sap_heads or None}
    arms = set(args.arms.split(","))
    tasks = set(args.tasks.split(","))
    for f in args.fractions:
        sel = subset(rows, keys, f, args.seed).tolist()
        tag = f"f{int(round(f * 100)):03d}"
        if "baseline" in arms and "diag" in tasks:
            jobs.append({**common, "name": f"base_diag_{tag}", "kind": "base_diag", "fraction": f, "subset": sel,
                         "data": str(inputs_path), "epochs": args.cnn_epochs, "patience": args.cnn_patience})
        if "baseline" in arms and "seg" in tasks and f in args.seg_fractions:
            jobs.append({**common, "name": f"base_seg_{tag}", "kind": "base_seg", "fraction": f, "subset": sel,
                         "data": str(inputs_path), "inputs": str(inputs_path), "epochs": args.unet_epochs,
                         "patience": args.cnn_patience})
        if "ours" in arms and "diag" in tasks:
            jobs.append({**common, "name": f"ours_diag_{tag}", "kind": "ours_diag", "fraction": f, "subset": sel,
                         "data": str(features_path)})
        if "ours" in arms and "seg" in tasks:
            if f in args.seg_fractions:
                jobs.append({**common, "name": f"ours_seg_{tag}", "kind": "ours_seg", "fraction": f, "subset": sel,
                             "data": str(features_path), "inputs": str(inputs_path), "epochs": args.seg_epochs})
    if "ours" in arms and "diag" in tasks and args.speed:
        jobs.append({**common, "name": "speed_diag_all", "kind": "speed_diag", "fraction": 1.0,
                     "subset": list(range(len(rows))), "data": str(features_path),
                     "sap_heads": None, "threads": args.speed_threads})
    return jobs


# ----------------------------------------------------------------------------------------- report
def evaluate(args, rows, keys, work: Path) -> dict:
    from OrthoDiffusionLib import DISCLAIMER
    from OrthoDiffusionLib.evaluation import (breakdown_classification, compare_auroc, evaluate_classification,
                                              evaluate_segmentation)
    from OrthoDiffusionLib.labelsets import load_label_set

    test = np.array([i for i, r in enumerate(rows) if r.split == "test"])
    y = labels_of(rows, keys)[test]
    meta = {"center": [rows[i].center for i in test], "field_strength": [rows[i].field_strength for i in test]}
    fits = {p.stem: json.loads(p.read_text()) for p in sorted((work / "fits").glob("*.json")) if not p.name.endswith(".job.json")}
    cls, bds, cmps, seg = {}, {}, [], {}
    structures = load_label_set("knee-11")
    import torch

    targets = torch.load(work / f"inputs_{cohort_key(rows)}.pt", weights_only=False)["seg_targets"].numpy()[test]
    from OrthoDiffusionLib.adapt.fit import annotated_mask

    ann = annotated_mask([rows[i] for i in test], structures.keys).numpy()
    for f in args.fractions:
        tag = f"f{int(round(f * 100)):03d}"
        probs = {}
        for prefix in ("ours_diag", "base_diag"):
            npz = work / "fits" / f"{prefix}_{tag}.npz"
            if npz.is_file():
                d = np.load(npz)
                probs.update({m: d[m] for m in METHODS if m in d.files})
        for m, p in probs.items():
            cls[(m, f)] = evaluate_classification(y, p, labels=keys, n_boot=args.n_boot, seed=args.seed)
            bd = breakdown_classification(y, p, meta, by=["center", "field_strength"], labels=keys,
                                          n_boot=args.n_boot, seed=args.seed)
            bds[(m, f)] = {col: {e["group"]: e for e in v["groups"]} for col, v in bd.items()}
        for a, b in (("ours_mpae_ehr", "base_cnn_gate"), ("ours_mpae", "base_cnn_gate"), ("ours_mpae_ehr", "ours_mpae"),
                     ("ours_mpae", "ours_concat")):
            if a in probs and b in probs:
                for k, key in enumerate(keys):
                    c = compare_auroc(y[:, k], probs[a][:, k], probs[b][:, k], method="delong")
                    cmps.append({"fraction": f, "a": a, "b": b, "label": key, **c})
        for prefix, m in (("ours_seg", "ours_seg"), ("base_seg", "base_unet")):
            npz = work / "fits" / f"{prefix}_{tag}.npz"
            if not npz.is_file():
                continue
            pred = np.load(npz)[prefix]
            cases = [{"case_id": rows[i].study_id, "pred": pred[j], "gt": targets[j].astype(np.int16),
                      "annotated": [s for s, a in zip(structures.keys, ann[j, 1:]) if a]}
                     for j, i in enumerate(test) if (targets[j] >= 0).any()]
            seg[(m, f)] = evaluate_segmentation(cases, structures, n_boot=args.n_boot, seed=args.seed)
    return {"classification": cls, "breakdowns": bds, "comparisons": cmps, "segmentation": seg, "fits": fits,
            "test_index": test, "y_test": y, "disclaimer": DISCLAIMER}


def _fmt(v, lo=None, hi=None, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{v:.{nd}f}"
    return f"{v:.{nd}f} [{lo:.2f}, {hi:.2f}]"


def make_plots(args, res, keys, out: Path):
    import matplotlib.ticker

    from OrthoDiffusionLib.evaluation.plots import _figure, save_figure

    cls = res["classification"]
    methods = [m for m in METHODS if any((m, f) in cls for f in args.fractions)]
    n_train = {f: len(subset_cache[f]) for f in args.fractions}
    fig, axes = _figure(1 + len(keys), ncols=3, panel=3.2)
    for ax, label in zip(axes, ["macro"] + list(keys)):
        for m in methods:
            fs = [f for f in args.fractions if (m, f) in cls]
            xs = [n_train[f] for f in fs]
            if label == "macro":
                vals = [cls[(m, f)]["macro_auroc"] for f in fs]
                v = [d["value"] for d in vals]
                lo = [d["ci_low"] for d in vals]
                hi = [d["ci_high"] for d in vals]
            else:
                rows_ = [next(r for r in cls[(m, f)]["per_label"] if r["label"] == label) for f in fs]
                v = [r["auroc"] for r in rows_]
                lo = [r["auroc_ci_low"] for r in rows_]
                hi = [r["auroc_ci_high"] for r in rows_]
            v, lo, hi = (np.array(a, dtype=float) for a in (v, lo, hi))
            ax.errorbar(xs, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=m,
                        linestyle="-" if m.startswith("ours") else "--")
        ax.axhline(0.5, color="#999999", lw=0.8)
        ax.set_xscale("log")
        ticks = sorted(n_train.values())
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{label} AUROC (test)")
        ax.set_xlabel("labelled training cases")
        ax.set_ylim(0.2, 1.02)
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "auroc_vs_labels.png", "Label efficiency on the synthetic test bed (test split, 95 % CI)")

    seg = res["segmentation"]
    if seg:
        names = list(load_structs())
        fig, axes = _figure(1, wide=(11, 4))
        ax = axes[0]
        entries = sorted(seg)
        width = 0.8 / len(entries)
        for j, (m, f) in enumerate(entries):
            ps = {r["structure"]: r for r in seg[(m, f)]["per_structure"]}
            v = np.array([ps[s]["dice_mean"] if s in ps else np.nan for s in names], dtype=float)
            ax.bar(np.arange(len(names)) + j * width, v, width, label=f"{m} {int(round(f * 100))} %")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Dice (test, sagittal network grid)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        save_figure(fig, out / "dice_per_structure.png", "Segmentation: features + decoder vs from-scratch UNet")


def load_structs():
    from OrthoDiffusionLib.labelsets import load_label_set

    return load_label_set("knee-11").keys


subset_cache: dict = {}


def write_outputs(args, rows, keys, res, out: Path, meta: dict):
    from OrthoDiffusionLib import DISCLAIMER
    from OrthoDiffusionLib.evaluation import write_csv
    from OrthoDiffusionLib.evaluation.report import json_safe
    from OrthoDiffusionLib.storage import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    cls, bds, seg, fits = res["classification"], res["breakdowns"], res["segmentation"], res["fits"]
    n_train = {f: len(subset_cache[f]) for f in args.fractions}
    # tidy CSVs
    auroc_rows = []
    for (m, f), rep in sorted(cls.items()):
        mm = rep["macro_auroc"]
        auroc_rows.append({"method": m, "fraction": f, "n_train": n_train[f], "label": "macro", "auroc": mm["value"],
                           "ci_low": mm["ci_low"], "ci_high": mm["ci_high"], "n_test": rep["n_cases"]})
        for r in rep["per_label"]:
            auroc_rows.append({"method": m, "fraction": f, "n_train": n_train[f], "label": r["label"], "auroc": r["auroc"],
                               "ci_low": r["auroc_ci_low"], "ci_high": r["auroc_ci_high"], "n_test": r["n"],
                               "n_pos": r["n_pos"]})
    write_csv(out / "auroc.csv", auroc_rows)
    bd_rows = []
    for (m, f), bd in sorted(bds.items()):
        for col, groups in bd.items():
            for g, entry in groups.items():
                mm = entry["report"]["macro_auroc"]
                bd_rows.append({"method": m, "fraction": f, "by": col, "group": g, "n": entry["n"], "macro_auroc": mm["value"],
                                "ci_low": mm["ci_low"], "ci_high": mm["ci_high"], "flags": "; ".join(entry.get("flags", []))})
    write_csv(out / "breakdowns.csv", bd_rows)
    write_csv(out / "auroc_comparisons.csv", [{k: v for k, v in c.items()} for c in res["comparisons"]])
    seg_rows = []
    for (m, f), rep in sorted(seg.items()):
        for r in rep["per_structure"]:
            seg_rows.append({"method": m, "fraction": f, "n_train": n_train[f], "structure": r["structure"],
                             "dice_mean": r["dice_mean"], "ci_low": r.get("dice_ci_low"), "ci_high": r.get("dice_ci_high"),
                             "n": r.get("n_ok", None)})
    write_csv(out / "dice.csv", seg_rows)
    fit_rows = [{"fit": k, "kind": v["kind"], "n_fit_cases": v["n_fit_cases"], "fit_s": v["fit_s"],
                 "fit_cpu_s": v.get("fit_cpu_s"), "process_wall_s": v["process_wall_s"], "peak_rss_mib": v["peak_rss_mib"],
                 "rss_after_load_mib": v["rss_after_load_mib"], "mpae_s": v.get("mpae_s"), "ehr_s": v.get("ehr_s"),
                 "concat_s": v.get("concat_s"), "loadavg_start": v["loadavg_start"], "loadavg_end": v["loadavg_end"]}
                for k, v in sorted(fits.items())]
    write_csv(out / "fits.csv", fit_rows)
    make_plots(args, res, keys, out)
    results = {"disclaimer": DISCLAIMER, "note": "synthetic test-bed numbers, not clinical performance", **meta,
               "classification": {f"{m}@{f}": rep for (m, f), rep in cls.items()},
               "breakdowns": {f"{m}@{f}": bd for (m, f), bd in bds.items()},
               "segmentation": {f"{m}@{f}": rep for (m, f), rep in seg.items()},
               "comparisons": res["comparisons"], "fits": fits}
    atomic_write_json(out / "results.json", json_safe(results))
    write_markdown(args, keys, res, out, meta, n_train)


def write_markdown(args, keys, res, out: Path, meta: dict, n_train: dict):
    from OrthoDiffusionLib import DISCLAIMER
    from OrthoDiffusionLib.storage import atomic_write_text

    cls, bds, seg, fits = res["classification"], res["breakdowns"], res["segmentation"], res["fits"]
    rel = out.name
    L = ["# Label efficiency on the synthetic knee test bed", "",
         f"*{DISCLAIMER}* **These are synthetic test-bed numbers** (simulated images from two real label maps, "
         "docs/testbed.md): they show what the pipeline and the heads can learn from these simulations, "
         "**not clinical performance**.", "",
         "Tables below are written by the script; the interpretation section is kept in "
         "`label_efficiency_notes.md` and included verbatim.", ""]
    notes = out.parent / "label_efficiency_notes.md"
    if notes.is_file():
        L += [notes.read_text().strip(), ""]
    L += ["## Setup", "", "```bash", meta["command"], "```", "",
          f"- Run: {meta['started']} → {meta['finished']} (UTC); machine: {meta['machine']}; "
          f"load average at start/end {meta['load_start']} / {meta['load_end']} "
          "(shared 2-core VM, about 7 engineers' jobs running at the same time: wall times are pessimistic).",
          f"- Cohort: `{meta['cohort']}` ({meta['n_cases']} cases; split train/val/test = {meta['split_counts']}; "
          f"centres {meta['centers']}; field strengths {meta['field_strengths']}).",
          f"- Test positives per label: {meta['test_positives']}.",
          "- Labelled training cases per fraction: "
          + ", ".join(f"{int(round(f * 100))} % = {n_train[f]}" for f in args.fractions) + ".",
          "- Backbones (knee-demo, sha256): " + ", ".join(f"{p} `{s}`" for p, s in meta["backbones"].items()) + ".",
          f"- Backbone status: {meta['backbone_status']}.", ""]
    L += ["## Macro AUROC (test split, 95 % bootstrap CI)", "",
          "| method | " + " | ".join(f"{int(round(f * 100))} % ({n_train[f]} cases)" for f in args.fractions) + " |",
          "|---|" + "---|" * len(args.fractions)]
    for m, (_, desc) in METHODS.items():
        if not any((m, f) in cls for f in args.fractions):
            continue
        cells = []
        for f in args.fractions:
            mm = cls.get((m, f), {}).get("macro_auroc")
            cells.append(_fmt(mm["value"], mm["ci_low"], mm["ci_high"]) if mm else "–")
        L.append(f"| `{m}` ({desc}) | " + " | ".join(cells) + " |")
    L += ["", f"![AUROC vs labelled cases]({rel}/auroc_vs_labels.png)", ""]
    for f in args.fractions:
        L += [f"### Per-label AUROC at {int(round(f * 100))} % ({n_train[f]} labelled cases)", "",
              "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for m in METHODS:
            if (m, f) not in cls:
                continue
            per = {r["label"]: r for r in cls[(m, f)]["per_label"]}
            L.append(f"| `{m}` | " + " | ".join(_fmt(per[k]["auroc"], per[k]["auroc_ci_low"], per[k]["auroc_ci_high"], 2)
                                                  for k in keys) + " |")
        L.append("")
    L += ["## Breakdowns (macro AUROC on test subgroups; small groups, wide CIs)", ""]
    for col in ("center", "field_strength"):
        groups = sorted({g for bd in bds.values() for g in bd.get(col, {})})
        L += [f"### By {col.replace('_', ' ')}", "", "| method | fraction | " + " | ".join(groups) + " |",
              "|---|---|" + "---|" * len(groups)]
        for (m, f), bd in sorted(bds.items(), key=lambda kv: (list(METHODS).index(kv[0][0]), kv[0][1])):
            cells = []
            for g in groups:
                e = bd.get(col, {}).get(g)
                if e is None:
                    cells.append("–")
                    continue
                mm = e["report"]["macro_auroc"]
                cells.append(f"{_fmt(mm['value'], mm['ci_low'], mm['ci_high'], 2)} (n={e['n']})")
            L.append(f"| `{m}` | {int(round(f * 100))} % | " + " | ".join(cells) + " |")
        L.append("")
    if seg:
        names = list(load_structs())
        L += ["## Segmentation: Dice per structure (test split, sagittal network grid 16×64×64, mean [95 % CI])", "",
              "| method | fraction | mean | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for (m, f), rep in sorted(seg.items()):
            ps = {r["structure"]: r for r in rep["per_structure"]}
            md = rep.get("macro_dice", {})
            L.append(f"| `{m}` | {int(round(f * 100))} % | {_fmt(md.get('value'), md.get('ci_low'), md.get('ci_high'), 2)} | "
                     + " | ".join(_fmt(ps[s]["dice_mean"], ps[s].get("dice_ci_low"), ps[s].get("dice_ci_high"), 2)
                                  if s in ps else "–" for s in names) + " |")
        L += ["", f"![Dice per structure]({rel}/dice_per_structure.png)", ""]
    L += ["## Cost of each fit (own subprocess, 1 thread)", "",
          "`fit s` = the fit itself (perf_counter inside the process, after loading data); `process s` = the whole "
          "subprocess (Python + torch import + data load + fit + test prediction); fit CPU s = user + system CPU "
          "time of the fit (1 thread, so close to what the fit takes on an idle core); peak RSS = `ru_maxrss` of that "
          "subprocess (interpreter, torch, the cached inputs/features of all cases, and the fit); RSS after load = "
          "before fitting.", "",
          "| fit | cases | fit s | fit CPU s | (MPAE / EHR / concat s) | process s | peak RSS MiB | RSS after load MiB | load avg |",
          "|---|---|---|---|---|---|---|---|---|"]
    for k, v in sorted(fits.items()):
        parts = " / ".join(str(v[x]) for x in ("mpae_s", "ehr_s", "concat_s") if x in v) or "–"
        L.append(f"| `{k}` | {v['n_fit_cases']} | {v['fit_s']} | {v.get('fit_cpu_s', '–')} | {parts} | {v['process_wall_s']} | {v['peak_rss_mib']} | "
                 f"{v['rss_after_load_mib']} | {v['loadavg_start']}→{v['loadavg_end']} |")
    L += ["", "## Files", "",
          f"`{rel}/results.json` (every report, with CIs, breakdowns, comparisons and fit records), "
          f"`{rel}/auroc.csv`, `{rel}/breakdowns.csv`, `{rel}/auroc_comparisons.csv` (paired DeLong per label), "
          f"`{rel}/dice.csv`, `{rel}/fits.csv`, the PNGs.", ""]
    atomic_write_text(out.parent / f"{rel}.md", "\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort")
    ap.add_argument("--out", default="docs/results/label_efficiency")
    ap.add_argument("--work", default="build/d2/le")
    ap.add_argument("--model", default="knee-demo")
    ap.add_argument("--arms", default="baseline,ours")
    ap.add_argument("--fractions", default="0.1,0.25,1.0")
    ap.add_argument("--tasks", default="diag,seg", help="which fits to run (diag, seg)")
    ap.add_argument("--seg-fractions", default="0.1,1.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--cnn-epochs", type=int, default=15)
    ap.add_argument("--cnn-patience", type=int, default=4)
    ap.add_argument("--unet-epochs", type=int, default=15)
    ap.add_argument("--seg-epochs", type=int, default=30, help="ours (30 as committed; the `orthodiffusion fit` default is 45)")
    ap.add_argument("--sap-heads", type=int, default=16,
                    help="SAP heads of our diagnosis heads (16 as committed on 2026-11-29; 0 = library default, "
                         "the published head width of 16 channels)")
    ap.add_argument("--speed-threads", type=int, default=2, help="torch threads of the all-cases speed fit "
                    "(library-default heads)")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="skip the all-cases speed fit")
    ap.add_argument("--refit", action="store_true", help="refit even when a fit record exists")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--prepare-only", action="store_true", help="cache inputs (and features) only")
    ap.add_argument("--feature-planes", default=None, help="with --prepare-only: fill the feature cache for these planes")
    ap.add_argument("--backbone-status", default="as found in Resources/Models/knee-demo")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(fit_worker(json.loads(Path(args.worker).read_text()))))
        return 0
    if not args.cohort:
        ap.error("--cohort is required")
    args.fractions = [float(x) for x in args.fractions.split(",") if x]
    args.seg_fractions = [float(x) for x in args.seg_fractions.split(",") if x]
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_start = round(os.getloadavg()[0], 2)
    from OrthoDiffusionLib.labelsets import load_label_set

    rows = load_rows(args.cohort)
    keys = load_label_set("knee-8").keys
    for f in args.fractions:
        subset_cache[f] = subset(rows, keys, f, args.seed)
    shas = backbone_shas(args)
    print(f"[setup] {len(rows)} cases; backbones " + ", ".join(f"{p} {s[:12]}" for p, s in shas.items()), flush=True)
    t0 = time.perf_counter()
    inputs_path = prepare_inputs(args, rows, work)
    print(f"[setup] inputs {inputs_path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    features_path = None
    if "ours" in args.arms:
        t0 = time.perf_counter()
        features_path = prepare_features(args, rows, work, shas)
        print(f"[setup] features {features_path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.prepare_only:
        return 0
    if not args.report_only:
        for job in fit_jobs(args, rows, keys, work, inputs_path, features_path):
            run_fit(args, job, work)
    res = evaluate(args, rows, keys, work)
    split_counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    import shlex

    meta = {"command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python docs/results/label_efficiency.py "
                       + shlex.join(sys.argv[1:] if argv is None else argv),
            "started": started, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_start": load_start, "load_end": round(os.getloadavg()[0], 2),
            "machine": f"{os.cpu_count()} CPU cores, no GPU, torch 1 thread per fit",
            "cohort": str(args.cohort), "n_cases": len(rows), "split_counts": split_counts,
            "centers": sorted({r.center for r in rows if r.center}),
            "field_strengths": sorted({str(r.field_strength) for r in rows if r.field_strength is not None}),
            "test_positives": {k: int(np.nansum(res["y_test"][:, i])) for i, k in enumerate(keys)},
            "n_train": {str(f): len(subset_cache[f]) for f in args.fractions},
            "backbones": shas, "backbone_status": args.backbone_status, "seed": args.seed, "n_boot": args.n_boot,
            "baseline": {"diagnosis": "MONAI ResNet basic [1,1,1,1] widths (16,32,64,128), stem 3x7x7 stride 1x2x2, "
                                      f"AdamW lr 1e-3 wd 1e-4, batch 8, ≤{args.cnn_epochs} epochs, patience "
                                      f"{args.cnn_patience} on a 20 % internal split",
                         "segmentation": "MONAI UNet channels (8,16,32,64) strides 2, instance norm, no residual units, "
                                         f"partial-label loss (0.2 marginal CE + masked Dice), batch 4, ≤{args.unet_epochs} epochs"},
            "ours": {"diagnosis": "heads.fit.fit_mpae (5-fold OOF experts, shared gate), fit_ehr_fusion on OOF logits, "
                                  "ConcatFusionHead; FitConfig defaults (AdamW lr 3e-3, ≤200 epochs, patience 15)",
                     "segmentation": f"heads.fit.fit_segmentation, sagittal mid-block features, lr 3e-3, batch 4, ≤{args.seg_epochs} epochs, patience 10"}}
    write_outputs(args, rows, keys, res, out, meta)
    print(f"[done] {out}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
