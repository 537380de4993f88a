"""Plane order used by every multi-plane head: index 0 sagittal, 1 coronal, 2 axial.

(The official code orders planes axial, sagittal, coronal internally; here the order is fixed and
named so plane weights [B, K, 3] always read sagittal, coronal, axial.)
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..planes import PLANES


def next_plane(plane: str) -> str:
    """Cyclic successor (sagittal -> coronal -> axial -> sagittal), used by cross-attention fusion."""
    return PLANES[(PLANES.index(plane) + 1) % len(PLANES)]


def plane_presence(features: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 3] saying which planes each case has.

    A plane missing from ``features`` (or given as None) is absent for every case; ``present``
    (bool [B, 3]) can additionally mark planes absent per case. Every case needs one plane.
    """
    unknown = set(features) - set(PLANES)
    if unknown:
        raise ValueError(f"unknown plane(s) {sorted(unknown)}; expected some of {PLANES}")
    given = [features.get(p) for p in PLANES]
    batch = {t.shape[0] for t in given if t is not None}
    if not batch and present is None:
        raise ValueError("at least one plane's features are required")
    if len(batch) > 1:
        raise ValueError(f"planes have different batch sizes: {sorted(batch)}")
    if present is None:
        n = batch.pop()
        device = next(t.device for t in given if t is not None)
        mask = torch.ones(n, len(PLANES), dtype=torch.bool, device=device)
    else:
        mask = present.to(torch.bool).clone()
        if mask.dim() != 2 or mask.shape[1] != len(PLANES) or (batch and mask.shape[0] != next(iter(batch))):
            raise ValueError(f"present must be bool [B, 3], got {tuple(present.shape)}")
    for i, t in enumerate(given):
        if t is None:
            mask[:, i] = False
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every case needs at least one plane (a case has none present)")
    return mask
