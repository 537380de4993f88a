"""``orthodiffusion pretrain`` (self-supervised DDPM pretraining of one plane's backbone, single
process or under torchrun), ``orthodiffusion export`` (our backbone or a training checkpoint →
the published ``{step, model, ema, opt}`` container) and ``orthodiffusion probe`` (the linear probe
that judges a set of backbones against random weights)."""

from __future__ import annotations

import argparse


def _size3(text: str) -> tuple[int, int, int]:
    """'16,32,32' or '16x32x32' → (16, 32, 32)."""
    parts = text.replace("x", ",").replace("×", ",").split(",")
    try:
        size = tuple(int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not D,H,W (three whole numbers)") from None
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not D,H,W (three positive whole numbers)")
    return size


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a plane's diffusion backbone on unlabeled volumes (DDPM)",
        description="Unconditional DDPM pretraining (cosine schedule, ε-prediction, MSE, uniform t) of one "
                    "plane's backbone on unlabeled volumes. Scale out with torchrun: "
                    "`torchrun --nproc_per_node=N -m OrthoDiffusionLib pretrain …` (NCCL on GPUs, gloo on CPU). "
                    "See docs/pretraining.md.")
    p.add_argument("--plane", required=True, choices=["sagittal", "coronal", "axial"])
    p.add_argument("--data", required=True, action="append",
                   help="manifest CSV (column named after the plane), folder of NIfTI/NRRD/MHA, or a volume file; "
                        "repeat to combine")
    p.add_argument("--config", default="knee-demo",
                   help="preset (knee-demo, tiny, released) or a JSON/YAML file (default: knee-demo)")
    p.add_argument("--out", required=True, help="output folder (log, checkpoints, samples, backbone)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="volumes per step and per process")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=["adamw", "adam"], default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="after the warm-up: constant (default, as published) or cosine decay to lr × --lr-min-ratio "
                        "at --steps")
    p.add_argument("--lr-min-ratio", type=float, default=None, help="final lr of the cosine schedule / lr (default 0.1)")
    p.add_argument("--loss-weighting", choices=["uniform", "min-snr"], default=None,
                   help="uniform ε-MSE (default, as published) or min-SNR-γ: w(t) = min(SNR(t), γ) / SNR(t)")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="γ of --loss-weighting min-snr (default 5)")
    p.add_argument("--crop", type=_size3, default=None, metavar="D,H,W",
                   help="train on random D×H×W crops of the volumes (each divisible by the U-Net's downsampling); "
                        "default: the whole model input")
    p.add_argument("--volume-size", type=_size3, default=None, metavar="D,H,W",
                   help="preprocess the volumes to this size instead of the model input (needs --crop); the held-out "
                        "loss is measured on them resized to the model input")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels_last_3d memory format for the training convolutions")
    p.add_argument("--max-wall-s", type=float, default=None,
                   help="stop (with a checkpoint and the export) once this run has trained this many seconds")
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (0 = off; default 1.0)")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--ema-start", type=int, default=None, help="EMA = plain copy of the weights up to this step")
    p.add_argument("--ema-every", type=int, default=None)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from OUT/checkpoints/latest, or from the given checkpoint folder")
    p.add_argument("--init", default=None,
                   help="continued pretraining: start from this backbone (.safetensors with its .json, or a "
                        "published .pt) instead of random weights; fresh optimizer, steps count from 0")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default auto)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=None, help="keep the newest N checkpoints (0 = all)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out denoising loss every N steps (0 = off)")
    p.add_argument("--eval-timesteps", default=None, help="comma-separated t values for the held-out loss")
    p.add_argument("--heldout", type=int, default=None, help="volumes held out for evaluation (default 1)")
    p.add_argument("--sample-every", type=int, default=None, help="PNG of DDIM samples every N steps (and at the end)")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps for the sample PNG (default 10)")
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--grad-checkpointing", action="store_true", default=None)
    p.add_argument("--amp", nargs="?", const="bf16", default=None, choices=["none", "fp16", "bf16"],
                   help="mixed precision on CUDA (bare --amp = bf16); ignored with a message on the CPU")
    p.add_argument("--preprocessing", choices=["released", "spacing"], default=None)
    p.add_argument("--echoes", default=None, help="'all' (default: each echo of a 4D file is a volume) or an echo number")
    p.add_argument("--no-reformat", dest="reformat", action="store_false", default=None,
                   help="skip volumes acquired in another plane instead of reformatting them")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=run_pretrain)

    e = subparsers.add_parser(
        "export", help="write a backbone (or a pretraining checkpoint) as the published .pt container",
        description="Write our .safetensors backbone, or a pretraining checkpoint folder (EMA → 'ema', raw "
                    "weights → 'model'), as the published {step, model, ema, opt} container with denoise_fn. "
                    "keys and the diffusion buffers, loadable with torch.load(weights_only=True), plus a <name>.pt.json "
                    "sidecar with the architecture config (needed to load non-published configs such as knee-demo back).")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--backbone", help="our <name>.safetensors (+ .json manifest)")
    src.add_argument("--checkpoint", help="a pretraining checkpoint folder (OUT/checkpoints/step_XXXXXX)")
    e.add_argument("--out", required=True, help="destination .pt")
    e.add_argument("--step", type=int, default=None, help="step to record (default: from the source)")
    e.set_defaults(func=run_export)

    pr = subparsers.add_parser(
        "probe", help="linear probe: pretrained vs randomly initialised backbones on a labelled cohort",
        description="Pooled mid-block features (t, block) of each plane → standardised logistic regression → "
                    "stratified cross-validated AUROC for one finding, for the given backbones and for the same "
                    "architecture with random weights. Research use, not for clinical decisions.")
    pr.add_argument("--manifest", required=True, help="cohort manifest CSV with plane columns and the finding")
    pr.add_argument("--backbones", required=True, help="folder with sagittal/coronal/axial.safetensors")
    pr.add_argument("--finding", default="EFFU")
    pr.add_argument("--t", type=int, default=100)
    pr.add_argument("--block", default="mid_2")
    pr.add_argument("--out", default=None, help="write the result JSON here too")
    pr.add_argument("--cache", default=None,
                    help="feature cache folder for the pretrained weights' features (default: none)")
    pr.set_defaults(func=run_probe)


