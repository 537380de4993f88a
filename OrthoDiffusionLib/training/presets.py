"""Named model + training presets for ``orthodiffusion pretrain --config NAME``; a JSON/YAML file
may be given instead: either a flat ``UNetConfig`` dict or ``{"model": {...}, "train": {...}}``."""

from __future__ import annotations

import json
from pathlib import Path

from ..backbone.config import UNetConfig
from ..errors import InputError

PRESETS: dict[str, dict] = {
    # CPU-sized demo backbones shipped in Resources/Models/knee-demo (2.09 M parameters each):
    # 16x64x64 input, 4 levels, attention at the lowest level (2x8x8) and in the middle block.
    "knee-demo": {
        "model": dict(image_size=64, depth_size=16, num_channels=16, channel_mult=(1, 2, 2, 4),
                      attention_resolutions=(8,), num_res_blocks=1, norm_groups=8),
        "train": dict(lr=3e-4, batch_size=2, warmup_steps=20, ema_decay=0.995, ema_start=100, grad_clip=1.0),
    },
    # the knee-demo architecture with what bench/pretrain.md measured to converge faster on the CPU:
    # random 16x32x32 crops at batch 8 (the voxels of batch 2 of whole inputs); same architecture, so
    # `--init` from the knee-demo backbones works
    "knee-demo-crops": {
        "model": dict(image_size=64, depth_size=16, num_channels=16, channel_mult=(1, 2, 2, 4),
                      attention_resolutions=(8,), num_res_blocks=1, norm_groups=8),
        "train": dict(lr=3e-4, batch_size=8, warmup_steps=20, ema_decay=0.995, ema_start=100, grad_clip=1.0,
                      crop=(16, 32, 32)),
    },
    # for unit tests: 8x16x16 input, 2 levels (about 30 k parameters)
    "tiny": {
        "model": dict(image_size=16, depth_size=8, num_channels=8, channel_mult=(1, 2),
                      attention_resolutions=(8,), num_res_blocks=1, norm_groups=4),
        "train": dict(lr=2e-3, batch_size=2, warmup_steps=0, ema_decay=0.9, ema_start=0, grad_clip=1.0),
    },
    # the published architecture (34.5 M parameters, 16x256x256); GPU only in practice
    "released": {
        "model": UNetConfig.released().to_dict(),
        "train": dict(lr=1e-4, batch_size=10, warmup_steps=0, ema_decay=0.995, ema_start=2000, grad_clip=1.0),
    },
}


def load_config(spec: str) -> tuple[UNetConfig, dict]:
    """(model config, training defaults) from a preset name or a .json/.yaml file."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        return UNetConfig.from_dict(preset["model"]), dict(preset["train"])
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            import yaml
        except ImportError:
            raise InputError(f"{path.name}: reading YAML needs PyYAML (pip install pyyaml); or use JSON") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path.name}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name}: expected a mapping")
    if "model" in data:
        model, train = data["model"], data.get("train", {})
    elif "config" in data and isinstance(data["config"], dict):  # a backbone manifest: reuse its architecture
        model, train = data["config"], {}
    else:
        model, train = data, {}
    try:
        return UNetConfig.from_dict(model), dict(train or {})
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path.name}: invalid model config ({exc})") from None
