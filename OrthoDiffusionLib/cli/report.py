"""``orthodiffusion report --cohort DIR``: self-contained HTML report over cohort predictions
(thin wrapper over :func:`OrthoDiffusionLib.reports.cohort.write_cohort_report`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="HTML report over a cohort predictions folder (+ metrics when labelled)",
                       description="Case table, distribution plots and errors of a `predict --manifest` folder; with "
                                   "a labelled manifest also the `evaluate` outputs (computed into DIR/evaluation "
                                   "when missing or out of date). Research use only, not for clinical decisions.")
    p.add_argument("--cohort", required=True, help="the --out folder of `orthodiffusion predict --manifest`")
    p.add_argument("--manifest", default=None, help="cohort manifest (labels, centers, patient ids)")
    p.add_argument("--out", default=None, help="report file (default DIR/report.html); a _cases.csv goes next to it")
    p.add_argument("--anonymize", action="store_true",
                   help="replace study and patient ids with stable pseudonyms in the HTML and the CSV")
    p.add_argument("--anonymize-salt", default=None,
                   help="secret salt for the pseudonyms (default: random per report, so reports are not linkable)")
    p.add_argument("--operating-point", default="head", help="if the evaluation is computed: head, youden, sens=0.9")
    p.add_argument("--bootstrap", type=int, default=1000, help="if the evaluation is computed: resamples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..errors import InputError
    from ..reports.cohort import write_cohort_report

    if args.anonymize_salt and not args.anonymize:
        raise InputError("--anonymize-salt goes with --anonymize")
    paths = write_cohort_report(args.cohort, out=args.out, manifest=args.manifest, anonymize=args.anonymize,
                                salt=args.anonymize_salt, n_boot=args.bootstrap, seed=args.seed,
                                operating_point=args.operating_point, log=lambda m: print(m, flush=True))
    print(f"report: {paths['html'].resolve()}\ncase table: {paths['csv'].resolve()}"
          + (f"\nevaluation: {paths['evaluation'].resolve()}" if paths["evaluation"] else "")
          + f"  [{DISCLAIMER}]")
    return 0
