"""Extract (and cache) backbone features for every case of a cohort manifest.

Features are a cache keyed by (volume content hash, plane, backbone sha256, t, block, seed, draw,
preprocessing): re-fitting heads never re-runs the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..planes import PLANES


def load_backbones(spec, planes=None, device="cpu") -> dict:
    """plane -> (model on device, sha256) for the model's planes (or the given subset)."""
    from ..backbone.checkpoints import load_backbone
    from ..errors import UserError

    out = {}
    for plane in planes or list(spec.planes):
        if plane not in spec.planes:
            continue
        path = spec.backbone_path(plane)
        if not path.is_file():
            raise UserError(f"model '{spec.id}': backbone for {plane} not found at {path}; "
                            f"`orthodiffusion models verify {spec.id}` checks the files")
        model, info = load_backbone(path)
        model.to(device).eval()
        sha = info.get("sha256") if isinstance(info, dict) else None
        if not sha:
            from ..storage import sha256_file
            sha = sha256_file(path)
        out[plane] = (model, sha)
    return out


def read_plane_image(path):
    from ..io.study import read_series

    return read_series(path)[0].image


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


def extract_cohort(rows, spec, device="cpu", cache=None, seg_plane: str | None = None, seed: int = 0,
                   progress: bool = True, backbones: dict | None = None) -> CohortFeatures:
    """Features (one noise draw, seed ``seed``) of the model's planes for every manifest row, plus
    label maps of ``seg_plane`` pushed onto that plane's network grid (nearest neighbour)."""
    from tqdm import tqdm

    from . import FeatureExtractor
    from ..io import preprocess, volume_hash
    from ..io.labels import read_label_map

    backbones = backbones or load_backbones(spec, device=device)
    extractors = {p: FeatureExtractor(m, device=device, backbone_sha256=sha, cache=cache)
                  for p, (m, sha) in backbones.items()}
    n = len(rows)
    per_plane: dict[str, list] = {p: [None] * n for p in PLANES}
    present = torch.zeros(n, len(PLANES), dtype=torch.bool)
    targets, has_labels, hashes = [None] * n, np.zeros(n, dtype=bool), {}
    for i, row in enumerate(tqdm(rows, desc="features", unit="case", disable=not progress)):
        hashes[row.study_id] = {}
        for j, plane in enumerate(PLANES):
            path = row.images.get(plane)
            if path is None or plane not in extractors:
                continue
            model = backbones[plane][0]
            image = read_plane_image(path)
            arr, transform = preprocess(image, mode=spec.preprocessing, plane=plane, depth=model.config.depth_size,
                                        size=(model.config.image_size, model.config.image_size))
            h = volume_hash(image)
            hashes[row.study_id][plane] = h
            fspec = spec.feature_spec(plane, n_draws=1, seed=seed)
            feats = extractors[plane].extract(arr, h, plane, fspec)
            per_plane[plane][i] = next(iter(feats.values()))[0]
            present[i, j] = True
            if plane == seg_plane:
                lab_path = row.labels.get(f"labels_{plane}")
                if lab_path is not None:
                    lab = read_label_map(lab_path)  # values outside knee-11 are refused, not trained on
                    targets[i] = torch.as_tensor(transform.to_network(lab, is_label=True).astype(np.int64))
                    has_labels[i] = True
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
