"""What a pretraining run is asked to do: ``TrainConfig`` (every option of ``orthodiffusion pretrain``),
its validation, and the merge of preset defaults with explicit values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..planes import PLANES

LR_SCHEDULES = ("constant", "cosine")
LOSS_WEIGHTINGS = ("uniform", "min-snr")


@dataclass
class TrainConfig:
    plane: str
    data: list = field(default_factory=list)
    out: str = "pretrain-out"
    steps: int = 1000
    batch_size: int = 2  # per process
    lr: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after the warm-up: constant, or cosine down to lr * lr_min_ratio at `steps`
    lr_min_ratio: float = 0.1
    loss_weighting: str = "uniform"  # uniform (published) or min-snr: w(t) = min(SNR(t), γ) / SNR(t)
    min_snr_gamma: float = 5.0
    crop: tuple | None = None  # (D, H, W) random crop of each training volume; None = the whole model input
    volume_size: tuple | None = None  # (D, H, W) the volumes are preprocessed to; None = the model input
    channels_last: bool = False  # channels_last_3d memory format for the training convs
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.995
    ema_start: int = 0
    ema_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "none"  # none | fp16 | bf16 (CUDA only)
    grad_checkpointing: bool = False
    max_wall_s: float | None = None  # stop (checkpoint, export) once this invocation has trained this long
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    eval_every: int = 50
    eval_timesteps: tuple = (50, 200, 500, 800)
    heldout: int = 1  # volumes held out for the evaluation loss (when at least 3 are available)
    sample_every: int = 0  # 0 = only at the end
    sample_steps: int = 10
    n_samples: int = 3
    preprocessing: str = "released"
    echoes: str = "all"
    reformat: bool = True
    augment: bool = True
    threads: int | None = None
    progress: bool = True
    resume: str | None = None  # None, "auto" (out/checkpoints/latest) or a checkpoint folder
    init: str | None = None  # continued pretraining: start from this backbone's weights (fresh optimizer, step 0)
    command: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"], d["eval_timesteps"] = list(self.adam_betas), list(self.eval_timesteps)
        for key in ("crop", "volume_size"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["data"] = [str(p) for p in self.data]
        return d


def validate(cfg: TrainConfig, input_shape: tuple[int, int, int], multiple: int) -> None:
    """One line per mistake, before any data is read (``input_shape`` is the model's D, H, W)."""
    if cfg.plane not in PLANES:
        raise InputError(f"unknown plane {cfg.plane!r}")
    if cfg.optimizer not in ("adamw", "adam"):
        raise InputError(f"--optimizer must be adamw or adam, got {cfg.optimizer!r}")
    if (cfg.amp or "none").lower() not in ("none", "fp16", "bf16"):
        raise InputError(f"--amp must be none, fp16 or bf16, got {cfg.amp!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.loss_weighting not in LOSS_WEIGHTINGS:
        raise InputError(f"--loss-weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {cfg.loss_weighting!r}")
    if cfg.loss_weighting == "min-snr" and not cfg.min_snr_gamma > 0:
        raise InputError(f"--min-snr-gamma must be positive, got {cfg.min_snr_gamma}")
    if not 0.0 <= cfg.lr_min_ratio <= 1.0:
        raise InputError(f"--lr-min-ratio must be within 0..1, got {cfg.lr_min_ratio}")
    if cfg.max_wall_s is not None and not cfg.max_wall_s > 0:
        raise InputError(f"--max-wall-s must be positive, got {cfg.max_wall_s}")
    if any(v % multiple for v in input_shape):
        raise InputError(f"model input {input_shape} must be divisible by {multiple} on every axis")
    volume = tuple(cfg.volume_size or input_shape)
    if len(volume) != 3 or any(v < 1 for v in volume):
        raise InputError(f"--volume-size must be three positive sizes D,H,W, got {cfg.volume_size}")
    if cfg.crop is not None:
        crop = tuple(cfg.crop)
        if len(crop) != 3 or any(c < 1 for c in crop):
            raise InputError(f"--crop must be three positive sizes D,H,W, got {cfg.crop}")
        if any(c % multiple for c in crop):
            raise InputError(f"--crop {crop} must be divisible by {multiple} on every axis (the U-Net's downsampling)")
        if any(c > v for c, v in zip(crop, volume)):
            raise InputError(f"--crop {crop} is larger than the volumes {volume} on some axis")
    elif volume != tuple(input_shape):
        raise InputError(f"--volume-size {volume} differs from the model input {tuple(input_shape)}: give --crop too")
    if cfg.init and not Path(cfg.init).is_file():  # before the (slow) data loading
        raise InputError(f"--init: backbone not found: {cfg.init}")


def train_config_from(model_defaults: dict, **overrides) -> TrainConfig:
    """Build a TrainConfig from preset training defaults overridden by explicit (non-None) values."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in model_defaults.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    for key in ("crop", "volume_size"):  # JSON/YAML configs give lists
        if values.get(key) is not None:
            values[key] = tuple(int(v) for v in values[key])
    return TrainConfig(**values)
