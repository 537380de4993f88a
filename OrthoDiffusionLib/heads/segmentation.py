"""Segmentation from one plane's features: light decoder, partial-label loss, multi-plane fusion.

Decoder (published design, generalised): stages of stride-2 transposed 3D convolution followed by
a residual conv block (MONAI ``UnetResBlock``), channels halving per stage from the input C down to
``min_channels`` (released: 256 -> 128 -> 64 -> 32 -> 16 over four stages from 1x16x16 to
16x256x256), then a 1x1x1 conv to classes. The number of stages is the largest number of doublings
any axis needs; an axis that reaches its target size earlier gets stride 1 in the remaining stages
(anisotropic stride, e.g. (1, 2, 2) when the depth is already at full size). If the target is not
a power-of-two multiple of the input, the logits are trilinearly resized to the exact target.

Multi-scale variant: pass ``taps`` (encoder activations ``in_*``: name -> {channels, shape}) at
construction and a dict name -> tensor at call time; each tap is concatenated with the decoder
activation of the same spatial size and mixed by a residual block, which restores detail for thin
structures (ligaments, cartilage) that the 16x16 bottleneck loses.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .pooling import largest_divisor_at_most
from .registry import register_head


def upsampling_plan(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per-stage strides (one int per axis) taking ``in_shape`` to at least ``out_shape``."""
    doublings = [max(0, math.ceil(math.log2(o / i))) if o > i else 0 for i, o in zip(in_shape, out_shape)]
    return [tuple(2 if s < n else 1 for n in doublings) for s in range(max(doublings, default=0))]


class _Conv(nn.Module):
    """A bias-free conv kept at ``.conv``, the parameter layout of MONAI's ``Convolution``."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        return self.conv(x)


class ResBlock(nn.Module):
    """MONAI's ``UnetResBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=("group", …))``:
    conv-GN-LeakyReLU(0.01)-conv-GN plus the input (through a 1x1x1 conv + GN when the channels
    change), then LeakyReLU; same parameter names, same values (test_heads_segmentation checks both
    against MONAI). Built here because importing MONAI costs 1-2 s of every `predict`, more than
    the whole knee-demo decoder; MONAI still trains the baselines and computes the metrics."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        groups = largest_divisor_at_most(cout, 8)
        self.conv1, self.conv2 = _Conv(cin, cout, 3), _Conv(cout, cout, 3)
        self.norm1, self.norm2 = nn.GroupNorm(groups, cout), nn.GroupNorm(groups, cout)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        if cin != cout:
            self.conv3, self.norm3 = _Conv(cin, cout, 1), nn.GroupNorm(groups, cout)

    def forward(self, x):
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        residual = self.norm3(self.conv3(x)) if hasattr(self, "conv3") else x
        return self.lrelu(out + residual)


