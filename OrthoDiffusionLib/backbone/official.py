"""The published checkpoint container: ``torch.save({step, model, ema, opt})`` whose state dicts
carry ``denoise_fn.`` (or ``denoise_fn.module.`` from DDP) prefixed U-Net weights plus the 13
diffusion buffers. Read only with ``torch.load(weights_only=True)``: no foreign code ever runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from .config import UNetConfig
from .schedule import cosine_betas

CONTAINER_KEYS = ("step", "model", "ema", "opt")
PREFIXES = ("denoise_fn.module.", "denoise_fn.")
BUFFER_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "posterior_mean_coef3",
)


def diffusion_buffers(timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """The buffers the reference GaussianDiffusion stores beside the U-Net (float64 maths, float32 storage)."""
    betas = cosine_betas(timesteps)
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
    values = {
        "betas": betas, "alphas_cumprod": acp, "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": np.sqrt(acp), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
        "log_one_minus_alphas_cumprod": np.log(1.0 - acp), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp), "posterior_mean_coef2": coef2,
        "posterior_mean_coef3": 1.0 - coef2,
    }
    return {k: torch.tensor(values[k], dtype=torch.float32) for k in BUFFER_KEYS}


def read_container(path: str | Path) -> dict:
    """torch.load with weights_only=True and precise errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name}: refused to load: the file contains pickled objects that are not plain tensors "
            f"(weights_only loading forbids running code from a checkpoint). Detail: {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        # garbage bytes fail anywhere inside the (restricted) unpickler
        raise CheckpointError(f"{path.name}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: expected a dict with keys {list(CONTAINER_KEYS)}, got {type(obj).__name__}")
    return obj


def split_state_dict(sd: dict, source: str = "checkpoint") -> tuple[dict, dict]:
    """Strip ``denoise_fn.[module.]`` prefixes; return (unet weights, diffusion buffers).
    Every value must be a tensor; anything else is named in the error."""
    unet, buffers, bad = {}, {}, []
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            bad.append(f"{key} ({type(value).__name__})")
            continue
        for prefix in PREFIXES:
            if key.startswith(prefix):
                unet[key[len(prefix):]] = value
                break
        else:
            if key in BUFFER_KEYS:
                buffers[key] = value
            else:
                unet[key] = value  # reported as unexpected by the strict check
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(bad[:5])}"
                              + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    return unet, buffers


def load_official_state_dict(path: str | Path, which: str = "ema") -> tuple[dict, dict, dict]:
    """Return (unet state dict, diffusion buffers, info) from a published container."""
    obj = read_container(path)
    name = Path(path).name
    missing = [k for k in ("model", "ema") if k not in obj]
    if which not in obj:
        raise CheckpointError(f"{name}: no '{which}' weights in the checkpoint (top-level keys: {sorted(obj)}); "
                              f"expected {list(CONTAINER_KEYS)}")
    sd = obj[which]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{name}: '{which}' is a {type(sd).__name__}, expected a state dict")
    unet, buffers = split_state_dict(sd, f"{name}['{which}']")
    info = {"step": obj.get("step"), "which": which, "container_keys": sorted(obj), "missing_container_keys": missing}
    return unet, buffers, info


