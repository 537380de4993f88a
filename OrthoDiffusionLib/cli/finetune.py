"""``orthodiffusion finetune``: corrections → a new head-set version; ``--list`` versions;
``--rollback VERSION``. Stage tags for the Slicer module: [loading] [features] [finetune] [writing].
The work is in ``adapt.finetune`` and ``models.versions``."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune the heads on saved corrections (new head version); list; roll back",
                       description="Fine-tunes the current segmentation decoder (and the diagnosis head on "
                                   "confirmed/flipped findings) on the saved corrections, latest per case, mixed with "
                                   "the head version's replay sample, starting from the current weights, on cached "
                                   "features. Saves a new head version in the per-user store (never the shipped one) "
                                   "with before/after Dice and probabilities. --list shows the versions, --rollback "
                                   "makes an earlier one current (nothing is deleted). Research use only, not for "
                                   "clinical decisions.")
    p.add_argument("--model", default="knee-demo", help="model id or folder with model.json (default knee-demo)")
    p.add_argument("--corrections", default=None, help="corrections store folder (default: the per-user store)")
    p.add_argument("--case", dest="cases", action="append", default=[], metavar="ID",
                   help="use only this case's latest correction (repeatable; default: every case)")
    p.add_argument("--replay", type=int, default=16, help="replay-sample cases mixed in (default 16; 0: none)")
    p.add_argument("--replay-weight", type=float, default=0.1,
                   help="weight of the replay loss (targets: the heads' outputs before fine-tuning; default 0.1)")
    p.add_argument("--epochs", type=int, default=40,
                   help="optimiser steps, each on every corrected case + a few replay cases (default 40)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate of the output layers (default 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    p.add_argument("--cache", default=None, help="feature cache folder (default: the one the prediction used)")
    p.add_argument("--accept-worse", action="store_true",
                   help="make the new version current even when it is worse than its parent on the corrected cases "
                        "or the replay sample (default: it is saved but the parent stays current)")
    p.add_argument("--list", action="store_true", help="list head versions (parent, created, metrics) and exit")
    p.add_argument("--rollback", default=None, metavar="VERSION", help="make VERSION current again and exit")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line (last line)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def job_from_args(args):
    from ..jobs import FinetuneJob

    return FinetuneJob(model=args.model, corrections=args.corrections, cases=list(args.cases), replay=args.replay,
                       replay_weight=args.replay_weight, epochs=args.epochs, seed=args.seed, lr=args.lr,
                       device=args.device, cache=args.cache, accept_worse=args.accept_worse)


def _print_versions(info: dict) -> None:
    from ..models.versions import fmt_metric

    print(f"head versions of {info['model']} in {info['store']}"
          + ("" if info["user_store"] else " (the model's own; no fine-tuned versions yet)"))
    for r in info["versions"]:
        mark = "*" if r["current"] else " "
        line = f"{mark} {r['version']}  parent {r['parent'] or '–':<6} {r['created']}  {r['kind']}"
        if r["kind"] == "finetune":
            line += "  " + "; ".join(f"{cid} Dice {fmt_metric(c['mean_dice_before'])}→"
                                     f"{fmt_metric(c['mean_dice_after'])}" for cid, c in r["cases"].items())
        else:
            line += f"  val Dice {fmt_metric(r.get('val_mean_dice'))}, macro AUROC {fmt_metric(r.get('macro_auroc'))}"
        print(line)


def _print_summary(s: dict) -> None:
    from ..models.versions import finetune_summary_lines

    lines = finetune_summary_lines(s)
    for line in lines[:-1]:
        print(line)
    if (s.get("guard") or {}).get("made_current", True):
        print(f"stored in {s['store']}; roll back with: orthodiffusion finetune --model {s['model']['id']} "
              f"--rollback {s['parent']}  [{lines[-1]}]")
    else:
        print(f"stored in {s['store']}, NOT current ({s['parent']} stays current); to use it anyway: orthodiffusion "
              f"finetune --model {s['model']['id']} --rollback {s['version']}  [{lines[-1]}]")


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..errors import UserError

    if args.list and args.rollback:
        raise UserError("give either --list or --rollback, not both")
    if args.list:
        from ..models.versions import head_versions

        info = head_versions(args.model)
        _print_versions(info)
        print(f"[{DISCLAIMER}]")
        if args.json:
            print(json.dumps(info))
        return 0
    if args.rollback:
        from ..models.versions import rollback  # no torch: a rollback only moves the pointer

        res = rollback(args.model, args.rollback)
        print(f"[writing] head set {res['version']} is current in {res['store']}"
              + ("" if res["changed"] else " (it already was)") + f"  [{DISCLAIMER}]")
        if args.json:
            print(json.dumps(res))
        return 0
    job = job_from_args(args)
    from ..adapt.finetune import finetune

    summary = finetune(job, log=lambda m: print(m, flush=True), progress=not args.quiet)
    _print_summary(summary)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0
