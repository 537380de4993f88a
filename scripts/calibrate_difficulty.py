"""Calibrate the synthetic test bed's per-finding difficulty (issue #3) against the from-scratch baseline.

    nice -n 10 .venv/bin/orthodiffusion synth --n 260 --seed 4242 --workers 1 --out build/calib/cohort
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/calibrate_difficulty.py \
        --cohort build/calib/cohort/manifest.csv --out build/calib/result [--n-train 100] [--fit-seeds 0,1]

Trains the same from-scratch baseline as the label-efficiency experiment (docs/results/label_efficiency.py,
``base_diag``: ``training.baselines.fit_baseline_diagnosis``, one narrowed MONAI 3D ResNet-10 per plane on the
released preprocessing of each 2D stack, ≤ 15 epochs, patience 4 on a stratified 20 % internal split,
late fusion) on ``--n-train`` labelled cases drawn from the whole cohort by iterative stratification,
and tests on **all the other cases** (the cohort's own split column is ignored, so the test set is
larger than the experiment's and the CIs narrower). Inputs are prepared and cached with the
experiment's own ``prepare_inputs``. Writes ``OUT.json`` (per-label AUROC with bootstrap 95 % CIs from
``OrthoDiffusionLib.evaluation.evaluate_classification``, both fusions, fit records, the cohort's
per-finding difficulties) and ``OUT.md`` (a table against the 0.65-0.9 target band). With several
``--fit-seeds`` the CNNs are refitted with each seed (same labelled cases) and the table adds the mean
and range of the per-seed AUROCs (training noise), next to the first seed's bootstrap CI (test-set noise).

Synthetic test-bed numbers: they say nothing about clinical performance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs" / "results"))

BAND = (0.65, 0.9)


def train_subset(y: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    """Exactly ``n_train`` case indices, stratified over the labels (iterative stratification, then
    trimmed / topped up at random when the stratified fold is off by a case or two)."""
    from OrthoDiffusionLib.heads.stratify import stratified_split

    sel, rest = stratified_split(y, n_train / len(y), seed)
    rng = np.random.default_rng(seed)
    if len(sel) > n_train:
        sel = rng.choice(sel, n_train, replace=False)
    elif len(sel) < n_train:
        sel = np.concatenate([sel, rng.choice(rest, n_train - len(sel), replace=False)])
    return np.sort(sel)


def cohort_difficulty(rows) -> dict:
    """Difficulty settings recorded in the first case's case.json (the cohort's generator settings)."""
    r = rows[0]
    path = next(p for p in r.images.values() if p is not None).parent / "case.json"
    meta = json.loads(path.read_text())
    return {k: meta.get(k) for k in ("difficulty", "finding_difficulty", "finding_size", "lesion_contrast")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True, help="manifest.csv of a synth cohort")
    ap.add_argument("--out", required=True, help="output prefix: OUT.json and OUT.md")
    ap.add_argument("--work", default=None, help="input cache (default: <cohort folder>/calib_work)")
    ap.add_argument("--model", default="knee-demo", help="catalogue model whose preprocessing is used")
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="labelled-subset and bootstrap seed")
    ap.add_argument("--fit-seeds", default="0", help="CNN init/training seeds, comma-separated (default 0)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from label_efficiency import labels_of, load_rows, prepare_inputs

    from OrthoDiffusionLib.evaluation import evaluate_classification
    from OrthoDiffusionLib.labelsets import load_label_set
    from OrthoDiffusionLib.training.baselines import BaselineConfig, fit_baseline_diagnosis

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    cohort = Path(args.cohort)
    work = Path(args.work) if args.work else cohort.parent / "calib_work"
    work.mkdir(parents=True, exist_ok=True)
    rows = load_rows(cohort)
    keys = load_label_set("knee-8").keys
    y_all = labels_of(rows, keys)
    if not 10 <= args.n_train <= len(rows) - 10:
        ap.error(f"--n-train must leave at least 10 cases on each side (cohort has {len(rows)})")
    t0 = time.perf_counter()
    data = torch.load(prepare_inputs(args, rows, work), weights_only=False)
    prep_s = time.perf_counter() - t0
    x, present = data["inputs"], data["present"]
    sel = train_subset(y_all, args.n_train, args.seed)
    test = np.setdiff1d(np.arange(len(rows)), sel)
    y_te = y_all[test]
    fits, results = [], {}
    for fit_seed in [int(v) for v in args.fit_seeds.split(",") if v.strip()]:
        cfg = BaselineConfig(seed=fit_seed, max_epochs=args.epochs, patience=args.patience)
        t1 = time.perf_counter()
        model, rep = fit_baseline_diagnosis({p: v[sel].float() for p, v in x.items()}, y_all[sel], present[sel], cfg,
                                            groups=[rows[i].patient_id for i in sel], log=print)
        fit_s = time.perf_counter() - t1
        z = model.expert_logits({p: v[test].float() for p, v in x.items()}, present[test])
        with torch.no_grad():
            probs = {"mean": torch.sigmoid(model.fuse(z, present[test], "mean").logits).numpy()}
            if rep["fusion"] == "gate":
                probs["gate"] = torch.sigmoid(model.fuse(z, present[test], "gate").logits).numpy()
        res = {m: evaluate_classification(y_te, p, labels=keys, n_boot=args.n_boot, seed=args.seed, curves=False)
               for m, p in probs.items()}
        results = results or res  # the first seed's full report (with CIs)
        fits.append({"fit_seed": fit_seed, "fit_s": round(fit_s, 1), "fusion": rep["fusion"],
                     "config": {k: v for k, v in cfg.__dict__.items() if k != "extra"}, "histories": rep["histories"],
                     "auroc": {m: {key: r["per_label"][k]["auroc"] for k, key in enumerate(keys)} for m, r in res.items()},
                     "macro_auroc": {m: r["macro_auroc"]["value"] for m, r in res.items()}})
        print(f"[fit seed {fit_seed}] {fit_s:.0f} s; mean-fusion AUROC "
              + ", ".join(f"{k} {a:.2f}" for k, a in fits[-1]["auroc"]["mean"].items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "disclaimer": "synthetic test bed, not clinical performance",
        "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/calibrate_difficulty.py "
                   + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": started, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "prepare_s": round(prep_s, 1), "loadavg": os.getloadavg(),
        "cohort": str(cohort), "n_cases": len(rows), "n_train": int(len(sel)), "n_test": int(len(test)),
        "train_positives": {k: int(np.nansum(y_all[sel, i])) for i, k in enumerate(keys)},
        "test_positives": {k: int(np.nansum(y_te[:, i])) for i, k in enumerate(keys)},
        "generator": cohort_difficulty(rows),
        "fits": fits, "band": BAND, "results_first_seed": results,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float))
    gen = record["generator"]
    fd = gen.get("finding_difficulty") or {}
    lines = [f"Calibration ({record['finished'][:16]} UTC): cohort `{cohort}` ({len(rows)} cases), "
             f"{len(sel)} labelled training cases, {len(test)} test cases, global difficulty {gen.get('difficulty')}. "
             "Synthetic test bed, not clinical performance.", "",
             f"AUROC = mean-of-planes fusion, fit seed {fits[0]['fit_seed']} with bootstrap 95 % CI; "
             f"'{len(fits)} seeds' = mean (min-max) over fit seeds {', '.join(str(f['fit_seed']) for f in fits)}.", "",
             f"| label | finding difficulty | test pos / neg | AUROC [95 % CI] | {len(fits)} seeds | gate fusion | vs band |",
             "|---|---|---|---|---|---|---|"]

    def seeds(m, key):
        v = [f["auroc"][m][key] for f in fits if m in f["auroc"]]
        return f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})" if v else "n/a"

    for k, key in enumerate(keys):
        r = results["mean"]["per_label"][k]
        a = float(np.mean([f["auroc"]["mean"][key] for f in fits]))
        where = "in band" if BAND[0] <= a <= BAND[1] else ("**below**" if a < BAND[0] else "**above**")
        lines.append(f"| {key} | {fd.get(key, gen.get('difficulty'))} | {r['n_pos']} / {r['n_neg']} | "
                     f"{r['auroc']:.2f} [{r['auroc_ci_low']:.2f}, {r['auroc_ci_high']:.2f}] | {seeds('mean', key)} | "
                     f"{seeds('gate', key)} | {where} |")
    mac = results["mean"]["macro_auroc"]
    lines += ["", f"Macro AUROC (mean-of-planes, seed {fits[0]['fit_seed']}): {mac['value']:.2f} "
                  f"[{mac['ci_low']:.2f}, {mac['ci_high']:.2f}]; 'vs band' uses the mean over seeds.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
