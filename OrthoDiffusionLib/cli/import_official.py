"""``orthodiffusion import-official``: register the published per-plane backbones as a user model."""

from __future__ import annotations

from ..planes import PLANES


def register(sub) -> None:
    p = sub.add_parser(
        "import-official", help="verify, convert and register the published OrthoDiffusion backbones",
        description="Each file must be a published checkpoint (torch-saved {step, model, ema, opt}, keys "
                    "denoise_fn.*), read with torch.load(weights_only=True) only. The EMA weights are checked "
                    "(keys, shapes, dtypes, diffusion buffers), converted to safetensors + JSON manifest "
                    "(sha256) and registered in $ORTHODIFFUSION_HOME/models/NAME without heads: fit them with "
                    "`orthodiffusion fit --model NAME ...`. Any plane may be omitted. Features default to the "
                    "released multi-plane setting (sagittal t=150 mid_0, coronal t=50 mid_2, axial t=200 mid_0). "
                    "Research use only, not for clinical decisions.")
    for plane in PLANES:
        p.add_argument(f"--{plane}", default=None, metavar="CKPT.pt", help=f"published {plane} checkpoint")
    p.add_argument("--name", required=True, help="model id to register (letters, digits, . _ -)")
    p.add_argument("--config", default="released",
                   help="architecture: 'released' (1x16x256x256, 34.5 M parameters; default) or a JSON file "
                        "with a U-Net configuration")
    for plane in PLANES:
        p.add_argument(f"--{plane}-timestep", type=int, default=None, metavar="T",
                       help=f"feature timestep of the {plane} plane")
        p.add_argument(f"--{plane}-block", default=None, metavar="BLOCK",
                       help=f"feature block of the {plane} plane (in_N, mid_0..mid_2, out_N, final)")
    p.add_argument("--sha256sums", default=None, metavar="SHA256SUMS",
                   help="the release's digests (sha256sum format): each checkpoint must be listed and match")
    p.add_argument("--model-version", default="1.0.0", help="version of the registered model (default 1.0.0)")
    p.add_argument("--licence", default=None, help="licence text recorded in model.json")
    p.add_argument("--force", action="store_true",
                   help="replace a model with the same name (its folder is copied aside first)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .. import DISCLAIMER
    from ..models.import_official import import_official

    checkpoints = {p: getattr(args, p) for p in PLANES if getattr(args, p)}
    features = {p: {"timestep": getattr(args, f"{p}_timestep"), "block": getattr(args, f"{p}_block")}
                for p in PLANES}
    spec = import_official(checkpoints, args.name, config=args.config, force=args.force, features=features,
                           version=args.model_version, licence=args.licence, sha256sums=args.sha256sums)
    planes = ", ".join(f"{p} t={v['timestep']} {v['block']}" for p, v in spec.planes.items())
    print(f"imported {spec.id} {spec.version} into {spec.root} (planes: {planes})")
    print(f"heads not fitted: run `orthodiffusion fit --model {spec.id} --manifest COHORT.csv --task all` "
          f"before predict  [{DISCLAIMER}]")
    return 0
