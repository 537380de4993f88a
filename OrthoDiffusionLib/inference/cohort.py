"""Cohort mode of ``orthodiffusion predict --manifest``: one result folder per study.

- **Owned output**: ``--out`` must be new, empty or an earlier cohort output (ownership.py); no
  manifest image may lie inside it. A case folder appears whole (staged) with its ownership
  marker; the tool never deletes a case folder, and replaces one only when it holds nothing but
  what the tool wrote.
- **Resumable**: a case whose folder holds ``result.json`` and the marker is skipped.
- **Failures do not stop the cohort**: any exception of one case is recorded in ``errors.csv``
  (study id, error, short trace); nothing is left of the failed attempt, and the next run retries it.
- **Parallel**: ``--workers N`` starts N spawned processes; each loads the model once and uses
  ``cores // (N × local ranks)`` torch threads, so the CPU is not oversubscribed. The parent only
  dispatches rows and shows the tqdm bar. Per-case results do not depend on the worker count
  (features use per-case seeded noise).
- **torchrun**: when ``RANK``/``WORLD_SIZE`` are set, rank r predicts rows ``r::WORLD_SIZE`` (on
  ``cuda:LOCAL_RANK`` modulo the GPU count when CUDA is used) and sends its outcomes to rank 0 over a gloo process
  group; rank 0 writes ``errors.csv`` and ``cohort_summary.json`` for the whole cohort.

Next to the standard result files, every case folder gets ``uncertainty_summary.json`` (noise-draw
spread, per-plane expert probabilities, MPAE weights, segmentation entropy) that
``orthodiffusion rank`` reuses. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..runtime import threads_per_worker, torchrun_env

from .. import csvsafe  # formula-safe cells in every CSV the tool writes

SUMMARY_FILE = "uncertainty_summary.json"
ERRORS_FILE = "errors.csv"
SUMMARY_COHORT_FILE = "cohort_summary.json"
from ..planes import PLANES

# set once per worker process by _init_worker
_WORKER: dict = {}


# ---------------------------------------------------------------------------------------------
# settings shared by the parent and the workers (plain, picklable)

PER_CASE_FIELDS = ("inputs", "planes", "out", "case_id", "ehr", "reformat")  # filled from each manifest row


def cohort_settings(template) -> dict:
    """The fields of a ``PredictJob`` template that every case of a cohort shares (plain, picklable)."""
    return {f.name: getattr(template, f.name) for f in fields(template) if f.name not in PER_CASE_FIELDS}


def _job_for_row(settings: dict, row, case_out: Path):
    from ..jobs import PredictJob

    planes = {p: str(v) for p, v in row.images.items() if v is not None}  # the manifest column gives the plane
    ehr = {k: v for k, v in row.ehr.items() if v not in (None, "")} or None
    return PredictJob(**{**settings, "planes": planes, "out": str(case_out), "case_id": row.study_id,
                         "ehr": ehr, "reformat": False})


# ---------------------------------------------------------------------------------------------
# one case

def uncertainty_summary(pred) -> dict:
    """Per-case uncertainty components from a Prediction (used by ``orthodiffusion rank``)."""
    import SimpleITK as sitk

    from .. import DISCLAIMER

    k = pred.draw_probabilities.shape[0]
    expert_p = pred.diagnosis.expert_probabilities                     # [K_findings, 3], NaN: absent
    entropy = sitk.GetArrayViewFromImage(pred.uncertainty)
    labels = sitk.GetArrayViewFromImage(pred.labels)
    structures = labels > 0
    keys = [f.key for f in pred.result.findings]
    return {
        "disclaimer": DISCLAIMER, "case_id": pred.result.case_id, "draws": int(k),
        "planes_present": list(pred.planes),
        "findings": {key: {"probability": float(pred.probabilities[i]), "spread": float(pred.spread[i]),
                           "expert_probabilities": {p: (None if np.isnan(expert_p[i, j]) else float(expert_p[i, j]))
                                                    for j, p in enumerate(PLANES)},
                           "plane_weights": {p: float(pred.plane_weights[i, j]) for j, p in enumerate(PLANES)}}
                     for i, key in enumerate(keys)},
        "segmentation_entropy_mean": float(entropy[structures].mean() if structures.any() else entropy.mean()),
        "segmentation_entropy_over": "structure voxels" if structures.any() else "all voxels",
        "segmentation_planes": list(pred.result.provenance.get("segmentation_planes", [])),
    }


def case_folder_problem(study_id: str) -> str | None:
    """Why ``study_id`` cannot name a case folder of a cohort output (None when it can)."""
    from ..ownership import COHORT_RESERVED

    if study_id in (".", "..") or Path(study_id).name != study_id:  # never outside `out`
        return f"study_id '{study_id}' cannot be a folder name (no '/' or '..')"
    if study_id.startswith(".") or study_id in COHORT_RESERVED:
        return f"study_id '{study_id}' is a name the cohort folder uses itself ({', '.join(COHORT_RESERVED)}, or a leading '.')"
    return None


def is_done(case_out: Path) -> bool:
    """A finished case folder of the tool's (result.json and the ownership marker)."""
    from ..ownership import read_marker

    return (case_out / "result.json").is_file() and (read_marker(case_out) or {}).get("kind") == "case"


