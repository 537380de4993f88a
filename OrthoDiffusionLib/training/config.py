"""What a pretraining run is asked to do: ``TrainConfig`` (every option of ``orthodiffusion pretrain``),
its validation, and the merge of preset defaults with explicit values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..planes import PLANES


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
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.995
    ema_start: int = 0
    ema_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "none"  # none | fp16 | bf16 (CUDA only)
    grad_checkpointing: bool = False
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
    if any(v % multiple for v in input_shape):
        raise InputError(f"model input {input_shape} must be divisible by {multiple} on every axis")
    if cfg.init and not Path(cfg.init).is_file():  # before the (slow) data loading
        raise InputError(f"--init: backbone not found: {cfg.init}")


def train_config_from(model_defaults: dict, **overrides) -> TrainConfig:
    """Build a TrainConfig from preset training defaults overridden by explicit (non-None) values."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in model_defaults.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    return TrainConfig(**values)
