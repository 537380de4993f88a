"""On-disk feature cache. One safetensors file per (content hash, plane, backbone sha256,
timestep, block, noise seed, draw, preprocessing); written to a temporary file and renamed, so
concurrent writers of the same key cannot leave a torn file (both write identical bytes)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
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
        self.disabled = False  # set when the folder cannot be written: then entries are not stored

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

    def put(self, key: dict, value: torch.Tensor) -> Path | None:
        """Store one entry; on a read-only, forbidden or full cache folder warn once and go on
        without caching (the computation does not need the cache)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        if self.disabled:
            return None
        path = self.path_for(key)
        try:
            with atomic_path(path) as tmp:
                save_file({"features": value.contiguous()}, str(tmp),
                          metadata={"key": json.dumps(key, sort_keys=True)})
        except (OSError, SafetensorError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS,
                                                                 errno.ENOSPC, errno.EDQUOT):
                raise
            self.disabled = True
            why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc).splitlines()[0]
            logging.getLogger("orthodiffusion").warning(
                f"warning: feature cache {self.root} is not writable ({why}); continuing without caching")
            return None
        return path
