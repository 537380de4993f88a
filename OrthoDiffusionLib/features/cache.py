"""On-disk feature cache. One safetensors file per (content hash, plane, backbone sha256,
timestep, block, noise seed, draw, preprocessing); written to a temporary file and renamed, so
concurrent writers of the same key cannot leave a torn file (both write identical bytes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..storage import atomic_path


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("ORTHODIFFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "orthodiffusion")
    return Path(base) / "features"


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key_digest(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def path_for(self, key: dict) -> Path:
        digest = self.key_digest(key)
        return self.root / digest[:2] / f"{digest}.safetensors"

    def get(self, key: dict):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path_for(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError):
            # A damaged entry is a miss; the recomputed value replaces it atomically.
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: dict, value: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        path = self.path_for(key)
        with atomic_path(path) as tmp:
            save_file({"features": value.contiguous()}, str(tmp),
                      metadata={"key": json.dumps(key, sort_keys=True)})
        return path
