"""``orthodiffusion sweep``: linear probes over a (timestep × block) grid per plane → heatmap, table and
(optionally) the best setting written into the user's copy of the model config."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sweep", help="timestep × block linear-probe sweep per plane (DDAE style)",
                       description="One feature extraction per plane and case (all timesteps batched, stopping at "
                                   "the deepest block), global average pooling, a logistic-regression probe per "
                                   "finding; writes sweep.csv, sweep.json and sweep_heatmap.png. Research use "
                                   "only, not for clinical decisions.")
    p.add_argument("--manifest", required=True, help="labelled cohort manifest CSV")
    p.add_argument("--model", default="knee-demo", help="model id or folder with model.json (default knee-demo)")
    p.add_argument("--timesteps", default="50,100,200,400", help="comma-separated timesteps (default 50,100,200,400)")
    p.add_argument("--blocks", default="mid_0,mid_2", help="comma-separated block names, e.g. mid_0,mid_2,in_8")
    p.add_argument("--planes", default=None, help="comma-separated planes (default: all planes of the model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--label-fraction", type=float, default=1.0, help="fraction of the training rows used (default 1)")
    p.add_argument("--folds", type=int, default=5, help="k for out-of-fold probes when the manifest has no val split")
    p.add_argument("--seed", type=int, default=0, help="noise and split seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cache", default=None,
                   help="feature cache folder (default: none; full maps of every (t, block) can be large)")
    p.add_argument("--write-config", action="store_true",
                   help="write the best (t, block) per plane into the user's copy of the model config "
                        "(never the shipped catalogue); the heads must then be refitted")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from .. import DISCLAIMER
    from ..device import resolve_device
    from ..errors import UserError
    from ..features import FeatureCache
    from ..adapt.sweep import PLANES, parse_list, run_sweep, write_best_config

    timesteps = parse_list(args.timesteps, int, "timestep")
    blocks = parse_list(args.blocks, str, "block")
    planes = parse_list(args.planes, str, "plane") if args.planes else None
    if planes and any(p not in PLANES for p in planes):
        raise UserError(f"--planes: choose from {', '.join(PLANES)}")
    res = run_sweep(args.manifest, args.model, timesteps, blocks, args.out, args.label_fraction, args.folds,
                    args.seed, planes, resolve_device(args.device),
                    FeatureCache(args.cache) if args.cache else None, progress=not args.quiet)
    for plane, b in res["best"].items():
        cur = res["current"][plane]
        print(f"  {plane:<9} best t={b['timestep']:<4} {b['block']:<6} macro AUROC {b['macro_auroc']:.3f}"
              f"  (model now: t={cur['timestep']} {cur['block']}; {res['protocol'][plane]})")
    out = Path(args.out)
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, {out / 'sweep_heatmap.png'} ({res['seconds']} s)")
    if args.write_config:
        target = write_best_config(args.model, res["best"], out / "sweep.json")
        print(f"wrote the best setting per plane into {target}; refit the heads: "
              f"orthodiffusion fit --model {res['model']['id']} --manifest …")
    print(f"[{DISCLAIMER} Sweep scores on synthetic data are not clinical performance.]")
    return 0
