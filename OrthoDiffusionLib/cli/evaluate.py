"""``orthodiffusion evaluate``: metrics of a predicted cohort against its manifest labels
(thin wrapper over :func:`OrthoDiffusionLib.evaluation.cohort.evaluate_cohort`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate cohort predictions against the manifest's labels",
                       description="Per-label AUROC, AP, sensitivity/specificity at an operating point, macro AUROC, "
                                   "bootstrap 95% CIs, calibration, Dice/HD95 per structure, breakdowns by center "
                                   "and field strength, MPAE plane-weight summaries: JSON + CSV + PNG in --out. "
                                   "Research use only, not for clinical decisions.")
    p.add_argument("--manifest", required=True, help="cohort manifest CSV with labels")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", default=None, help="folder of result folders (from predict --manifest)")
    src.add_argument("--model", default=None, help="predict the cohort with this model first (resumable)")
    p.add_argument("--out-predictions", default=None,
                   help="with --model: where the result folders go (default OUT/predictions)")
    p.add_argument("--out", required=True, help="output folder for evaluation.json, CSV tables and PNG figures")
    p.add_argument("--operating-point", default="head",
                   help="head (the fitted heads' thresholds, default), youden, sens=0.9 or fixed=0.5")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default=None, choices=["train", "val", "test"], help="evaluate only this split")
    p.add_argument("--no-segmentation", action="store_true", help="skip Dice/HD95")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", default="auto", help="with --model: auto, cpu or cuda")
    p.add_argument("--draws", type=int, default=None, help="with --model: noise draws per case (default: the model's)")
    p.add_argument("--cache", default=None, help="with --model: feature cache folder")
    p.set_defaults(func=_run)


def _predict_first(args) -> str:
    """Run cohort predict (resumable) for the rows to evaluate (plus 'val' rows when a threshold is chosen
    on them); returns the predictions folder."""
    import tempfile
    from pathlib import Path

    from ..io.manifest import read_manifest, write_manifest
    from ..errors import InputError
    from ..inference.cohort import predict_cohort
    from ..jobs import PredictJob
    from ..ownership import claim_folder

    claim_folder(args.out, "evaluation")  # before predicting: a refused --out costs nothing
    pred_dir = Path(args.out_predictions or Path(args.out) / "predictions")
    manifest = read_manifest(args.manifest)
    with tempfile.TemporaryDirectory(prefix="od-eval-") as tmp:
        path = Path(args.manifest)
        if args.split:
            wanted = {args.split} | ({"val"} if args.operating_point.split("=")[0] in ("youden", "sens") else set())
            rows = [r for r in manifest.rows if r.split in wanted]
            if not any(r.split == args.split for r in rows):
                raise InputError(f"{manifest.path}: no rows with split '{args.split}'")
            path = write_manifest(rows, Path(tmp) / "manifest.csv", label_set=manifest.label_set)
        template = PredictJob(model=args.model, device=args.device, seed=args.seed, draws=args.draws, cache=args.cache)
        predict_cohort(path, pred_dir, template)  # failures land in errors.csv; evaluate says so
    return str(pred_dir)


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..errors import InputError
    from ..evaluation.cohort import OperatingPoint, evaluate_cohort

    if args.bootstrap < 0:
        raise InputError("--bootstrap must be >= 0")
    if args.out_predictions and not args.model:
        raise InputError("--out-predictions goes with --model (with --predictions the folder already exists)")
    op = OperatingPoint.parse(args.operating_point)  # fail before any long prediction run
    predictions = args.predictions or _predict_first(args)
    import os

    if int(os.environ.get("RANK", "0") or 0) != 0:
        return 0  # under torchrun, rank 0 (which waits for every rank's cases) evaluates
    rep = evaluate_cohort(args.manifest, predictions, out=args.out, operating_point=op, n_boot=args.bootstrap,
                          seed=args.seed, split=args.split, segmentation=not args.no_segmentation,
                          plots=not args.no_plots, progress=True)
    meta = rep["meta"]
    print(f"evaluated {meta['n_evaluated']} of {meta['n_manifest_rows']} cases"
          + (f" (split {args.split})" if args.split else "")
          + (f"; {meta['n_missing']} without predictions, left out (see evaluation.json: missing_predictions)"
             if meta["n_missing"] else ""))
    cls = rep.get("classification")
    if cls:
        m = cls["macro_auroc"]
        print(f"operating point: {meta['operating_point']['name']} ({meta['operating_point']['source']})")
        print(f"macro AUROC {_f(m['value'])} [{_f(m['ci_low'])}, {_f(m['ci_high'])}] over {len(m['labels_used'])} labels"
              + (f"; skipped: {', '.join(f'{k} ({v})' for k, v in m['skipped'].items())}" if m["skipped"] else ""))
        for r in cls["per_label"]:
            print(f"  {r['label']:<5} AUROC {_f(r['auroc'])} [{_f(r['auroc_ci_low'])}, {_f(r['auroc_ci_high'])}]  "
                  f"sens {_f(r['sensitivity'])} spec {_f(r['specificity'])} @ {_f(r['threshold'])}  "
                  f"n+={r['n_pos']} n-={r['n_neg']}")
    seg = rep.get("segmentation")
    if seg:
        md = seg["macro_dice"]
        print(f"mean Dice {_f(md['value'])} [{_f(md['ci_low'])}, {_f(md['ci_high'])}] over {seg['n_cases']} cases")
    for note in meta["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out}  [{DISCLAIMER}]")
    return 0


def _f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"
