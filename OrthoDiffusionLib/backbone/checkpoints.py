"""Load and save backbones: the published container (read-only, weights_only) and our own format
(``<name>.safetensors`` + ``<name>.json`` manifest with config, sha256 and provenance)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import torch

from .. import DISCLAIMER, __version__
from ..errors import CheckpointError
from ..storage import atomic_path, atomic_write_json, sha256_file
from .config import UNetConfig
from .official import export_official, infer_config, load_official_state_dict, read_sidecar, sidecar_path
from .unet import DiffusionUNet

MANIFEST_FORMAT = "orthodiffusion-backbone"


def strict_check(model: torch.nn.Module, sd: dict, source: str) -> None:
    """Refuse any missing, unexpected or mis-shaped key, listing each one."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in sorted(set(sd) & set(expected)) if tuple(sd[k].shape) != tuple(expected[k].shape)]
    wrong_dtype = [f"{k}: {sd[k].dtype}" for k in sorted(set(sd) & set(expected))
                   if not sd[k].is_floating_point()]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("mis-shaped keys", misshaped), ("non-float tensors", wrong_dtype)):
        if items:
            shown = "; ".join(items[:6]) + (f"; … ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the backbone architecture — " + " | ".join(problems))


def build_model(config: UNetConfig, sd: dict | None = None, source: str = "weights",
                use_checkpoint: bool = False) -> DiffusionUNet:
    if sd is None:
        return DiffusionUNet(config, use_checkpoint=use_checkpoint).eval()
    # Built on the meta device and given the checkpoint's tensors: the random initialisation that
    # the weights would overwrite costs ~0.4 s per released-size backbone on a CPU.
    with torch.device("meta"):
        model = DiffusionUNet(config, use_checkpoint=use_checkpoint)
    strict_check(model, sd, source)
    expected = model.state_dict()
    # Own, freshly allocated copies: a tensor read from a file may sit at an odd address, and
    # oneDNN's kernel choice (so the last bit of a conv) depends on the weights' alignment.
    model.load_state_dict({k: v.to(dtype=expected[k].dtype, copy=True, memory_format=torch.contiguous_format)
                           for k, v in sd.items()}, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the state dict does not carry; cannot happen with strict loading
        raise CheckpointError(f"{source}: no values for {', '.join(left[:4])}")
    return model.eval()


def load_official(path: str | Path, config: UNetConfig | None = None, which: str = "ema") -> tuple[DiffusionUNet, dict]:
    """Load a published ``{step, model, ema, opt}`` checkpoint (EMA weights by default).

    The architecture comes from ``config`` if given, else from the ``<name>.pt.json`` sidecar that
    ``orthodiffusion export`` writes, else it is inferred from the weight shapes with the published
    defaults (GroupNorm 32 groups, 16×256×256), which only fits published-family models."""
    unet_sd, buffers, info = load_official_state_dict(path, which)
    source = f"{Path(path).name}['{which}']"
    config_source = "given"
    if config is None:
        config, config_source = read_sidecar(path), "sidecar"
    if config is None:
        config, config_source = infer_config(unet_sd), "inferred"
        try:
            model = build_model(config, unet_sd, source=source)
        except ValueError as exc:  # e.g. GroupNorm(32, 16): a non-published config such as knee-demo
            raise CheckpointError(
                f"{Path(path).name}: the architecture cannot be inferred from the weights ({exc}); it needs its "
                f"config sidecar {sidecar_path(path).name} next to it (written by `orthodiffusion export`), "
                "or export the model again") from None
    else:
        model = build_model(config, unet_sd, source=source)
    info.update({"format": "official", "config": config.to_dict(), "config_source": config_source,
                 "buffers": sorted(buffers)})
    return model, info


def save_backbone(model: DiffusionUNet, path: str | Path, provenance: dict | None = None,
                  extra: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its manifest ``path.with_suffix('.json')`` atomically."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": MANIFEST_FORMAT})
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": 1, "weights": path.name, "sha256": sha256_file(path),
        "config": model.config.to_dict(), "n_parameters": sum(p.numel() for p in model.parameters()),
        "software": {"orthodiffusion": __version__, "torch": torch.__version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance or {}, "disclaimer": DISCLAIMER,
    }
    manifest.update(extra or {})
    atomic_write_json(path.with_suffix(".json"), manifest)
    return path


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    manifest_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not manifest_path.is_file():
        raise CheckpointError(f"no manifest {manifest_path.name} next to the weights; our backbones are "
                              "<name>.safetensors + <name>.json (use `orthodiffusion convert` for .pt files)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{manifest_path.name} is not an OrthoDiffusion backbone manifest")
    return manifest


def load_safetensors_backbone(path: str | Path, verify: bool = True) -> tuple[DiffusionUNet, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path)
    weights = path.with_name(manifest["weights"]) if path.suffix == ".json" else path
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} listed in the manifest is missing")
    if verify:
        digest = sha256_file(weights)
        if digest != manifest["sha256"]:
            raise CheckpointError(f"{weights.name}: sha256 {digest[:12]}… does not match the manifest "
                                  f"({manifest['sha256'][:12]}…); the file is corrupt or was modified")
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights.name}: unreadable safetensors file ({exc})") from None
    model = build_model(UNetConfig.from_dict(manifest["config"]), sd, source=weights.name)
    return model, manifest


def load_backbone(path: str | Path, which: str = "ema") -> tuple[DiffusionUNet, dict]:
    """Load either format, chosen by suffix (.pt/.pth = published container)."""
    path = Path(path)
    if path.suffix in {".pt", ".pth"}:
        return load_official(path, which=which)
    if path.suffix in {".safetensors", ".json"}:
        return load_safetensors_backbone(path)
    raise CheckpointError(f"{path.name}: unknown backbone format (expected .pt/.pth or .safetensors/.json)")


def convert(src: str | Path, dst: str | Path, which: str = "ema", step: int = 0) -> Path:
    """Convert between formats: .pt → .safetensors(+.json), or .safetensors/.json → .pt container."""
    src, dst = Path(src), Path(dst)
    model, info = load_backbone(src, which=which)
    if dst.suffix == ".safetensors":
        return save_backbone(model, dst, provenance={"converted_from": src.name, "source_format": info.get("format", "orthodiffusion"),
                                                     "source_sha256": sha256_file(src), "source_step": info.get("step")})
    if dst.suffix in {".pt", ".pth"}:
        return export_official(model.state_dict(), dst, step=int(info.get("step") or step), config=model.config)
    raise CheckpointError(f"{dst.name}: output must end in .safetensors or .pt")