def predict_case(settings: dict, row, out: Path, loaded) -> dict:
    """Predict one manifest row into ``out/<study_id>``; never raises (the outcome says what happened)."""
    from ..storage import atomic_write_json
    from .predict import predict_study

    case_out = out / row.study_id
    t0 = time.perf_counter()
    problem = case_folder_problem(row.study_id)
    if problem:
        return {"study_id": row.study_id, "status": "failed", "seconds": 0.0, "trace": "",
                "error": f"InputError: {problem}"}

    def add_summary(pred):  # inside the staged folder: the case appears whole, summary included
        atomic_write_json(pred.out_dir / SUMMARY_FILE, uncertainty_summary(pred))

    try:
        predict_study(_job_for_row(settings, row, case_out), loaded=loaded, log=lambda m: None,
                      after_write=add_summary)
        return {"study_id": row.study_id, "status": "ok", "seconds": round(time.perf_counter() - t0, 3)}
    except Exception as exc:  # one bad case must not stop the cohort; KeyboardInterrupt still does
        from ..errors import UserError

        return {"study_id": row.study_id, "status": "failed", "seconds": round(time.perf_counter() - t0, 3),
                "error": f"{type(exc).__name__}: {exc}",  # a user error's message says it all; a bug needs a trace
                "trace": "" if isinstance(exc, UserError) else traceback.format_exc(limit=4).replace("\n", " | ")}


def _init_worker(settings: dict, threads: int) -> None:
    import torch

    from ..device import resolve_device
    from ..models.loading import load_model

    torch.set_num_threads(threads)
    _WORKER["settings"] = settings
    _WORKER["loaded"] = load_model(settings["model"], resolve_device(settings["device"]),
                                   settings.get("heads_version"))


def _worker_case(row, out: str) -> dict:
    return {**predict_case(_WORKER["settings"], row, Path(out), _WORKER["loaded"]), "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------
# torchrun

def shard(rows: list, rank: int, world: int) -> list:
    """Deterministic round-robin shard: rank r takes rows r, r+world, ..."""
    return rows[rank::world]


def _gather_outcomes(outcomes: list, rank: int, world: int) -> list | None:
    """All ranks' outcomes on rank 0 (None elsewhere), through a gloo group with a long timeout
    (ranks finish their shards at different times)."""
    import datetime

    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(days=7))
    try:
        got = [None] * world if rank == 0 else None
        dist.gather_object(outcomes, got, dst=0)
        dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()
    return [o for part in got for o in part] if rank == 0 else None


# ---------------------------------------------------------------------------------------------
# the cohort

def _write_reports(out: Path, outcomes: list, n_rows: int, settings: dict, workers: int, world: int,
                   threads: int) -> None:
    from .. import DISCLAIMER
    from ..ownership import record_files, remove_owned
    from ..storage import atomic_path, atomic_write_json

    errors = [o for o in outcomes if o["status"] == "failed"]
    errors_csv = out / ERRORS_FILE
    if errors:
        with atomic_path(errors_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(f"# {DISCLAIMER}\n")
            w = csvsafe.DictWriter(f, fieldnames=["study_id", "error", "trace"], extrasaction="ignore")
            w.writeheader()
            w.writerows(sorted(errors, key=lambda o: o["study_id"]))
        record_files(out, "cohort", ERRORS_FILE)
    else:
        remove_owned(out, ERRORS_FILE, "cohort")  # errors of an earlier run, all fixed now
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    atomic_write_json(out / SUMMARY_COHORT_FILE, {
        "disclaimer": DISCLAIMER, "rows": n_rows, "predicted": counts["ok"], "skipped": counts["skipped"],
        "failed": counts["failed"], "workers": workers, "threads_per_worker": threads, "world_size": world,
        "settings": settings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cases": sorted(({k: v for k, v in o.items() if k != "trace"} for o in outcomes),
                        key=lambda o: o["study_id"])})
    record_files(out, "cohort", SUMMARY_COHORT_FILE)


