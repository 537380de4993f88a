"""The OrthoDiffusion backbone: a guided-diffusion style 3D DDPM U-Net, its cosine schedule and
checkpoint formats (the published ``{step, model, ema, opt}`` container and our safetensors +
manifest)."""

from .config import UNetConfig
from .schedule import CosineSchedule
from .unet import BLOCK_ORDER_HELP, DiffusionUNet

__all__ = ["UNetConfig", "CosineSchedule", "DiffusionUNet", "BLOCK_ORDER_HELP"]
