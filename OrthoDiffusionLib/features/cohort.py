"""Extract (and cache) backbone features for every case of a cohort manifest.

Features are a cache keyed by (volume content hash, plane, backbone sha256, t, block, seed, draw,
preprocessing): re-fitting heads never re-runs the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..planes import PLANES


def read_plane_image(path, plane: str):
    """The series at ``path``, given as ``plane`` (the one plane rule of io.study.assign_planes)."""
    from ..io import load_study

    return load_study(planes={plane: path}, reformat=False).image(plane)


def network_labels(row, plane: str, transform) -> torch.Tensor | None:
    """The row's ``labels_<plane>`` map on that plane's network grid (nearest neighbour), or None."""
    from ..io.labels import read_label_map

    path = row.labels.get(f"labels_{plane}")
    if path is None:
        return None
    labels = read_label_map(path)  # values outside knee-11 are refused, not trained on
    return torch.as_tensor(transform.to_network(labels, is_label=True).astype(np.int64))


def plane_inputs(rows, plane: str, backbone_config, preprocessing: str):
    """Yield ``(row index, PlaneInput)`` for the rows that have ``plane`` (one at a time, so a
    caller keeps only what it derives from each)."""
    from .plane import prepare_plane

    for i, row in enumerate(rows):
        path = row.images.get(plane)
        if path is not None:
            yield i, prepare_plane(read_plane_image(path, plane), plane, backbone_config, preprocessing)


@dataclass
class CohortFeatures:
    study_ids: list
    features: dict                     # plane -> Tensor [N, C, d, h, w] (zeros where absent) or None
    present: torch.Tensor              # bool [N, 3]
    seg_plane: str | None = None
    seg_targets: torch.Tensor | None = None   # long [N, D, H, W] (-1 where no label map)
    seg_has_labels: np.ndarray | None = None  # bool [N]
    hashes: dict = field(default_factory=dict)  # study_id -> {plane: content hash}
    cache_hits: int = 0
    cache_misses: int = 0


def extract_cohort(rows, spec, backbones: dict, device="cpu", cache=None, seg_plane: str | None = None,
                   seed: int = 0, progress: bool = True) -> CohortFeatures:
    """Features (one noise draw, seed ``seed``) of the model's planes for every manifest row, plus
    label maps of ``seg_plane`` pushed onto that plane's network grid (nearest neighbour).
    ``backbones``: plane -> (model, sha256), as ``models.loading.load_backbones`` gives."""
    from tqdm import tqdm

    from .plane import plane_features, prepare_plane, single_features

    n = len(rows)
    per_plane: dict[str, list] = {p: [None] * n for p in PLANES}
    present = torch.zeros(n, len(PLANES), dtype=torch.bool)
    targets, has_labels, hashes = [None] * n, np.zeros(n, dtype=bool), {}
    for i, row in enumerate(tqdm(rows, desc="features", unit="case", disable=not progress)):
        hashes[row.study_id] = {}
        for j, plane in enumerate(PLANES):
            path = row.images.get(plane)
            if path is None or plane not in backbones:
                continue
            ready = prepare_plane(read_plane_image(path, plane), plane, backbones[plane][0].config,
                                  spec.preprocessing)
            hashes[row.study_id][plane] = ready.content_hash
            feats = plane_features(backbones[plane], ready, spec.feature_spec(plane, n_draws=1, seed=seed), cache,
                                   device)
            per_plane[plane][i] = single_features(feats)[0]
            transform = ready.transform
            present[i, j] = True
            if plane == seg_plane:
                targets[i] = network_labels(row, plane, transform)
                has_labels[i] = targets[i] is not None
    features = {}
    for plane, items in per_plane.items():
        ref = next((x for x in items if x is not None), None)
        if ref is None:
            features[plane] = None
            continue
        features[plane] = torch.stack([x if x is not None else torch.zeros_like(ref) for x in items]).float()
    seg_targets = None
    if seg_plane is not None and has_labels.any():
        ref = next(t for t in targets if t is not None)
        seg_targets = torch.stack([t if t is not None else torch.full_like(ref, -1) for t in targets])
    hits = int(getattr(cache, "hits", 0)) if cache is not None else 0
    misses = int(getattr(cache, "misses", 0)) if cache is not None else 0
    return CohortFeatures([r.study_id for r in rows], features, present, seg_plane, seg_targets, has_labels,
                          hashes, hits, misses)