def _check_model(settings: dict) -> None:
    """Fail fast, in the parent, with one line (instead of N broken workers)."""
    from ..models.catalogue import get_model
    from ..models.loading import require_fitted_heads

    require_fitted_heads(get_model(settings["model"]), settings.get("heads_version"))


def run_rows(rows: list, out: Path, settings: dict, workers: int = 1, local_world: int = 1,
             desc: str = "cases", loaded=None, threads: int | None = None) -> list:
    """Predict ``rows`` (skipping finished ones) with ``workers`` processes, ``threads`` torch threads
    each (default: cores split evenly); outcome dicts in row order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from tqdm import tqdm

    outcomes: dict[str, dict] = {}
    todo = []
    for row in rows:
        if is_done(out / row.study_id):
            outcomes[row.study_id] = {"study_id": row.study_id, "status": "skipped"}
        else:
            todo.append(row)
    threads = threads or threads_per_worker(workers, local_world)
    threads_before = torch.get_num_threads()
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="case")
    try:
        if todo and workers <= 1:
            torch.set_num_threads(threads)
            if loaded is None:
                from ..device import resolve_device
                from ..models.loading import load_model

                loaded = load_model(settings["model"], resolve_device(settings["device"]),
                                    settings.get("heads_version"))
            for row in todo:
                outcomes[row.study_id] = o = predict_case(settings, row, out, loaded)
                if o["status"] == "failed":
                    bar.write(f"failed: {row.study_id}: {o['error']}")
                bar.update(1)
        elif todo:
            ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                     initializer=_init_worker, initargs=(settings, threads)) as pool:
                futures = {pool.submit(_worker_case, row, str(out)): row for row in todo}
                for fut in as_completed(futures):
                    row = futures[fut]
                    try:
                        o = fut.result()
                    except Exception as exc:  # the worker died (model load failed, out of memory, killed)
                        o = {"study_id": row.study_id, "status": "failed",
                             "error": f"worker failed: {type(exc).__name__}: {exc}", "trace": ""}
                    outcomes[row.study_id] = o
                    if o["status"] == "failed":
                        bar.write(f"failed: {row.study_id}: {o['error']}")
                    bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
    return [outcomes[r.study_id] for r in rows]


def claim_cohort_folder(out: Path, manifest, what: str = "--out") -> Path:
    """``out`` becomes (or already is) a cohort output; the manifest and its images stay outside it."""
    from ..ownership import claim_folder, refuse_inputs_inside

    inputs = [manifest.path] + [p for row in manifest.rows for p in (*row.images.values(), *row.labels.values())]
    refuse_inputs_inside(out, inputs, what)
    return claim_folder(out, "cohort", what)


def predict_cohort(manifest_path, out, template, workers: int = 1, threads: int | None = None) -> int:
    """Predict every row of the manifest into ``out/<study_id>`` with the settings of ``template`` (a
    ``PredictJob``; its per-case fields are ignored); returns the exit code (1: every case failed)."""
    from .. import DISCLAIMER
    from ..errors import UserError
    from ..io.manifest import read_manifest

    if workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be ≥ 1, got {threads}")
    manifest = read_manifest(manifest_path)
    out = Path(out)
    settings = cohort_settings(template)
    env = torchrun_env()
    rank, world, local_rank, local_world = env.rank, env.world, env.local_rank, env.local_world
    rows = manifest.rows
    if world > 1:
        rows = shard(rows, rank, world)
        import torch

        if settings.get("device", "auto") in ("auto", "cuda", "gpu") and torch.cuda.is_available():
            settings["device"] = f"cuda:{local_rank % torch.cuda.device_count()}"  # more ranks than GPUs: share
    _check_model(settings)
    claim_cohort_folder(out, manifest)
    outcomes = run_rows(rows, out, settings, workers, local_world if world > 1 else 1,
                        desc=f"rank {rank}/{world} cases" if world > 1 else "cases", threads=threads)
    for o in outcomes:
        o["rank"] = rank
    if world > 1:
        outcomes = _gather_outcomes(outcomes, rank, world)
        if outcomes is None:  # not rank 0: rank 0 reports for the cohort
            return 0
    _write_reports(out, outcomes, len(manifest.rows), settings, workers, world,
                   threads or threads_per_worker(workers, local_world if world > 1 else 1))
    done = sum(o["status"] == "ok" for o in outcomes)
    skipped = sum(o["status"] == "skipped" for o in outcomes)
    failed = sum(o["status"] == "failed" for o in outcomes)
    print(f"{done} predicted, {skipped} already done, {failed} failed"
          + (f" (see {out / ERRORS_FILE})" if failed else "") + f"; summary: {out / SUMMARY_COHORT_FILE}"
          + f"  [{DISCLAIMER}]")
    return 1 if failed and not done and not skipped else 0