@register_head("segmentation_decoder")
class SegmentationDecoder(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, in_shape: list, out_shape: list,
                 min_channels: int = 16, taps: dict | None = None):
        super().__init__()
        self.in_shape, self.out_shape = [int(s) for s in in_shape], [int(s) for s in out_shape]
        self.plan = upsampling_plan(self.in_shape, self.out_shape)
        channels = [int(in_channels)] + [max(int(min_channels), int(in_channels) // 2 ** (s + 1)) for s in range(len(self.plan))]
        # Spatial shape after each stage; index 0 is the input resolution.
        shapes = [list(self.in_shape)]
        for stride in self.plan:
            shapes.append([s * k for s, k in zip(shapes[-1], stride)])
        self.stage_shapes = shapes
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels[s], channels[s + 1], kernel_size=st, stride=st)
                                for s, st in enumerate(self.plan))
        self.res = nn.ModuleList(ResBlock(channels[s + 1], channels[s + 1]) for s in range(len(self.plan)))
        # Multi-scale fusion: tap name -> level (0 = input resolution, s = after stage s).
        self.tap_level: dict[str, int] = {}
        tap_channels: dict[int, int] = {}
        for name, spec in (taps or {}).items():
            shape = [int(s) for s in spec["shape"]]
            if shape not in shapes:
                raise ValueError(f"tap '{name}' has spatial shape {shape}; the decoder passes through {shapes}")
            level = shapes.index(shape)
            self.tap_level[name] = level
            tap_channels[level] = tap_channels.get(level, 0) + int(spec["channels"])
        self.fuse = nn.ModuleDict({str(lv): ResBlock(channels[lv] + c, channels[lv]) for lv, c in tap_channels.items()})
        self.classifier = nn.Conv3d(channels[-1], n_classes, kernel_size=1)

    def _fuse_taps(self, x: torch.Tensor, level: int, taps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        names = [n for n, lv in self.tap_level.items() if lv == level]
        if not names:
            return x
        missing = [n for n in names if n not in taps]
        if missing:
            raise ValueError(f"decoder needs encoder taps {missing}")
        return self.fuse[str(level)](torch.cat([x] + [taps[n] for n in names], dim=1))

    def forward(self, features: torch.Tensor, taps: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """features [B, C, *in_shape] -> logits [B, n_classes, *out_shape]."""
        if list(features.shape[2:]) != self.in_shape:
            raise ValueError(f"decoder built for input {self.in_shape}, got {list(features.shape[2:])}")
        taps = taps or {}
        x = self._fuse_taps(features, 0, taps)
        for s, (up, res) in enumerate(zip(self.up, self.res)):
            x = self._fuse_taps(res(up(x)), s + 1, taps)
        logits = self.classifier(x)
        if list(logits.shape[2:]) != self.out_shape:
            logits = F.interpolate(logits, size=self.out_shape, mode="trilinear", align_corners=False)
        return logits


def _marginal_log_likelihood(logits, labels, merged):
    """Per-voxel log-likelihood where the ``merged`` classes (bool [B, n_classes]: background and
    the unannotated ones) share one outcome; -> (log_lik, voxel label is merged)."""
    spatial = (1,) * (logits.dim() - 2)
    log_p = F.log_softmax(logits, dim=1)
    log_p_merged = log_p.masked_fill(~merged.view(*merged.shape, *spatial), float("-inf")).logsumexp(dim=1)
    label_is_merged = torch.gather(merged, 1, labels.reshape(len(labels), -1)).view_as(labels)
    return torch.where(label_is_merged, log_p_merged, torch.gather(log_p, 1, labels[:, None])[:, 0]), label_is_merged


def marginal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None,
                           ignore_index: int = -1) -> torch.Tensor:
    """The CE term of ``PartialLabelSegLoss`` alone (no MONAI, no Dice): plain CE when every class
    is annotated; ``ignore_index`` voxels left out."""
    target = target.long()
    if annotated is None or bool(annotated.all()):  # nothing merged: the plain (fused, faster) CE
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.zeros_like(target))
    merged = ~annotated.to(torch.bool)
    merged[:, 0] = True
    log_lik, _ = _marginal_log_likelihood(logits, labels, merged)
    return -(log_lik * valid).sum() / valid.sum().clamp(min=1)


