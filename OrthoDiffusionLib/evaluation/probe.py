"""Linear probe of pretrained vs randomly initialised backbones on the synthetic test bed.

Protocol (identical for both weight sets): each plane volume of a case through the library's one
feature path (``features.plane``: ``released`` preprocessing, q_sample at t (default 100) with the
noise seeded per case content and plane, the ``mid_2`` activation) → global average pooling → one
C-dim vector per plane. A standardised
L2-logistic regression (sklearn, C = 1) predicts one finding from one plane's vector or from the
three planes concatenated; the score is the AUROC of stratified k-fold cross-validation (out-of-fold
predictions, repeated with several fold seeds; mean ± sd over the repeats).

    orthodiffusion probe --manifest build/probe-synth/manifest.csv \
        --backbones Resources/Models/knee-demo --finding EFFU --out probe.json

(the command line lives in ``cli/pretrain.py``). Research use, not for clinical decisions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from .. import DISCLAIMER
from ..planes import PLANES
from .classification import auroc


def load_inputs(manifest: Path, config) -> tuple[list[str], dict[str, list], list[dict]]:
    """(case ids, plane -> [PlaneInput], manifest rows): every case's planes on ``config``'s grid."""
    from ..features.plane import prepare_plane
    from ..io.volumes import read_volume_file

    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids, inputs = [], {p: [] for p in PLANES}
    for row in rows:
        ids.append(row.get("study_id") or str(len(ids)))
        for plane in PLANES:
            image, _ = read_volume_file(manifest.parent / row[plane])
            inputs[plane].append(prepare_plane(image, plane, config, "released"))
    return ids, inputs, rows


def pooled_features(model, inputs: list, plane: str, t: int, block: str, backbone_sha256: str,
                    cache=None) -> np.ndarray:
    """[cases, C] globally average-pooled ``block`` features at timestep ``t`` (one seeded draw)."""
    from ..features import FeatureSpec
    from ..features.plane import plane_features, single_features

    spec = FeatureSpec(timesteps=(t,), blocks=(block,), n_draws=1, preprocessing="released")
    return np.stack([single_features(plane_features((model, backbone_sha256), x, spec, cache))[0].mean(dim=(1, 2, 3)).numpy()
                     for x in inputs])


def make_probe(c: float = 1.0):
    """The linear probe: standardised L2-logistic regression (sklearn); also used by ``orthodiffusion sweep``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def cv_auroc(X: np.ndarray, y: np.ndarray, folds: int = 5, repeats: int = 5) -> tuple[float, float]:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    scores = []
    for r in range(repeats):
        clf = make_probe()
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=r)
        p = cross_val_predict(clf, X, y, cv=cv, method="predict_proba")[:, 1]
        scores.append(auroc(y, p))
    return float(np.mean(scores)), float(np.std(scores))


def run_probe(manifest: Path, backbones: Path, finding: str = "EFFU", t: int = 100, block: str = "mid_2",
              folds: int = 5, repeats: int = 5, init_seed: int = 0, cache: str | None = None) -> dict:
    """``cache``: a feature cache folder, used for the pretrained weights only (random weights are
    rebuilt each run)."""
    from ..backbone.checkpoints import load_backbone
    from ..backbone.unet import DiffusionUNet

    from ..storage import sha256_file

    models = {p: load_backbone(backbones / f"{p}.safetensors")[0] for p in PLANES}
    shas = {p: sha256_file(backbones / f"{p}.safetensors") for p in PLANES}
    ids, inputs, rows = load_inputs(Path(manifest), models["sagittal"].config)
    feature_cache = None
    if cache is not None:
        from ..features import FeatureCache

        feature_cache = FeatureCache(cache)
    y = np.array([int(r[finding]) for r in rows])
    result = {"finding": finding, "n_cases": len(y), "n_positive": int(y.sum()), "t": t, "block": block,
              "folds": folds, "repeats": repeats, "manifest": str(manifest), "auroc": {}, "disclaimer": DISCLAIMER}
    feats = {}
    for name in ("pretrained", "random_init"):
        per_plane = []
        for plane in PLANES:
            if name == "pretrained":
                model, sha, plane_cache = models[plane], shas[plane], feature_cache
            else:
                torch.manual_seed(init_seed)
                model, sha, plane_cache = DiffusionUNet(models[plane].config), "random-init", None
            per_plane.append(pooled_features(model, inputs[plane], plane, t, block, sha, plane_cache))
            result["auroc"].setdefault(name, {})[plane] = cv_auroc(per_plane[-1], y, folds, repeats)
        feats[name] = np.concatenate(per_plane, axis=1)
        result["auroc"][name]["all_planes"] = cv_auroc(feats[name], y, folds, repeats)
    return result
