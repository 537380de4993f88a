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


def prepare_plane(image, plane: str, backbone_config, preprocessing: str, slice_start: int | None = None,
                  content_hash: str | None = None) -> PlaneInput:
    """Preprocess ``image`` onto the backbone's input grid (``backbone_config``: depth, size): the
    published central window, or the window starting at ``slice_start`` (released preprocessing)."""
    from ..io import preprocess, volume_hash

    size = int(backbone_config.image_size)
    array, transform = preprocess(image, mode=preprocessing, plane=plane, depth=int(backbone_config.depth_size),
                                  size=(size, size), slice_start=slice_start)
    return PlaneInput(plane, image, array, transform, content_hash or volume_hash(image))


def window_starts(n_slices: int, depth: int, overlap: float = 0.5) -> list[int]:
    """First slices of the windows that cover every slice of a series: a stride of at most
    ``depth × (1 − overlap)``, the last window flush with the end, and always the published central
    window (so diagnosis reuses it). A series of at most ``depth`` slices has the central one only."""
    from ..io.preprocess import central_start

    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if n_slices <= depth:
        return [central_start(n_slices, depth)]
    stride = max(1, int(depth * (1 - overlap)))
    starts = set(range(0, n_slices - depth + 1, stride)) | {n_slices - depth, central_start(n_slices, depth)}
    return sorted(starts)


def prepare_windows(image, plane: str, backbone_config, preprocessing: str, overlap: float = 0.5) -> list[PlaneInput]:
    """The windows covering every slice of ``image`` along ``plane``'s slice axis. The central
    window keeps the volume's content hash (its features are the ones predict caches and diagnosis
    uses); the others get a hash of the volume and their start, so their cache entries and noise
    differ."""
    from ..io import volume_hash
    from ..io.planes import reorient_canonical
    from ..io.preprocess import central_start
    from ..storage import sha256_bytes

    depth = int(backbone_config.depth_size)
    n = int(reorient_canonical(image, plane).GetSize()[2])
    base = volume_hash(image)
    centre = central_start(n, depth)
    return [prepare_plane(image, plane, backbone_config, preprocessing, None if s == centre else s,
                          base if s == centre else sha256_bytes(f"{base} window {s}".encode()))
            for s in window_starts(n, depth, overlap)]


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
