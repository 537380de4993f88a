"""Replay sample: a few training cases' cached features and targets stored inside a head version,
so ``orthodiffusion finetune`` can mix them with the user's corrections and keep earlier skill.

File ``replay.safetensors`` (listed with its sha256 in the head manifest, checked by
``HeadStore.verify``):

    features.<plane>   float16 [n, C, d, h, w]  (zeros where the case lacks the plane)
    present            uint8   [n, 3]           planes present (sagittal, coronal, axial)
    labels             float32 [n, K]           finding labels, NaN = unknown
    seg_targets        uint8   [n, D, H, W]     seg plane's label map on its network grid
                                                (255 = no label map / unlabelled voxel)
    annotated          uint8   [n, n_classes]   structures annotated in that case

Knee-demo size: 48 cases × (3 × 64×2×8×8 fp16 + 16×64×64 uint8) ≈ 5.5 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .planes import PLANES

REPLAY_FILE = "replay.safetensors"
NO_LABEL = 255


@dataclass
class Replay:
    features: dict          # plane -> float32 [n, C, d, h, w] or None
    present: torch.Tensor   # bool [n, 3]
    labels: torch.Tensor    # float32 [n, K] (NaN unknown)
    seg_plane: str | None
    seg_targets: torch.Tensor | None  # long [n, D, H, W], -1 = ignore
    annotated: torch.Tensor | None    # bool [n, n_classes]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def seg_index(self) -> np.ndarray:
        """Cases that carry a label map."""
        if self.seg_targets is None:
            return np.arange(0)
        return np.flatnonzero((self.seg_targets >= 0).flatten(1).any(1).numpy())


def choose_replay_cases(labels: np.ndarray, has_seg: np.ndarray, n_max: int, seed: int) -> np.ndarray:
    """Up to ``n_max`` case indices, stratified on the finding labels and on having a label map."""
    from .stratify import label_fraction_subset

    n = len(labels)
    if n <= n_max:
        return np.arange(n)
    strata = np.concatenate([np.asarray(labels, np.float32), has_seg[:, None].astype(np.float32)], 1)
    keep = label_fraction_subset(strata, min(1.0, n_max / n), seed)
    rng = np.random.default_rng(seed)
    if len(keep) > n_max:
        keep = rng.choice(keep, n_max, replace=False)
    elif len(keep) < n_max:  # top up at random from the rest
        rest = np.setdiff1d(np.arange(n), keep)
        keep = np.concatenate([keep, rng.choice(rest, n_max - len(keep), replace=False)])
    return np.sort(keep)


def build_replay(features: dict, present: torch.Tensor, labels: np.ndarray, index: np.ndarray,
                 seg_plane: str | None = None, seg_targets: torch.Tensor | None = None,
                 annotated: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Tensors of the replay file for the cases ``index`` (``seg_targets``/``annotated`` are over
    all cases, -1 where a case has no label map)."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    out = {"present": present[index].to(torch.uint8),
           "labels": torch.as_tensor(np.asarray(labels, np.float32))[index]}
    for plane in PLANES:
        x = features.get(plane)
        if x is not None:
            out[f"features.{plane}"] = x[index].to(torch.float16)
    if seg_plane is not None and seg_targets is not None:
        t = seg_targets[index].clone()
        if int(t.max()) >= NO_LABEL:
            raise ValueError("label values must be below 255 to fit the replay file")
        t[t < 0] = NO_LABEL
        out["seg_targets"] = t.to(torch.uint8)
        out["annotated"] = annotated[index].to(torch.uint8)
    return out


def replay_metadata(seg_plane: str | None, n: int, seed: int) -> dict:
    return {"file": REPLAY_FILE, "cases": int(n), "seed": int(seed), "seg_plane": seg_plane}


def load_replay(path: str | Path, seg_plane: str | None = None) -> Replay:
    from safetensors.torch import load_file

    t = load_file(str(path))
    feats = {p: (t[f"features.{p}"].float() if f"features.{p}" in t else None) for p in PLANES}
    targets = None
    if "seg_targets" in t:
        targets = t["seg_targets"].long()
        targets[targets == NO_LABEL] = -1
    return Replay(feats, t["present"].bool(), t["labels"].float(), seg_plane if targets is not None else None,
                  targets, t["annotated"].bool() if "annotated" in t else None)
