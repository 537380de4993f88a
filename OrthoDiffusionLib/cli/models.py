"""``orthodiffusion models list|verify|install``: the model catalogue."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list, verify (sha256) or install models",
                       description="Models = per-plane backbones + head store + feature spec. Shipped ones are in "
                                   "Resources/Models/catalogue.json; installed ones in $ORTHODIFFUSION_HOME/models "
                                   "(default ~/.orthodiffusion/models). Nothing is ever downloaded.")
    s = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = s.add_parser("list", help="list the models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    v = s.add_parser("verify", help="check every file's sha256 (all models, or one)")
    v.add_argument("id", nargs="?", default=None)
    v.set_defaults(func=_verify)
    i = s.add_parser("install", help="install a model folder or .zip (with model.json) for this user")
    i.add_argument("path")
    i.add_argument("--force", action="store_true",
                   help="replace an installed model with the same id (the old one, fitted heads included, is moved "
                        "to $ORTHODIFFUSION_HOME/replaced/ID-TIME)")
    i.set_defaults(func=_install)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])


def _list(args) -> int:
    import json

    from .. import DISCLAIMER
    from ..heads import HeadStore
    from ..models.catalogue import list_models

    rows = []
    for m in list_models():
        store = HeadStore(m.heads_for_read())
        rows.append({**m.short(), "planes": list(m.planes), "label_sets": m.label_sets,
                     "heads": str(store.root), "heads_version": store.current(),
                     "measured": m.entry.get("measured", {})})
    if args.json:
        print(json.dumps({"models": rows, "disclaimer": DISCLAIMER}, indent=2))
        return 0
    for r in rows:
        heads = r["heads_version"] or f"none (heads not fitted: run orthodiffusion fit --model {r['id']} ...)"
        print(f"{r['id']:<16} {r['version']:<8} {r['source']:<8} planes={','.join(r['planes'])} "
              f"heads={heads}  {r['root']}")
    print(DISCLAIMER)
    return 0


def _verify(args) -> int:
    from ..models.catalogue import get_model, list_models, verify_model

    models = [get_model(args.id)] if args.id else list_models()
    bad = 0
    for m in models:
        problems = verify_model(m)
        if problems:
            bad += 1
            print(f"{m.id} {m.version}: FAILED")
            for p in problems:
                print(f"  - {p}")
        else:
            from ..heads import HeadStore

            heads = (f"heads {m.heads_for_read()}" if HeadStore(m.heads_for_read()).current()
                     else f"heads not fitted: run orthodiffusion fit --model {m.id} ...")
            print(f"{m.id} {m.version}: OK ({len(m.files)} files, {heads})")
    return 1 if bad else 0


def _install(args) -> int:
    from ..models.install import install_model

    m = install_model(args.path, force=args.force, log=print)
    print(f"installed {m.id} {m.version} into {m.root}")
    return 0
