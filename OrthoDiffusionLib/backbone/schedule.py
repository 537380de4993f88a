"""Cosine noise schedule (Nichol & Dhariwal 2021) as the published backbones were trained with:
s = 0.008, T = 1000, betas clipped at 0.999, buffers computed in float64 then stored float32."""

from __future__ import annotations

import math

import numpy as np
import torch


def cosine_betas(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta) for i in range(timesteps)]
    return np.asarray(betas, dtype=np.float64)


class CosineSchedule:
    """Forward-process quantities and q_sample / DDIM helpers."""

    def __init__(self, timesteps: int = 1000, s: float = 0.008):
        self.timesteps = timesteps
        betas = cosine_betas(timesteps, s)
        alphas_cumprod = np.cumprod(1.0 - betas)
        self.betas = torch.tensor(betas, dtype=torch.float32)
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float32)
        self.sqrt_alphas_cumprod = torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32)
        self.sqrt_one_minus_alphas_cumprod = torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32)

    def _gather(self, buf: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        out = buf.to(t.device)[t.long()]
        return out.reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·ε."""
        a = self._gather(self.sqrt_alphas_cumprod, t, x_start.ndim).to(x_start.dtype)
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim).to(x_start.dtype)
        return a * x_start + b * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self._gather(self.sqrt_alphas_cumprod, t, x_t.ndim)
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
        return (x_t - b * eps) / a

    @torch.no_grad()
    def ddim_sample(self, model, shape=None, steps: int = 10, generator: torch.Generator | None = None,
                    device="cpu", noise: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) sampling with a few steps, for visual checks of pretraining.
        Starts from ``noise`` when given (fixed samples across checkpoints), else draws it."""
        x = noise.to(device) if noise is not None else torch.randn(shape, generator=generator, device=device)
        ts = np.linspace(self.timesteps - 1, 0, steps).round().astype(int)
        for i, t in enumerate(ts):
            tt = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
            eps = model(x, tt).float()
            x0 = self.predict_x0(x, tt, eps).clamp(-1, 1)
            if i + 1 < len(ts):
                a_next = self.alphas_cumprod[int(ts[i + 1])].to(device)
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
            else:
                x = x0
        return x
