"""Diagnosis heads on per-plane feature maps: per-plane experts, the MPAE gate (label-level
fusion, whose weights explain which plane drove each label) and feature-level fusion baselines.

All multi-plane heads take ``features: dict[plane -> Tensor[B, C_p, d, h, w] | None]`` and an
optional ``present: bool [B, 3]`` in the fixed plane order (sagittal, coronal, axial; see planes.py).

Missing planes
- MPAE (label level): the absent plane's expert logit is zeroed and its gate logit set to -inf, so
  the softmax renormalises over the planes that exist (its weight is exactly 0).
- Feature level: the absent plane's pooled vector is a zero vector and a 3-d presence indicator is
  appended to the fused vector, so the head can tell "absent" from "zero features".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .planes import PLANES, next_plane, plane_presence
from .pooling import SAPPooling, largest_divisor_at_most, tokens
from .registry import register_head


@dataclass
class DiagnosisOutput:
    logits: torch.Tensor  # [B, K] fused logits
    expert_logits: torch.Tensor | None = None  # [B, K, 3] per-plane expert logits (0 where absent)
    plane_weights: torch.Tensor | None = None  # [B, K, 3] MPAE weights g_{p,k}, sum 1 over planes
    # False when a stacking MLP mixes labels after the gate: the weights then no longer explain
    # the final logit and must not be shown as explanations.
    weights_are_explanations: bool = False


def _per_plane_channels(in_channels: int | Sequence[int]) -> list[int]:
    if isinstance(in_channels, int):
        return [in_channels] * len(PLANES)
    channels = [int(c) for c in in_channels]
    if len(channels) != len(PLANES):
        raise ValueError(f"in_channels needs one value per plane {PLANES}, got {channels}")
    return channels


@register_head("plane_expert")
class PlaneExpert(nn.Module):
    """One plane's expert: SAP -> Linear(2C -> K)."""

    def __init__(self, in_channels: int, n_labels: int, num_heads: int | None = None):
        super().__init__()
        self.pool = SAPPooling(in_channels, num_heads)
        self.classifier = nn.Linear(self.pool.out_features, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(features))


@register_head("mpae_gate")
class MPAEGate(nn.Module):
    """Per-label gate over the three experts' logits.

    ``mode="shared"``: the published MLP 3 -> hidden -> 3 applied to every label's logit triple.
    ``mode="label"``: one such MLP per label (grouped weights [K, ...]), for labels whose planes
    should be trusted differently.
    """

    def __init__(self, n_labels: int, hidden: int = 32, mode: str = "shared", dropout: float = 0.1):
        super().__init__()
        if mode not in ("shared", "label"):
            raise ValueError(f"gate mode must be 'shared' or 'label', got '{mode}'")
        self.mode, self.n_labels = mode, int(n_labels)
        n_planes = len(PLANES)
        self.dropout = nn.Dropout(dropout)
        if mode == "shared":
            self.fc1, self.fc2 = nn.Linear(n_planes, hidden), nn.Linear(hidden, n_planes)
        else:
            self.w1 = nn.Parameter(torch.empty(self.n_labels, n_planes, hidden))
            self.b1 = nn.Parameter(torch.zeros(self.n_labels, hidden))
            self.w2 = nn.Parameter(torch.empty(self.n_labels, hidden, n_planes))
            self.b2 = nn.Parameter(torch.zeros(self.n_labels, n_planes))
            # Same init scale as nn.Linear's default (kaiming-uniform on fan_in).
            for w, fan_in in ((self.w1, n_planes), (self.w2, hidden)):
                bound = 1.0 / fan_in**0.5
                nn.init.uniform_(w, -bound, bound)

    def gate_logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "shared":
            return self.fc2(self.dropout(torch.relu(self.fc1(z))))
        h = torch.relu(torch.einsum("bkp,kph->bkh", z, self.w1) + self.b1)
        return torch.einsum("bkh,khp->bkp", self.dropout(h), self.w2) + self.b2

    def forward(self, expert_logits: torch.Tensor, present: torch.Tensor | None = None):
        """expert_logits [B, K, 3], present bool [B, 3] -> (fused [B, K], weights [B, K, 3])."""
        if present is None:
            present = torch.ones(expert_logits.shape[0], len(PLANES), dtype=torch.bool, device=expert_logits.device)
        if not bool(present.any(dim=1).all()):
            raise ValueError("every case needs at least one plane (a case has none present)")
        mask = present[:, None, :].expand_as(expert_logits)
        z = expert_logits.masked_fill(~mask, 0.0)
        logits = self.gate_logits(z).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return (weights * z).sum(dim=-1), weights


