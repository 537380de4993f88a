"""Import the published OrthoDiffusion backbones (``torch.save({step, model, ema, opt})`` per plane)
as a per-user model: verify every file against the published format, convert the EMA weights to
our safetensors + JSON manifest (sha256), and register ``$ORTHODIFFUSION_HOME/models/<id>`` with
no heads yet (``orthodiffusion fit --model <id>`` fits them).

Checkpoints are read only with ``torch.load(weights_only=True)`` (``official.read_container``):
a pickle that would build any object other than tensors and plain containers is refused before
anything runs. Nothing is written until every plane has been verified, and the model folder
appears in one rename. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import DISCLAIMER, __version__
from ..errors import CheckpointError, InputError, UserError
from ..storage import atomic_write_json, sha256_file
from ..planes import PLANES
from .install import install_model
from .catalogue import (MODEL_FILE, RELEASED_INFERENCE, check_model_id, file_record,
                        user_models_dir, validate_entry)

# The released multi-plane feature setting (method.md): axial t=200 mid_0, sagittal t=150 mid_0,
# coronal t=50 mid_2.
RELEASED_FEATURES = {"sagittal": (150, "mid_0"), "coronal": (50, "mid_2"), "axial": (200, "mid_0")}
BUFFER_RTOL = 1e-4


@dataclass
class ImportedPlane:
    plane: str
    source: Path
    sha256: str
    step: int | None
    state_dict: dict          # U-Net weights (EMA), prefixes stripped


def resolve_config(value: str | None):
    """``released`` (default) or a JSON file: a ``UNetConfig`` dict, or ``{"config": {...}}`` as in
    the published schema / parity fixture (whose ``input_shape`` [N, C, D, H, W] gives depth and channels)."""
    from ..backbone import UNetConfig

    if value in (None, "", "released"):
        return UNetConfig.released(), "released"
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"--config {value}: neither 'released' nor an existing JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cfg = dict(data.get("config", data))
        shape = data.get("input_shape")
        if shape and len(shape) == 5:
            cfg.setdefault("depth_size", int(shape[2]))
            cfg.setdefault("in_channels", int(shape[1]))
        return UNetConfig.from_dict(cfg), path.name
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"--config {value}: not a usable U-Net configuration ({exc})") from None


def expected_tensors(config) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of a published ``ema`` state dict for ``config``: ``denoise_fn.``-prefixed U-Net
    weights and the 13 diffusion buffers, with shape and dtype (the published schema's content)."""
    from ..backbone import DiffusionUNet
    from ..backbone.official import BUFFER_KEYS

    with torch.device("meta"):
        model = DiffusionUNet(config)
    out = {f"denoise_fn.{k}": (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    out.update({k: ((config.timesteps,), torch.float32) for k in BUFFER_KEYS})
    return out


def _shape_hint(unet_sd: dict, config) -> str:
    from ..backbone.official import infer_config

    try:
        got = infer_config(unet_sd, image_size=config.image_size, depth_size=config.depth_size)
    except CheckpointError:
        return ""
    if (got.num_channels, got.channel_mult) == (config.num_channels, config.channel_mult):
        return ""
    return (f" (the weights look like num_channels={got.num_channels}, channel_mult="
            f"{','.join(map(str, got.channel_mult))}: pass --config PATH.json with that architecture)")


def verify_checkpoint(path: str | Path, config, plane: str = "", config_name: str = "released") -> ImportedPlane:
    """Read a published container (weights_only) and check its EMA state dict against ``config``:
    keys, shapes, dtypes, and diffusion buffers equal to the cosine schedule. Raises one-line
    ``CheckpointError``s naming what is wrong."""
    from ..backbone import DiffusionUNet
    from ..backbone.checkpoints import strict_check
    from ..backbone.official import BUFFER_KEYS, diffusion_buffers, load_official_state_dict

    path = Path(path).expanduser()
    label = f"--{plane} {path.name}" if plane else path.name
    if path.is_dir():
        raise CheckpointError(f"{label}: is a folder; give the published .pt checkpoint file")
    try:
        unet, buffers, info = load_official_state_dict(path, "ema")
    except CheckpointError as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    # U-Net keys and shapes (every problem listed), then exact dtypes
    with torch.device("meta"):
        reference = DiffusionUNet(config)
    expected = reference.state_dict()
    try:
        strict_check(reference, unet, f"{path.name}['ema']")
    except CheckpointError as exc:
        hint = _shape_hint(unet, config)
        if not hint:  # a few keys off: name each one
            raise CheckpointError(f"{label}: {exc} [config {config_name}]") from None
        n_shape = sum(1 for k in set(unet) & set(expected) if unet[k].shape != expected[k].shape)
        raise CheckpointError(
            f"{label}: another architecture than config {config_name}: {len(set(expected) - set(unet))} missing, "
            f"{len(set(unet) - set(expected))} unexpected, {n_shape} mis-shaped keys{hint}") from None
    wrong = [f"{k}: {unet[k].dtype} (expected {expected[k].dtype})" for k in sorted(unet)
             if unet[k].dtype != expected[k].dtype]
    if wrong:
        raise CheckpointError(f"{label}: tensors with the wrong dtype: {'; '.join(wrong[:4])}"
                              + (f"; … ({len(wrong)} in all)" if len(wrong) > 4 else ""))
    # the diffusion buffers: present, float32 [T], equal to the cosine schedule our features use
    missing = [k for k in BUFFER_KEYS if k not in buffers]
    if missing:
        raise CheckpointError(f"{label}: diffusion buffers missing from 'ema': {', '.join(missing)}")
    ours = diffusion_buffers(config.timesteps)
    for key in BUFFER_KEYS:
        value = buffers[key]
        if tuple(value.shape) != (config.timesteps,) or value.dtype != torch.float32:
            raise CheckpointError(f"{label}: diffusion buffer {key} is {value.dtype} {tuple(value.shape)}, "
                                  f"expected float32 ({config.timesteps},)")
        rel = ((value - ours[key]).abs() / ours[key].abs().clamp_min(1e-6)).max().item()
        if not rel <= BUFFER_RTOL:
            raise CheckpointError(f"{label}: diffusion buffer {key} differs from the cosine schedule "
                                  f"(max relative error {rel:.2g}); features would not match the published method")
    return ImportedPlane(plane, path, sha256_file(path), info.get("step"), unet)


def feature_settings(planes, config, overrides: dict | None = None) -> dict:
    """plane -> {"timestep", "block"}: the released multi-plane setting unless overridden."""
    from ..backbone import DiffusionUNet

    with torch.device("meta"):
        blocks = DiffusionUNet(config).block_names
    out = {}
    for plane in planes:
        t, block = RELEASED_FEATURES[plane]
        over = (overrides or {}).get(plane) or {}
        t = int(over["timestep"]) if over.get("timestep") is not None else t
        block = over.get("block") or block
        if not 0 <= t < config.timesteps:
            raise InputError(f"--{plane}-timestep {t}: must be in 0..{config.timesteps - 1}")
        if block not in blocks:
            raise InputError(f"--{plane}-block {block}: not a block of this architecture "
                             f"(in_0..{blocks[blocks.index('mid_0') - 1]}, mid_0..mid_2, out_*, final)")
        out[plane] = {"timestep": t, "block": block}
    return out


def _check_name(name: str, force: bool) -> Path:
    check_model_id(name, "--name")
    dest = user_models_dir() / name
    if not force and dest.exists():
        raise UserError(f"a model named '{name}' already exists in {dest}; choose another --name or "
                        "pass --force to replace it (the old folder is kept as a backup)")
    return dest


def read_sha256sums(path: str | Path) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <name>`` or ``<hex> *<name>``) -> {file name: hex}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--sha256sums {path}: file not found")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise InputError(f"--sha256sums {path.name}: line {n} is not '<sha256>  <file name>'")
        out[Path(parts[1].strip().lstrip("*")).name] = parts[0].lower()
    return out


def import_official(checkpoints: dict, name: str, config: str | None = "released", force: bool = False,
                    features: dict | None = None, version: str = "1.0.0", licence: str | None = None,
                    sha256sums: str | Path | None = None, progress: bool = True, log=print):
    """Verify, convert and register published backbones. ``checkpoints``: plane -> .pt path (any
    subset of sagittal/coronal/axial); ``sha256sums``: the release's digests (a flipped byte in a
    ``.pt`` still loads: only a published digest catches it). Returns the installed ``ModelSpec``."""
    from tqdm import tqdm

    from ..backbone.checkpoints import build_model, save_backbone

    checkpoints = {p: Path(v).expanduser() for p, v in checkpoints.items() if v}
    unknown = sorted(set(checkpoints) - set(PLANES))
    if unknown:
        raise InputError(f"unknown plane(s) {unknown}; use sagittal, coronal, axial")
    if not checkpoints:
        raise InputError("no checkpoint given: pass at least one of --sagittal, --coronal, --axial")
    stray = [f"--{p}-{k}" for p, v in (features or {}).items() if p not in checkpoints
             for k, x in (v or {}).items() if x is not None]
    if stray:
        raise InputError(f"{', '.join(stray)} given for a plane without a checkpoint; pass its --PLANE file or drop it")
    dest = _check_name(name, force)
    cfg, cfg_name = resolve_config(config)
    planes = [p for p in PLANES if p in checkpoints]
    spec_features = feature_settings(planes, cfg, features)

    # 1. cheap checks first: files exist, one distinct file per plane
    for p, path in checkpoints.items():
        if not path.is_file():
            raise CheckpointError(f"--{p} {path}: checkpoint not found")
    digests = {p: sha256_file(path) for p, path in checkpoints.items()}
    if sha256sums is not None:
        published = read_sha256sums(sha256sums)
        for p in planes:
            want = published.get(checkpoints[p].name)
            if want is None:
                raise CheckpointError(f"--{p} {checkpoints[p].name}: not listed in {Path(sha256sums).name}")
            if want != digests[p]:
                raise CheckpointError(f"--{p} {checkpoints[p].name}: sha256 {digests[p][:12]}… does not match "
                                      f"{Path(sha256sums).name} ({want[:12]}…); the file is corrupt or was modified")
    seen: dict[str, str] = {}
    for p in planes:
        if digests[p] in seen:
            raise InputError(f"--{seen[digests[p]]} and --{p} are the same file ({checkpoints[p].name}, sha256 "
                             f"{digests[p][:12]}…); each plane needs its own backbone")
        seen[digests[p]] = p
    # 2. verify + convert one plane at a time (one state dict in memory) into a private staging
    # folder, removed on any failure; 3. install it in one rename (install_model re-verifies sha256)
    imported = {}
    with tempfile.TemporaryDirectory(prefix="od-import-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        rels = []
        for p in tqdm(planes, desc="import", unit="plane", disable=not progress):
            ip = imported[p] = verify_checkpoint(checkpoints[p], cfg, p, cfg_name)
            model = build_model(cfg, ip.state_dict, source=f"{ip.source.name}['ema']")
            save_backbone(model, stage / f"{p}.safetensors", provenance={
                "imported_from": "published OrthoDiffusion checkpoint", "source_file": ip.source.name,
                "source_sha256": ip.sha256, "source_step": ip.step, "weights": "ema", "plane": p,
                "config": cfg_name})
            _check_bit_exact(stage / f"{p}.safetensors", ip.state_dict)
            rels += [f"{p}.safetensors", f"{p}.json"]
            del model
            ip.state_dict = {}
        entry = {
            "id": name,
            "name": f"{name} (published OrthoDiffusion backbones, imported)",
            "version": version,
            "description": ("Published OrthoDiffusion diffusion backbones (EMA weights) imported with "
                            "`orthodiffusion import-official`; heads must be fitted with `orthodiffusion fit`."),
            "planes": {p: {"backbone": f"{p}.safetensors", **spec_features[p]} for p in planes},
            "segmentation_planes": ["sagittal"] if "sagittal" in planes else [],
            "heads": "heads",
            "preprocessing": "released",
            "input": {"depth": cfg.depth_size, "height": cfg.image_size, "width": cfg.image_size,
                      "notes": f"released preprocessing: central {cfg.depth_size} slices, each resized to "
                               f"{cfg.image_size}x{cfg.image_size}, min-max to [-1, 1]"},
            "label_sets": {"findings": "knee-8", "structures": "knee-11"},
            "inference": dict(RELEASED_INFERENCE),
            "files": [file_record(stage, r) for r in rels],
            "licence": licence or "as published with the source checkpoints (see their release); converted locally",
            "user_cache": str(dest),
            "needs_heads": True,
            "imported": {"format": "official {step, model, ema, opt}", "weights": "ema", "config": cfg_name,
                         "sources": {p: {"file": imported[p].source.name, "sha256": imported[p].sha256,
                                         "step": imported[p].step} for p in planes},
                         "sha256_checked_against": Path(sha256sums).name if sha256sums else None,
                         "orthodiffusion_version": __version__,
                         "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
            "disclaimer": DISCLAIMER,
        }
        validate_entry(entry)
        atomic_write_json(stage / MODEL_FILE, entry)
        return install_model(stage, force=force, log=log)


def _check_bit_exact(path: Path, state_dict: dict) -> None:
    from safetensors.torch import load_file

    written = load_file(str(path))
    bad = [k for k, v in state_dict.items() if k not in written or not torch.equal(written[k], v)]
    if bad or set(written) != set(state_dict):
        raise CheckpointError(f"{path.name}: converted weights differ from the checkpoint ({', '.join(bad[:3])})")
