"""Feature extraction from a diffusion backbone.

Noise is drawn from a generator seeded by (case content hash, plane, seed, draw index), on the CPU,
so the same case gives the same features on any device and in any process (the published code
drew fresh noise each pass; its features were not reproducible).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..backbone.schedule import CosineSchedule


def noise_seed(case_hash: str, plane: str, seed: int, draw: int) -> int:
    digest = hashlib.sha256(f"{case_hash}|{plane}|{int(seed)}|{int(draw)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def draw_noise(shape, case_hash: str, plane: str, seed: int, draw: int) -> torch.Tensor:
    """The seeded noise of one (case, plane, seed, draw), on the CPU."""
    g = torch.Generator(device="cpu").manual_seed(noise_seed(case_hash, plane, seed, draw))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def noised_input(volume, case_hash: str, plane: str, seed: int, t: int, schedule: CosineSchedule,
                 draw: int = 0) -> torch.Tensor:
    """[1, 1, D, H, W] q_sample of a [D, H, W] network input at step ``t`` with the very noise the
    feature path draws for (case, plane, seed, draw): what Stage-I fine-tuning trains on."""
    x0 = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    x0 = x0[None] if x0.ndim == 3 else x0
    noise = draw_noise(x0.shape, case_hash, plane, seed, draw)
    return schedule.q_sample(x0[None], torch.tensor([int(t)]), noise[None])


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to take: timesteps × blocks, noise seed, and K noise draws."""

    timesteps: tuple[int, ...] = (100,)
    blocks: tuple[str, ...] = ("mid_2",)
    seed: int = 0
    n_draws: int = 1
    preprocessing: str = "released"  # part of the cache key: how the volume was normalised

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.n_draws < 1:
            raise ValueError("n_draws must be >= 1")

    def to_dict(self) -> dict:
        return {"timesteps": list(self.timesteps), "blocks": list(self.blocks), "seed": self.seed,
                "n_draws": self.n_draws, "preprocessing": self.preprocessing}


class FeatureExtractor:
    """Runs a backbone to named blocks. Results: ``{(t, block): tensor [K, C, d, h, w]}`` with one
    row per noise draw (K = n_draws); average them with ``.mean(0)``, their spread is ``.std(0)``."""

    def __init__(self, model, device: str | torch.device = "cpu", backbone_sha256: str = "unknown",
                 schedule: CosineSchedule | None = None, cache=None, max_batch: int = 4):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.backbone_sha256 = backbone_sha256
        self.schedule = schedule or CosineSchedule(model.config.timesteps)
        self.cache = cache
        self.max_batch = max(1, int(max_batch))

    def _check(self, spec: FeatureSpec):
        for b in spec.blocks:
            self.model.block_index(b)
        for t in spec.timesteps:
            if not 0 <= t < self.schedule.timesteps:
                raise ValueError(f"timestep {t} outside [0, {self.schedule.timesteps - 1}]")

    def _noise(self, shape, case_hash, plane, seed, draw) -> torch.Tensor:
        return draw_noise(shape, case_hash, plane, seed, draw)

    @torch.inference_mode()
    def _compute(self, x0: torch.Tensor, jobs: list[tuple[int, int]], spec: FeatureSpec, case_hash, plane):
        """Forward the (timestep, draw) jobs in batches; return {(t, draw, block): tensor}."""
        out = {}
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            ts = torch.tensor([t for t, _ in chunk], dtype=torch.long)
            noise = torch.stack([self._noise(x0.shape, case_hash, plane, spec.seed, d) for _, d in chunk])
            xt = self.schedule.q_sample(x0.expand(len(chunk), *x0.shape), ts, noise)
            _, got = self.model(xt.to(self.device), ts.to(self.device), taps=spec.blocks)
            for i, (t, d) in enumerate(chunk):
                for b in spec.blocks:
                    out[(t, d, b)] = got[b][i].detach().to("cpu", torch.float32).clone()
        return out

    def extract(self, volume, case_hash: str, plane: str, spec: FeatureSpec, progress=None) -> dict:
        """``volume``: [D, H, W] (or [1, D, H, W]) float array already normalised to [-1, 1]."""
        self._check(spec)
        x0 = torch.as_tensor(np.asarray(volume, dtype=np.float32))
        if x0.ndim == 3:
            x0 = x0[None]
        self.model.check_input_shape(x0.shape)
        keys = [(t, d, b) for t in spec.timesteps for d in range(spec.n_draws) for b in spec.blocks]
        found = {}
        for t, d, b in keys if self.cache is not None else ():
            hit = self.cache.get(self._key(case_hash, plane, spec, t, b, d))
            if hit is None:
                break
            found[(t, d, b)] = hit
        if len(found) < len(keys):
            # Recompute the whole request in its canonical batches, not just the missing part:
            # batch composition changes the last bits (oneDNN), so values must not depend on which
            # entries another process happened to cache first.
            jobs = [(t, d) for t in spec.timesteps for d in range(spec.n_draws)]
            found = self._compute(x0, jobs, spec, case_hash, plane)
            if self.cache is not None:
                for (t, d, b), value in found.items():
                    self.cache.put(self._key(case_hash, plane, spec, t, b, d), value)
        if progress is not None:
            progress.update(1)
        return {(t, b): torch.stack([found[(t, d, b)] for d in range(spec.n_draws)])
                for t in spec.timesteps for b in spec.blocks}

    def _key(self, case_hash, plane, spec: FeatureSpec, t, block, draw) -> dict:
        return cache_key(case_hash, plane, self.backbone_sha256, spec, t, block, draw)


def cache_key(case_hash: str, plane: str, backbone_sha256: str, spec: FeatureSpec, t, block, draw) -> dict:
    """Feature-cache key of one (timestep, block, draw); readers without a backbone use it too."""
    return {"content": case_hash, "plane": plane, "backbone": backbone_sha256, "t": int(t),
            "block": block, "seed": int(spec.seed), "draw": int(draw), "preprocessing": spec.preprocessing}