@register_head("mpae")
class MPAEHead(nn.Module):
    """Multi-plane adaptive experts: per-plane experts + per-label gate (+ optional stacking MLP
    K -> 128 -> K, off by default because it mixes labels after the gate)."""

    def __init__(self, in_channels: int | list, n_labels: int, num_heads: int | None = None, gate_mode: str = "shared",
                 gate_hidden: int = 32, gate_dropout: float = 0.1, stacking: bool = False, stacking_hidden: int = 128):
        super().__init__()
        channels = _per_plane_channels(in_channels)
        self.n_labels = int(n_labels)
        self.experts = nn.ModuleDict({p: PlaneExpert(c, n_labels, num_heads) for p, c in zip(PLANES, channels)})
        self.gate = MPAEGate(n_labels, gate_hidden, gate_mode, gate_dropout)
        self.stacking = (nn.Sequential(nn.Linear(n_labels, stacking_hidden), nn.ReLU(), nn.Dropout(0.1),
                                       nn.Linear(stacking_hidden, n_labels)) if stacking else None)

    def expert_logits(self, features: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None):
        """-> (expert logits [B, K, 3] with zeros for absent planes, presence bool [B, 3])."""
        mask = plane_presence(features, present)
        pooled = {p: self.experts[p].pool(x) for p, x in features.items() if x is not None}
        return self.logits_from_pooled(pooled, mask), mask

    def logits_from_pooled(self, pooled: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Expert logits [B, K, 3] from each present plane's SAP vector (the experts' linear layers;
        fine-tuning trains these on vectors pooled once)."""
        columns = []
        for i, plane in enumerate(PLANES):
            if plane in pooled:
                columns.append(self.experts[plane].classifier(pooled[plane]) * present[:, i:i + 1])
            else:
                columns.append(torch.zeros(present.shape[0], self.n_labels, device=present.device))
        return torch.stack(columns, dim=-1)

    def fuse(self, expert_logits: torch.Tensor, present: torch.Tensor | None = None) -> DiagnosisOutput:
        fused, weights = self.gate(expert_logits, present)
        if self.stacking is not None:
            fused = self.stacking(fused)
        return DiagnosisOutput(fused, expert_logits, weights, weights_are_explanations=self.stacking is None)

    def forward(self, features: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None) -> DiagnosisOutput:
        z, mask = self.expert_logits(features, present)
        return self.fuse(z, mask)


class _PooledPlanes(nn.Module):
    """SAP per plane, zero vectors for absent planes; returns the list and the presence mask."""

    def __init__(self, channels: list[int], num_heads: int | None):
        super().__init__()
        self.pools = nn.ModuleDict({p: SAPPooling(c, num_heads) for p, c in zip(PLANES, channels)})

    def forward(self, features, present):
        mask = plane_presence(features, present)
        vectors = []
        for i, plane in enumerate(PLANES):
            pool, x = self.pools[plane], features.get(plane)
            if x is None:
                vectors.append(torch.zeros(mask.shape[0], pool.out_features, device=mask.device))
            else:
                vectors.append(pool(x) * mask[:, i:i + 1])
        return vectors, mask


@register_head("concat_fusion")
class ConcatFusionHead(nn.Module):
    """Feature-level fusion: [SAP_sag ; SAP_cor ; SAP_ax ; presence] -> Linear (hidden=0) or MLP."""

    def __init__(self, in_channels: int | list, n_labels: int, num_heads: int | None = None, hidden: int = 0, dropout: float = 0.1):
        super().__init__()
        channels = _per_plane_channels(in_channels)
        self.planes = _PooledPlanes(channels, num_heads)
        width = sum(2 * c for c in channels) + len(PLANES)
        self.classifier = (nn.Linear(width, n_labels) if hidden <= 0 else
                           nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_labels)))

    def forward(self, features, present=None) -> DiagnosisOutput:
        vectors, mask = self.planes(features, present)
        return DiagnosisOutput(self.classifier(torch.cat(vectors + [mask.float()], dim=1)))


@register_head("projection_fusion")
class ProjectionFusionHead(nn.Module):
    """Per-plane projections 2C_p -> dim, then concat (3·dim) or mean over present planes (dim),
    plus the presence indicator, -> Linear(-> K)."""

    def __init__(self, in_channels: int | list, n_labels: int, dim: int = 128, mode: str = "concat", num_heads: int | None = None):
        super().__init__()
        if mode not in ("concat", "sum"):
            raise ValueError(f"mode must be 'concat' or 'sum', got '{mode}'")
        channels = _per_plane_channels(in_channels)
        self.mode = mode
        self.planes = _PooledPlanes(channels, num_heads)
        self.projections = nn.ModuleDict({p: nn.Sequential(nn.Linear(2 * c, dim), nn.ReLU()) for p, c in zip(PLANES, channels)})
        width = (dim * len(PLANES) if mode == "concat" else dim) + len(PLANES)
        self.classifier = nn.Linear(width, n_labels)

    def forward(self, features, present=None) -> DiagnosisOutput:
        vectors, mask = self.planes(features, present)
        projected = [self.projections[p](v) * mask[:, i:i + 1] for i, (p, v) in enumerate(zip(PLANES, vectors))]
        if self.mode == "concat":
            fused = torch.cat(projected, dim=1)
        else:  # mean over the planes present, so the scale does not depend on how many there are
            fused = torch.stack(projected, dim=0).sum(0) / mask.sum(dim=1, keepdim=True).float()
        return DiagnosisOutput(self.classifier(torch.cat([fused, mask.float()], dim=1)))


@register_head("cross_attention_fusion")
class CrossAttentionFusionHead(nn.Module):
    """Cyclic cross-attention: each plane's tokens (projected to ``dim``) attend to the next plane's
    tokens (sagittal -> coronal -> axial -> sagittal) with a residual; token means are concatenated
    with the presence indicator -> Linear(-> K). When the next plane is absent the cross-attention
    term is dropped (residual only); an absent plane contributes a zero vector."""

    def __init__(self, in_channels: int | list, n_labels: int, dim: int = 128, num_heads: int = 8):
        super().__init__()
        channels = _per_plane_channels(in_channels)
        heads = largest_divisor_at_most(dim, num_heads)
        self.dim = int(dim)
        self.embed = nn.ModuleDict({p: nn.Linear(c, dim) for p, c in zip(PLANES, channels)})
        self.cross = nn.ModuleDict({p: nn.MultiheadAttention(dim, heads, batch_first=True) for p in PLANES})
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim * len(PLANES) + len(PLANES), n_labels)

    def forward(self, features, present=None) -> DiagnosisOutput:
        mask = plane_presence(features, present)
        embedded = {p: self.embed[p](tokens(x)) for p, x in features.items() if x is not None}
        pooled = []
        for i, plane in enumerate(PLANES):
            if plane not in embedded:
                pooled.append(torch.zeros(mask.shape[0], self.dim, device=mask.device))
                continue
            query, nxt = embedded[plane], next_plane(plane)
            out = query
            if nxt in embedded:
                attended, _ = self.cross[plane](query, embedded[nxt], embedded[nxt], need_weights=False)
                j = PLANES.index(nxt)
                out = query + attended * mask[:, j, None, None]
            pooled.append(self.norm(out.mean(dim=1)) * mask[:, i:i + 1])
        return DiagnosisOutput(self.classifier(torch.cat(pooled + [mask.float()], dim=1)))
