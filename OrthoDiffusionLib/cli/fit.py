"""``orthodiffusion fit``: cohort manifest → new versioned head set (diagnosis and/or segmentation)."""

from __future__ import annotations

from ..planes import PLANES


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit diagnosis / segmentation heads on a cohort (cached features)",
                       description="Extract (cached) backbone features for the manifest's train/val rows, fit the "
                                   "heads and save a new head-set version (label set, data summary, val metrics, "
                                   "parent version). Research use only, not for clinical decisions.")
    p.add_argument("--manifest", required=True, help="cohort manifest CSV (docs/manifest.md)")
    p.add_argument("--task", choices=["diagnosis", "segmentation", "all"], default="all")
    p.add_argument("--model", default="knee-demo", help="model id or folder with model.json (default knee-demo)")
    p.add_argument("--label-fraction", type=float, default=1.0, help="use this fraction of labelled train cases")
    p.add_argument("--folds", type=int, default=5, help="folds for the MPAE out-of-fold experts (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="head store folder (default: the model's per-user store)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: per-user cache)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seg-plane", default="sagittal", choices=list(PLANES))
    p.add_argument("--max-epochs", type=int, default=200, help="diagnosis heads (early stopping)")
    p.add_argument("--seg-epochs", type=int, default=45,
                   help="segmentation head: at most this many epochs, early stopping (default 45)")
    p.add_argument("--replay", type=int, default=48,
                   help="training cases kept in the head version as a replay sample for `finetune` "
                        "(default 48; 0: none)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU budget: worker processes for the diagnosis experts, torch threads for the "
                        "segmentation decoder (default: every core this process may use; 1 on a machine busy "
                        "with other jobs)")
    p.add_argument("--finetune-backbone", action="store_true",
                   help="Stage I: first train each plane's encoder (diagnosis) or the segmentation plane's "
                        "encoder (segmentation) with the task's head, then fit the heads on its features; the "
                        "encoder weights are saved in the head version (needs --task diagnosis or segmentation)")
    p.add_argument("--unfreeze", type=int, default=3,
                   help="Stage I: trainable blocks, the last N up to and including the feature block "
                        "(default 3: mid_0..mid_2 for mid_2 features)")
    p.add_argument("--finetune-epochs", type=int, default=20,
                   help="Stage I: at most this many epochs, early stopping (default 20)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..jobs import FitJob
    from ..adapt.fit import fit_heads

    job = FitJob(manifest=args.manifest, model=args.model, task=args.task, label_fraction=args.label_fraction,
                 folds=args.folds, seed=args.seed, out=args.out, cache=args.cache, device=args.device,
                 seg_plane=args.seg_plane, max_epochs=args.max_epochs, seg_epochs=args.seg_epochs,
                 replay=args.replay, threads=args.threads, finetune_backbone=args.finetune_backbone,
                 unfreeze=args.unfreeze, finetune_epochs=args.finetune_epochs)
    res = fit_heads(job, log=lambda m: print(m, flush=True), progress=not args.quiet)
    print(f"head set {res['version']} in {res['store']} ({res['seconds']} s)  [{DISCLAIMER}]")
    return 0
