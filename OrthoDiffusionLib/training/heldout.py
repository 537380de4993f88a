"""The held-out loss: ε-MSE of the EMA model on fixed volumes at fixed t with fixed noise, so it is
comparable across steps and across runs (whatever their loss weighting, crops or schedule)."""

from __future__ import annotations

import numpy as np
import torch

from ..backbone.schedule import CosineSchedule
from .rng import rank_seed


class HeldOut:
    def __init__(self, volumes: list[np.ndarray], timesteps, seed: int, split: str):
        self.split = split
        self.timesteps = tuple(int(t) for t in timesteps)
        g = torch.Generator().manual_seed(rank_seed(seed, 0, 99))
        x0 = torch.stack([torch.from_numpy(v) for v in volumes])[:, None]
        self.x0 = x0.repeat_interleave(len(self.timesteps), 0)
        self.t = torch.tensor(list(self.timesteps) * len(volumes), dtype=torch.long)
        self.noise = torch.randn(self.x0.shape, generator=g)

    @torch.no_grad()
    def evaluate(self, model, schedule: CosineSchedule, device, max_batch: int = 4) -> dict:
        per = torch.zeros(len(self.t))
        for s in range(0, len(self.t), max_batch):
            x0, t, n = (a[s:s + max_batch].to(device) for a in (self.x0, self.t, self.noise))
            eps = model(schedule.q_sample(x0, t, n), t)
            per[s:s + max_batch] = ((eps.float() - n) ** 2).mean(dim=(1, 2, 3, 4)).cpu()
        out = {"heldout_loss": float(per.mean())}
        for ts in self.timesteps:
            out[f"heldout_t{ts}"] = float(per[self.t == ts].mean())
        return out
