"""``orthodiffusion features``: diffusion features of a study, per plane."""

from __future__ import annotations


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


def register(sub) -> None:
    p = sub.add_parser("features", help="extract diffusion features (timesteps × blocks) from a study",
                       description="Noise each plane volume to step t with seeded noise, run the backbone once and "
                                   "keep the named block outputs (stopping after the deepest one). Writes "
                                   "features_<plane>.safetensors and features.json.")
    p.add_argument("study", nargs="+", help="DICOM folder, or up to three NIfTI/NRRD/MHA files, or one 3D volume")
    p.add_argument("--checkpoint", required=True, help="backbone: published .pt or our .safetensors")
    p.add_argument("--timesteps", type=_ints, default=(100,), help="comma-separated, e.g. 50,100,200 (default 100)")
    p.add_argument("--blocks", default="mid_2", help="comma-separated block names, e.g. mid_0,mid_2 (default mid_2)")
    p.add_argument("--planes", default=None, help="restrict to these planes (comma-separated)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--draws", type=int, default=1, help="K noise draws; their spread is reported (default 1)")
    p.add_argument("--preprocessing", choices=["released", "spacing"], default="released")
    p.add_argument("--echo", type=int, default=None, help="echo index for 4D multi-echo inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="feature cache folder (default: per-user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import time
    from pathlib import Path

    from safetensors.torch import save_file
    from tqdm import tqdm

    from .. import DISCLAIMER, __version__
    from ..backbone.checkpoints import load_backbone
    from ..device import resolve_device
    from ..errors import UserError
    from ..features import FeatureCache, FeatureSpec
    from ..features.plane import plane_features, prepare_plane
    from ..io import load_study
    from ..storage import atomic_path, atomic_write_json, sha256_file

    t0 = time.perf_counter()
    study = load_study(args.study, echo=args.echo)
    planes = study.planes
    if args.planes:
        wanted = [p.strip() for p in args.planes.split(",") if p.strip()]
        planes = {p: s for p, s in planes.items() if p in wanted}
        if not planes:
            raise UserError(f"none of the requested planes ({args.planes}) is in the study ({', '.join(study.planes)})")
    device = resolve_device(args.device)
    try:
        model, info = load_backbone(args.checkpoint)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    backbone_sha = sha256_file(args.checkpoint)
    spec = FeatureSpec(timesteps=args.timesteps, blocks=tuple(b.strip() for b in args.blocks.split(",") if b.strip()),
                       seed=args.seed, n_draws=args.draws, preprocessing=args.preprocessing)
    cache = None if args.no_cache else FeatureCache(args.cache)
    try:
        for b in spec.blocks:
            model.block_index(b)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = model.config
    from ..ownership import claim_folder

    out = claim_folder(args.out, "features")
    summary = {"disclaimer": DISCLAIMER, "software": {"orthodiffusion": __version__}, "spec": spec.to_dict(),
               "backbone": {"path": str(args.checkpoint), "sha256": backbone_sha, "config": cfg.to_dict()},
               "warnings": list(study.warnings), "planes": {}}
    for plane, series in tqdm(planes.items(), desc="features", unit="plane", disable=None):
        tp = time.perf_counter()
        ready = prepare_plane(series.image, plane, cfg, args.preprocessing)
        feats = plane_features((model, backbone_sha), ready, spec, cache, device)
        tensors = {f"t{t}/{b}": v.contiguous() for (t, b), v in feats.items()}
        with atomic_path(out / f"features_{plane}.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"plane": plane, "disclaimer": DISCLAIMER})
        summary["planes"][plane] = {
            "source": series.info.source, "content_hash": ready.content_hash, "input_shape": list(ready.array.shape),
            "seconds": round(time.perf_counter() - tp, 3),
            "features": {k: {"shape": list(v.shape), "mean": float(v.mean()), "std": float(v.std()),
                             "draw_spread": float(v.std(0).mean()) if v.shape[0] > 1 else 0.0}
                         for k, v in tensors.items()}}
    summary["cache"] = None if cache is None else {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses}
    summary["seconds_total"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(out / "features.json", summary)
    for plane, s in summary["planes"].items():
        shapes = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in s["features"].items())
        print(f"{plane}: {shapes} ({s['seconds']} s)")
    print(f"wrote {out / 'features.json'}  [{DISCLAIMER}]")
    return 0