def infer_config(unet_sd: dict, image_size: int = 256, depth_size: int = 16) -> UNetConfig:
    """Recover the architecture from weight shapes (the published files carry no config)."""
    try:
        mc = unet_sd["time_embed.0.weight"].shape[1]
        in_ch = unet_sd["input_blocks.0.0.weight"].shape[1]
        out_ch = unet_sd["out.2.weight"].shape[0]
        n_in = 1 + max(int(k.split(".")[1]) for k in unet_sd if k.startswith("input_blocks."))
        n_down = sum(1 for i in range(n_in) if f"input_blocks.{i}.0.op.weight" in unet_sd)
        n_levels = n_down + 1
        nrb = (n_in - 1 - n_down) // n_levels
        mults, ds_attn, idx, ds = [], [], 1, 1
        for level in range(n_levels):
            for _ in range(nrb):
                mults_ch = unet_sd[f"input_blocks.{idx}.0.in_layers.2.weight"].shape[0]
                if f"input_blocks.{idx}.1.qkv.weight" in unet_sd and ds not in ds_attn:
                    ds_attn.append(ds)
                idx += 1
            mults.append(mults_ch // mc)
            if level < n_levels - 1:
                idx += 1
                ds *= 2
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"cannot infer the U-Net architecture from the weights (missing {exc}); "
                              "is this an OrthoDiffusion/guided-diffusion 3D U-Net checkpoint?") from None
    if not ds_attn:
        ds_attn = [2 ** n_down]  # attention only in the middle block (always present)
    return UNetConfig(image_size=image_size, depth_size=depth_size, num_channels=mc, num_res_blocks=nrb,
                      channel_mult=tuple(mults), attention_resolutions=tuple(image_size // d for d in ds_attn),
                      in_channels=in_ch, out_channels=out_ch)


SIDECAR_FORMAT = "orthodiffusion-official-config"
REFERENCE_NORM_GROUPS = 32  # the reference code hard-codes GroupNorm(32, ·)


def sidecar_path(path: str | Path) -> Path:
    """The config sidecar of a published-format file: ``<name>.pt`` → ``<name>.pt.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(pt_path: str | Path, config: UNetConfig, step: int = 0) -> Path:
    """Record the architecture next to an exported ``.pt`` (the container itself carries no config,
    and GroupNorm groups / input size cannot be inferred from weight shapes)."""
    from .. import DISCLAIMER
    from ..storage import atomic_write_json, sha256_file

    pt_path = Path(pt_path)
    runs_in_reference = config.norm_groups == REFERENCE_NORM_GROUPS
    return atomic_write_json(sidecar_path(pt_path), {
        "format": SIDECAR_FORMAT, "weights": pt_path.name, "sha256": sha256_file(pt_path), "step": int(step),
        "config": config.to_dict(), "runs_in_reference_code": runs_in_reference,
        "note": ("published architecture family" if runs_in_reference else
                 f"norm_groups={config.norm_groups}: the reference code hard-codes {REFERENCE_NORM_GROUPS} GroupNorm "
                 "groups, so these weights run only in OrthoDiffusionLib"),
        "disclaimer": DISCLAIMER})


def read_sidecar(pt_path: str | Path) -> UNetConfig | None:
    """The config from ``<name>.pt.json`` when present (its sha256 must match the .pt), else None."""
    import json

    from ..storage import sha256_file

    pt_path, side = Path(pt_path), sidecar_path(pt_path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}")
        config = UNetConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{side.name}: not a valid config sidecar ({exc}); re-export the model or delete "
                              "the file") from None
    if meta.get("sha256") != sha256_file(pt_path):
        raise CheckpointError(f"{side.name} describes another file than {pt_path.name} (sha256 differs); re-export "
                              "the model or delete the stale sidecar")
    return config


def export_official(unet_sd: dict, path: str | Path, step: int = 0, model_sd: dict | None = None,
                    config: UNetConfig | None = None) -> Path:
    """Write our weights in the published container so the reference code can load them; with
    ``config``, also the ``<name>.pt.json`` sidecar that lets ``load_official`` rebuild the model."""
    from ..storage import atomic_path

    buffers = diffusion_buffers()

    def prefixed(sd):
        out = dict(buffers)
        out.update({f"denoise_fn.{k}": v.detach().cpu().contiguous() for k, v in sd.items()})
        return out

    container = {"step": int(step), "model": prefixed(model_sd or unet_sd), "ema": prefixed(unet_sd), "opt": {}}
    with atomic_path(path) as tmp:
        torch.save(container, tmp)
    if config is not None:
        write_sidecar(path, config, step)
    else:
        sidecar_path(path).unlink(missing_ok=True)  # a sidecar of an earlier export would be stale
    return Path(path)