def run_pretrain(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from ..training.presets import load_config
    from ..training import run_pretraining, train_config_from

    model_config, train_defaults = load_config(args.config)
    eval_ts = tuple(int(v) for v in args.eval_timesteps.split(",")) if args.eval_timesteps else None
    cfg = train_config_from(
        train_defaults, plane=args.plane, data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule, lr_min_ratio=args.lr_min_ratio, loss_weighting=args.loss_weighting,
        min_snr_gamma=args.min_snr_gamma, crop=args.crop, volume_size=args.volume_size,
        channels_last=args.channels_last, max_wall_s=args.max_wall_s,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, ema_start=args.ema_start, ema_every=args.ema_every,
        seed=args.seed, device=args.device, amp=args.amp, grad_checkpointing=args.grad_checkpointing,
        ckpt_every=args.ckpt_every, keep_checkpoints=args.keep_checkpoints, eval_every=args.eval_every,
        eval_timesteps=eval_ts, heldout=args.heldout, sample_every=args.sample_every, sample_steps=args.sample_steps,
        n_samples=args.n_samples, preprocessing=args.preprocessing, echoes=args.echoes, reformat=args.reformat,
        augment=args.augment, threads=args.threads, progress=args.progress, resume=args.resume, init=args.init,
        command="orthodiffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    summary = run_pretraining(cfg, model_config)
    if summary["rank"] == 0:
        stop = " (wall-time budget reached)" if summary.get("stopped_by") == "max_wall_s" else ""
        print(f"{cfg.plane}: steps {summary['start_step']}→{summary['end_step']}{stop} in {summary['wall_s']:.1f} s "
              f"({summary['steps_per_s']:.3f} steps/s, world size {summary['world_size']})")
        if summary.get("backbone"):
            print(f"EMA backbone: {summary['backbone']}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..backbone.official import export_official
    from ..errors import InputError

    out = Path(args.out)
    if out.suffix not in {".pt", ".pth"}:
        raise InputError("--out must end in .pt or .pth")
    if args.backbone:
        from ..backbone.checkpoints import load_backbone

        model, info = load_backbone(args.backbone)
        step = args.step if args.step is not None else int(info.get("provenance", {}).get("steps") or 0)
        export_official(model.state_dict(), out, step=step, config=model.config)
    else:
        from ..training.checkpoints import load_checkpoint_weights

        ck = Path(args.checkpoint)
        if not (ck / "state.json").is_file():
            raise InputError(f"{ck} is not a pretraining checkpoint folder (no state.json)")
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
        step = args.step if args.step is not None else int(state["step"])
        from ..backbone.config import UNetConfig

        export_official(load_checkpoint_weights(ck, "ema"), out, step=step, model_sd=load_checkpoint_weights(ck, "model"),
                        config=UNetConfig.from_dict(state["model_config"]))
    from ..backbone.official import REFERENCE_NORM_GROUPS, sidecar_path

    print(f"wrote {out} (published container, step {step}) and its config sidecar {sidecar_path(out).name}")
    groups = json.loads(sidecar_path(out).read_text(encoding="utf-8"))["config"]["norm_groups"]
    if groups != REFERENCE_NORM_GROUPS:
        print(f"note: norm_groups={groups}: the reference code hard-codes {REFERENCE_NORM_GROUPS} GroupNorm groups, "
              "so this model runs only in OrthoDiffusionLib (load it back with its sidecar)")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..evaluation.probe import run_probe as probe

    res = probe(Path(args.manifest), Path(args.backbones), args.finding, args.t, args.block, cache=args.cache)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        from ..storage import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
    return 0
