"""Cohort mode of ``orthodiffusion predict --manifest``: one result folder per study, resumable
(cases whose result.json exists are skipped), failures recorded in ``errors.csv`` without stopping
the cohort. Sequential in one process (the model is loaded once); ``--workers`` > 1 is not yet
parallel and is reported as such."""

from __future__ import annotations

import csv
import traceback
from pathlib import Path


def predict_cohort(args) -> int:
    from tqdm import tqdm

    from .. import DISCLAIMER
    from ..cohort import read_manifest
    from ..device import resolve_device
    from ..errors import UserError
    from .config import PredictJob
    from .predict import load_model, predict_study

    manifest = read_manifest(args.manifest)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        print(f"note: --workers {args.workers}: cohort mode runs sequentially in this version")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device, args.heads_version)
    errors, done, skipped = [], 0, 0
    for row in tqdm(manifest.rows, desc="cases", unit="case"):
        case_out = out / row.study_id
        if (case_out / "result.json").is_file():
            skipped += 1
            continue
        inputs = [str(p) for p in row.images.values() if p is not None]
        try:
            job = PredictJob(inputs=inputs, out=str(case_out), model=args.model, device=args.device,
                             draws=args.draws, seed=args.seed, reference=args.reference,
                             ehr={k: v for k, v in row.ehr.items() if v not in (None, "")} or None,
                             reformat=False, case_id=row.study_id, cache=args.cache, no_cache=args.no_cache)
            predict_study(job, loaded=loaded, log=lambda m: None)
            done += 1
        except (UserError, RuntimeError, ValueError, OSError) as exc:
            errors.append({"study_id": row.study_id, "error": f"{type(exc).__name__}: {exc}",
                           "trace": traceback.format_exc(limit=3).replace("\n", " | ")})
    if errors:
        with open(out / "errors.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["study_id", "error", "trace"])
            w.writeheader()
            w.writerows(errors)
    print(f"{done} predicted, {skipped} already done, {len(errors)} failed"
          + (f" (see {out / 'errors.csv'})" if errors else "") + f"  [{DISCLAIMER}]")
    return 1 if errors and not done and not skipped else 0
