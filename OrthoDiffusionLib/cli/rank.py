"""``orthodiffusion rank``: order unlabelled cases by model uncertainty for annotation (active learning)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("rank", help="rank unlabelled cases by uncertainty (which to annotate first)",
                       description="Predict every manifest row (finished result folders in --results are reused) "
                                   "and write a CSV sorted by an uncertainty score: noise-draw spread of the "
                                   "finding probabilities, disagreement of the per-plane experts, segmentation "
                                   "entropy (docs/pipeline.md). Research use only, not for clinical decisions.")
    p.add_argument("--manifest", required=True, help="cohort manifest CSV of unlabelled cases")
    p.add_argument("--model", default="knee-demo", help="model id or folder with model.json (default knee-demo)")
    p.add_argument("--out", required=True, help="ranking CSV to write")
    p.add_argument("--results", default=None,
                   help="cohort predict folder to reuse / fill (default: <out without .csv>-cases)")
    p.add_argument("--draws", type=int, default=5, help="noise draws K for cases not predicted yet (≥ 2; default 5)")
    p.add_argument("--workers", type=int, default=1, help="worker processes for cases not predicted yet")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores split)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads-version", default=None)
    p.add_argument("--cache", default=None, help="feature cache folder (default: per-user cache)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..errors import UserError
    from ..inference.cohort import cohort_settings
    from .predict import template_from_args
    from ..inference.rank import SCORE_COMPONENTS, rank_cohort

    if args.draws < 2:
        raise UserError(f"--draws must be ≥ 2 for a noise-draw spread, got {args.draws}")
    if args.workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {args.workers}")
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out}: give a .csv file name")
    results = Path(args.results) if args.results else out.with_name(out.stem + "-cases")
    rows = rank_cohort(args.manifest, out, cohort_settings(template_from_args(args)), results, args.workers, args.threads)
    few = [r["study_id"] for r in rows if r["status"] == "ok" and int(r["draws"]) < 2]
    if few:
        print(f"warning: {len(few)} reused case(s) were predicted with 1 noise draw (draw_spread = 0): "
              f"{', '.join(few[:5])}{' …' if len(few) > 5 else ''}")
    print(f"{'rank':>4}  {'study_id':<16} score  " + "  ".join(SCORE_COMPONENTS))
    for r in rows[:args.top]:
        if r["status"] == "ok":
            print(f"{r['rank']:>4}  {r['study_id']:<16} {r['score']:.3f}  "
                  + "  ".join(f"{r[c]:.4f}" for c in SCORE_COMPONENTS))
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"wrote {out} ({len(rows) - len(failed)} ranked, {len(failed)} failed; results in {results})  [{DISCLAIMER}]")
    return 0 if len(failed) < len(rows) else 1
