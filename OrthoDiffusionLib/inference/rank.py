"""Active-learning ranking: order unlabelled cases by how unsure the model is about them, so the
most informative ones are annotated first.

Per case (from ``uncertainty_summary.json``, written by cohort predict; cases without one are
predicted first, finished result folders are reused, never recomputed):

- ``draw_spread``: mean over findings of the std of the finding probability over K noise draws;
- ``plane_disagreement``: mean over findings of the std, across the planes present, of the
  per-plane expert probabilities (0 with one plane);
- ``gate_entropy``: mean over findings of the MPAE plane-weight entropy, normalised by log(#planes)
  (reported, not in the score: an even weighting is not by itself uncertainty);
- ``seg_entropy``: mean normalised per-voxel entropy of the fused segmentation over the voxels
  labelled as a structure.

Score = mean of the percentile ranks (in (0, 1], ties averaged) of ``draw_spread``,
``plane_disagreement`` and ``seg_entropy`` within the cohort: scale-free, so no component
dominates by its units. Higher = more uncertain = annotate first. Research use only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from .. import csvsafe  # formula-safe cells in every CSV the tool writes

SCORE_COMPONENTS = ("draw_spread", "plane_disagreement", "seg_entropy")
COLUMNS = ("rank", "study_id", "score", "draw_spread", "plane_disagreement", "gate_entropy", "seg_entropy",
           "planes", "draws", "status", "error")


def components(summary: dict) -> dict:
    """The four uncertainty components of one case summary."""
    spreads, disagreements, entropies = [], [], []
    planes = summary["planes_present"]
    for f in summary["findings"].values():
        spreads.append(f["spread"])
        probs = [f["expert_probabilities"][p] for p in planes if f["expert_probabilities"].get(p) is not None]
        disagreements.append(float(np.std(probs)) if len(probs) > 1 else 0.0)
        w = np.array([f["plane_weights"][p] for p in planes], dtype=float)
        w = w[w > 0]
        entropies.append(float(-(w * np.log(w)).sum() / np.log(len(planes))) if len(planes) > 1 else 0.0)
    return {"draw_spread": float(np.mean(spreads)), "plane_disagreement": float(np.mean(disagreements)),
            "gate_entropy": float(np.mean(entropies)), "seg_entropy": float(summary["segmentation_entropy_mean"])}


def percentile_ranks(values) -> np.ndarray:
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=float)
    return rankdata(values, method="average") / len(values) if len(values) else values


def rank_table(entries: list[dict]) -> list[dict]:
    """entries: {"study_id", "status", optional components/error} → rows sorted by score (desc),
    failed cases last."""
    ok = [e for e in entries if e["status"] == "ok"]
    if ok:
        score = np.mean([percentile_ranks([e[c] for e in ok]) for c in SCORE_COMPONENTS], axis=0)
        for e, s in zip(ok, score):
            e["score"] = float(s)
    ok.sort(key=lambda e: (-e["score"], e["study_id"]))
    failed = sorted((e for e in entries if e["status"] != "ok"), key=lambda e: e["study_id"])
    for i, e in enumerate(ok, start=1):
        e["rank"] = i
    return ok + failed


def write_ranking(rows: list[dict], path: Path) -> Path:
    from .. import DISCLAIMER
    from ..storage import atomic_write_text

    buf = io.StringIO()
    buf.write(f"# {DISCLAIMER} Uncertainty ranking for annotation; score = mean percentile rank of "
              f"{', '.join(SCORE_COMPONENTS)} (higher = annotate first).\n")
    w = csvsafe.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def _summary_for_legacy(case_dir: Path, settings: dict, row, loaded_holder: dict) -> dict:
    """A finished result folder without ``uncertainty_summary.json`` (single predict, older version):
    recompute the prediction in memory (nothing in the folder is replaced) and add the summary file."""
    from ..device import resolve_device
    from ..ownership import record_files
    from ..storage import atomic_write_json
    from .cohort import SUMMARY_FILE, _job_for_row, uncertainty_summary
    from ..models.loading import load_model
    from .predict import predict_study

    if "loaded" not in loaded_holder:
        loaded_holder["loaded"] = load_model(settings["model"], resolve_device(settings["device"]),
                                             settings.get("heads_version"))
    job = _job_for_row(settings, row, case_dir)
    pred = predict_study(job, loaded=loaded_holder["loaded"], log=lambda m: None, write=False)
    summary = uncertainty_summary(pred)
    atomic_write_json(case_dir / SUMMARY_FILE, summary)
    record_files(case_dir, "case", SUMMARY_FILE)  # the folder stays provably the tool's
    return summary


def rank_cohort(manifest_path, out: Path, settings: dict, results: Path, workers: int = 1,
                threads: int | None = None) -> list[dict]:
    from ..io.manifest import read_manifest
    from ..errors import UserError
    from ..storage import read_json
    from ..models.catalogue import get_model
    from ..ownership import CSV_SIGNATURE, check_file_replaceable
    from ..runtime import threads_per_worker
    from .cohort import _check_model, claim_cohort_folder, run_rows

    manifest = read_manifest(manifest_path)
    _check_model(settings)
    spec = get_model(settings["model"])
    check_file_replaceable(out, CSV_SIGNATURE)
    claim_cohort_folder(results, manifest, "--results")
    for row in manifest.rows:  # reused folders must come from the model being ranked
        res = results / row.study_id / "result.json"
        if res.is_file():
            got = read_json(res).get("model", {}).get("id")
            if got != spec.id:
                raise UserError(f"{res} was predicted with model '{got}', not '{spec.id}'; "
                                f"give another --results folder")
    outcomes = run_rows(manifest.rows, results, settings, workers, threads=threads, desc="predict")
    loaded_holder: dict = {}
    entries = []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or threads_per_worker(1))  # as cohort predict: same numbers
    try:
        for row, o in zip(manifest.rows, outcomes):
            entries.append(_entry(row, o, results, settings, loaded_holder))
    finally:
        torch.set_num_threads(threads_before)
    rows = rank_table(entries)
    write_ranking(rows, out)
    return rows


def _entry(row, o: dict, results: Path, settings: dict, loaded_holder: dict) -> dict:
    """One ranking entry: the components from the case's summary (added first if missing)."""
    from .cohort import SUMMARY_FILE

    case_dir = results / row.study_id
    e = {"study_id": row.study_id, "status": "ok" if o["status"] in ("ok", "skipped") else "failed",
         "error": o.get("error", "")}
    if e["status"] == "ok":
        summary_path = case_dir / SUMMARY_FILE
        summary = (json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file()
                   else _summary_for_legacy(case_dir, settings, row, loaded_holder))
        e.update(components(summary), planes=";".join(summary["planes_present"]), draws=summary["draws"])
    return e
