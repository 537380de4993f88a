"""Self-supervised DDPM pretraining of the per-plane backbones (single process or torchrun/DDP).

Entry points: ``run_pretraining(TrainConfig, UNetConfig)`` and ``orthodiffusion pretrain``.
See docs/pretraining.md.
"""

from .ema import EMA
from .presets import PRESETS, load_config
from .pretrain import TrainConfig, run_pretraining, train_config_from

__all__ = ["EMA", "PRESETS", "TrainConfig", "load_config", "run_pretraining", "train_config_from"]
