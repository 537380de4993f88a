"""What one step optimises: the learning rate at a step and the (optionally weighted) ε-MSE.

- Learning rate: linear warm-up over ``warmup_steps``, then constant (published) or a cosine decay
  from ``lr`` to ``lr * lr_min_ratio`` at ``steps`` (so ``--steps`` must stay the same on resume for
  an exact continuation).
- Loss: ``uniform`` is the published mean ε-MSE over voxels and batch. ``min-snr`` (Hang et al.
  2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") weights each sample's ε-MSE
  by ``min(SNR(t), γ) / SNR(t)`` with ``SNR(t) = ᾱ_t / (1 − ᾱ_t)``: the nearly noise-free timesteps,
  whose ε targets are hard to predict and whose gradients conflict with the others', count less;
  t with SNR ≤ γ keep weight 1. The weights are not renormalised, so the logged training loss is
  smaller than the uniform one; the held-out loss (``heldout.py``) is always the unweighted ε-MSE.
"""

from __future__ import annotations

import math

import torch

from ..backbone.schedule import CosineSchedule


def lr_at(cfg, step: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based)."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
        floor = cfg.lr_min_ratio
        return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return cfg.lr


def snr(schedule: CosineSchedule, t: torch.Tensor) -> torch.Tensor:
    """ᾱ_t / (1 − ᾱ_t) from the stored square roots (1 − ᾱ_t in float32 would lose the small t)."""
    a = schedule.sqrt_alphas_cumprod.to(t.device)[t].double()
    b = schedule.sqrt_one_minus_alphas_cumprod.to(t.device)[t].double()
    return (a / b) ** 2


def min_snr_weights(schedule: CosineSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR(t), γ) / SNR(t)`` per sample (ε-prediction form), float32."""
    s = snr(schedule, t)
    return (torch.clamp(s, max=gamma) / s).float()


def diffusion_loss(eps: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: CosineSchedule,
                   weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    if weighting == "uniform":  # exactly the published (and pre-weighting) reduction
        return torch.nn.functional.mse_loss(eps.float(), noise)
    per_sample = ((eps.float() - noise) ** 2).mean(dim=tuple(range(1, eps.ndim)))
    return (min_snr_weights(schedule, t, gamma) * per_sample).mean()
