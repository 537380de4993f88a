"""Exponential moving average of model weights (what downstream feature extraction uses).

Rule, applied after optimizer step ``step`` (1-based):

* ``step <= start_step``: the EMA is reset to a copy of the weights (as the published trainer does
  before ``step_start_ema``), so the early, fast-changing weights are not averaged in;
* otherwise, every ``update_every`` steps: ``ema = decay * ema + (1 - decay) * weights``.

Buffers (none in the diffusion U-Net) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.995, start_step: int = 0, update_every: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.start_step, self.update_every = float(decay), int(start_step), max(1, int(update_every))
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        src = model.state_dict()
        if step <= self.start_step:
            for k, v in self.model.state_dict().items():
                v.copy_(src[k])
            return
        if step % self.update_every:
            return
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                v.lerp_(src[k].to(v.dtype), 1.0 - self.decay)  # v + (1-d)(s - v) = d v + (1-d) s
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd, strict=True)

    def to_dict(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step, "update_every": self.update_every}
