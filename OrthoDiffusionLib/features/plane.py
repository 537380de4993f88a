"""The one path from an image to diffusion features: preprocess to the backbone's grid, hash the
content, run the backbone to the requested blocks over seeded noise draws, through the cache.

Every caller (predict, cohort feature extraction for fit, fine-tune when the cache lacks a case,
the sweep, ``orthodiffusion features``) goes through :func:`prepare_plane` and
:func:`plane_features`, so a change of preprocessing, windows or cache keys is made here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..io.preprocess import NetworkTransform

from .extract import FeatureExtractor, FeatureSpec


@dataclass
class PlaneInput:
    """One plane of one case, ready for its backbone."""

    plane: str
    image: sitk.Image           # the source series, or a reformatted view
    array: np.ndarray           # [D, H, W] network input in [-1, 1]
    transform: NetworkTransform  # network grid <-> source grid
    content_hash: str           # io.volume_hash of the image: part of every cache key


def prepare_plane(image, plane: str, backbone_config, preprocessing: str) -> PlaneInput:
    """Preprocess ``image`` onto the backbone's input grid (``backbone_config``: depth, size)."""
    from ..io import preprocess, volume_hash

    size = int(backbone_config.image_size)
    array, transform = preprocess(image, mode=preprocessing, plane=plane, depth=int(backbone_config.depth_size),
                                  size=(size, size))
    return PlaneInput(plane, image, array, transform, volume_hash(image))


def plane_features(backbone, plane_input: PlaneInput, spec: FeatureSpec, cache=None, device="cpu",
                   max_batch: int | None = None) -> dict:
    """``{(t, block): float32 [K, C, d, h, w]}`` (K noise draws) of ``backbone`` = (model, sha256).

    The cache key holds the content hash, the plane, the backbone's sha256 (so features of another
    or a fine-tuned encoder are never served) and the spec. ``max_batch``: forward passes batched
    per call (default: 1 on the CPU — batching draws saves no time there but multiplies the
    activations — and 4 on a GPU)."""
    model, sha = backbone
    if max_batch is None:
        max_batch = 1 if torch.device(device).type == "cpu" else 4
    extractor = FeatureExtractor(model, device=device, backbone_sha256=sha, cache=cache, max_batch=max_batch)
    feats = extractor.extract(plane_input.array, plane_input.content_hash, plane_input.plane, spec)
    return {k: v.float().cpu() for k, v in feats.items()}


def single_features(feats: dict) -> torch.Tensor:
    """The one (t, block) entry of a single-setting request: [K, C, d, h, w]."""
    (only,) = feats.values()
    return only
