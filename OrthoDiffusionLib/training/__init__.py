"""Self-supervised DDPM pretraining of the per-plane backbones (single process or torchrun/DDP).

Entry points: ``run_pretraining(TrainConfig, UNetConfig)`` and ``orthodiffusion pretrain``.
Layout: ``config`` (what a run is asked to do), ``data`` (volumes, augmentation, batch order),
``loop`` (the steps), ``checkpoints`` (save/restore, export, --init), ``heldout``, ``runlog``,
``plots``, ``rng``, ``ema``, ``distributed``, ``presets``; ``probe`` judges the result.
See docs/pretraining.md.
"""

from .config import TrainConfig, train_config_from
from .ema import EMA
from .loop import run_pretraining
from .presets import PRESETS, load_config

__all__ = ["EMA", "PRESETS", "TrainConfig", "load_config", "run_pretraining", "train_config_from"]
