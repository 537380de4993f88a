"""``orthodiffusion convert``: published .pt container ↔ safetensors + manifest."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a backbone between the published .pt container and safetensors",
                       description="Convert a backbone: SRC.pt → DST.safetensors (+ DST.json manifest), or "
                                   "SRC.safetensors → DST.pt in the published {step, model, ema, opt} container. "
                                   "Published files are read with torch.load(weights_only=True).")
    p.add_argument("src", help="input .pt/.pth or .safetensors/.json")
    p.add_argument("dst", help="output .safetensors or .pt")
    p.add_argument("--which", default="ema", choices=["ema", "model"], help="weights to take from a .pt (default: ema)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..backbone.checkpoints import convert

    out = convert(args.src, args.dst, which=args.which)
    print(f"wrote {out}")
    if out.suffix == ".safetensors":
        print(f"wrote {out.with_suffix('.json')}")
    return 0