class PartialLabelSegLoss(nn.Module):
    """0.2 · marginal CE + soft Dice over annotated foreground classes.

    ``annotated`` (bool [B, n_classes]) says which classes were delineated in each case; background
    (class 0) is always treated as annotated. Classes not annotated in a case may be hidden inside
    that case's "background", so:
    - CE is the marginal likelihood (partial-label / marginal loss, Shi et al. 2021): for a voxel
      labelled background (or an unannotated class) the probability is p_bg + Σ_unannotated p_c;
      moving mass between background and an unannotated class leaves the loss unchanged.
    - Dice (MONAI ``MaskedDiceLoss``, background excluded) is averaged only over annotated classes
      of each case; an unannotated class's Dice term is dropped entirely.
    Voxels equal to ``ignore_index`` (unlabelled) are left out of both terms.
    """

    def __init__(self, ce_weight: float = 0.2, ignore_index: int = -1):
        super().__init__()
        from monai.losses import MaskedDiceLoss  # lazy: importing MONAI costs seconds

        self.ce_weight, self.ignore_index = float(ce_weight), int(ignore_index)
        self.dice = MaskedDiceLoss(include_background=False, reduction="none")

    def components(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> dict:
        n_classes = logits.shape[1]
        if target.dim() == logits.dim():
            target = target[:, 0]
        target = target.long()
        valid = target != self.ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target))
        if int(labels.max()) >= n_classes or int(labels.min()) < 0:
            raise ValueError(f"target values must be in [0, {n_classes}) or ignore_index={self.ignore_index}")
        if annotated is None:
            annotated = torch.ones(logits.shape[0], n_classes, dtype=torch.bool, device=logits.device)
        annotated = annotated.to(torch.bool).clone()
        annotated[:, 0] = True
        merged = ~annotated
        merged[:, 0] = True  # background absorbs the unannotated classes

        log_lik, label_is_merged = _marginal_log_likelihood(logits, labels, merged)
        ce = -(log_lik * valid).sum() / valid.sum().clamp(min=1)

        # Unannotated classes' voxels count as background for Dice; their own terms are dropped below.
        dice_labels = torch.where(label_is_merged, torch.zeros_like(labels), labels)
        one_hot = F.one_hot(dice_labels, n_classes).movedim(-1, 1).float()
        per_class = self.dice(torch.softmax(logits, dim=1), one_hot, mask=valid[:, None].float()).flatten(1)
        weight = annotated[:, 1:].float()
        dice = (per_class * weight).sum() / weight.sum().clamp(min=1)
        return {"ce": ce, "dice": dice, "dice_per_class": per_class, "loss": self.ce_weight * ce + dice}

    def forward(self, logits, target, annotated=None) -> torch.Tensor:
        return self.components(logits, target, annotated)["loss"]


def fuse_plane_probabilities(probabilities: Sequence, valid: Sequence | None = None) -> dict:
    """Fuse per-plane class probabilities already resampled onto one reference grid.

    probabilities: sequence (or dict) of [n_classes, *S] arrays/tensors; valid: matching sequence of
    bool [*S] (True where that plane covers the voxel; None = everywhere).
    Returns (numpy in -> numpy out, torch in -> torch out):
      probabilities [n_classes, *S]: mean over covering planes (0 where no plane covers the voxel),
      labels [*S]: argmax (0 = background where uncovered),
      entropy [*S]: entropy of the fused probabilities / log(n_classes), in [0, 1] (1 where uncovered),
      disagreement [*S]: fraction of covering planes whose own argmax differs from the fused label,
      coverage [*S]: number of covering planes.
    """
    if isinstance(probabilities, Mapping):
        keys = list(probabilities)
        probabilities = [probabilities[k] for k in keys]
        valid = None if valid is None else [valid[k] for k in keys]
    if not probabilities:
        raise ValueError("need at least one plane's probabilities")
    as_numpy = isinstance(probabilities[0], np.ndarray)
    probs = torch.stack([torch.as_tensor(np.asarray(p) if as_numpy else p).float() for p in probabilities])
    n_planes, n_classes = probs.shape[:2]
    if valid is None:
        cover = torch.ones(n_planes, *probs.shape[2:], dtype=torch.bool, device=probs.device)
    else:
        cover = torch.stack([torch.as_tensor(np.asarray(v) if as_numpy else v).bool() for v in valid]).to(probs.device)
    coverage = cover.sum(0)
    fused = (probs * cover[:, None]).sum(0) / coverage.clamp(min=1)[None]
    labels = fused.argmax(0)
    covered = coverage > 0
    entropy = -(fused * fused.clamp(min=1e-12).log()).sum(0) / math.log(max(n_classes, 2))
    entropy = torch.where(covered, entropy.clamp(0, 1), torch.ones_like(entropy))
    differs = (probs.argmax(1) != labels[None]) & cover
    disagreement = differs.sum(0).float() / coverage.clamp(min=1)
    out = {"probabilities": fused, "labels": labels, "entropy": entropy, "disagreement": disagreement,
           "coverage": coverage}
    return {k: v.cpu().numpy() for k, v in out.items()} if as_numpy else out
