"""Linear probe of pretrained vs randomly initialised backbones on the synthetic test bed.

Protocol (identical for both weight sets): each plane volume of a case → ``released`` preprocessing
to the backbone input → q_sample at t (default 100) with noise seeded per (case, plane) → the
``mid_2`` activation → global average pooling → one C-dim vector per plane. A standardised
L2-logistic regression (sklearn, C = 1) predicts one finding from one plane's vector or from the
three planes concatenated; the score is the AUROC of stratified k-fold cross-validation (out-of-fold
predictions, repeated with several fold seeds; mean ± sd over the repeats).

    orthodiffusion probe --manifest build/probe-synth/manifest.csv \
        --backbones Resources/Models/knee-demo --finding EFFU --out probe.json

(the command line lives in ``cli/pretrain.py``). Research use, not for clinical decisions.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch

from .. import DISCLAIMER
from ..planes import PLANES


def _noise(shape, key: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def load_inputs(manifest: Path, depth: int, size: int) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:
    from ..io.preprocess import preprocess
    from ..io.volumes import read_volume_file

    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids, arrays = [], {p: [] for p in PLANES}
    for row in rows:
        ids.append(row.get("study_id") or str(len(ids)))
        for plane in PLANES:
            image, _ = read_volume_file(manifest.parent / row[plane])
            arr, _ = preprocess(image, mode="released", plane=plane, depth=depth, size=(size, size))
            arrays[plane].append(arr)
    return ids, {p: np.stack(v) for p, v in arrays.items()}, rows


@torch.no_grad()
def pooled_features(model, x: np.ndarray, ids: list[str], plane: str, t: int, block: str) -> np.ndarray:
    from ..backbone.schedule import CosineSchedule

    sched = CosineSchedule(model.config.timesteps)
    out = []
    for i, arr in enumerate(x):
        x0 = torch.from_numpy(arr)[None, None]
        tt = torch.tensor([t])
        xt = sched.q_sample(x0, tt, _noise(x0.shape, f"{ids[i]}|{plane}|{t}"))
        _, got = model.eval()(xt, tt, taps=[block])
        out.append(got[block].mean(dim=(2, 3, 4))[0].numpy())
    return np.stack(out)


def make_probe(c: float = 1.0):
    """The linear probe: standardised L2-logistic regression (sklearn); also used by ``orthodiffusion sweep``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def cv_auroc(X: np.ndarray, y: np.ndarray, folds: int = 5, repeats: int = 5) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    scores = []
    for r in range(repeats):
        clf = make_probe()
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=r)
        p = cross_val_predict(clf, X, y, cv=cv, method="predict_proba")[:, 1]
        scores.append(roc_auc_score(y, p))
    return float(np.mean(scores)), float(np.std(scores))


def cached_inputs(manifest: Path, depth: int, size: int, cache: Path | None):
    """load_inputs, optionally stored in / read from an .npz (preprocessing dominates the probe's time)."""
    if cache is not None and Path(cache).is_file():
        z = np.load(cache, allow_pickle=False)
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [str(v) for v in z["ids"]], {p: z[p] for p in PLANES}, rows
    ids, inputs, rows = load_inputs(Path(manifest), depth, size)
    if cache is not None:
        np.savez(cache, ids=np.array(ids), **inputs)
    return ids, inputs, rows


def run_probe(manifest: Path, backbones: Path, finding: str = "EFFU", t: int = 100, block: str = "mid_2",
              folds: int = 5, repeats: int = 5, init_seed: int = 0, inputs_cache: Path | None = None) -> dict:
    from ..backbone.checkpoints import load_backbone
    from ..backbone.unet import DiffusionUNet

    models = {p: load_backbone(backbones / f"{p}.safetensors")[0] for p in PLANES}
    cfg = models["sagittal"].config
    ids, inputs, rows = cached_inputs(Path(manifest), cfg.depth_size, cfg.image_size, inputs_cache)
    y = np.array([int(r[finding]) for r in rows])
    result = {"finding": finding, "n_cases": len(y), "n_positive": int(y.sum()), "t": t, "block": block,
              "folds": folds, "repeats": repeats, "manifest": str(manifest), "auroc": {}, "disclaimer": DISCLAIMER}
    feats = {}
    for name in ("pretrained", "random_init"):
        per_plane = []
        for plane in PLANES:
            if name == "pretrained":
                model = models[plane]
            else:
                torch.manual_seed(init_seed)
                model = DiffusionUNet(models[plane].config)
            per_plane.append(pooled_features(model, inputs[plane], ids, plane, t, block))
            result["auroc"].setdefault(name, {})[plane] = cv_auroc(per_plane[-1], y, folds, repeats)
        feats[name] = np.concatenate(per_plane, axis=1)
        result["auroc"][name]["all_planes"] = cv_auroc(feats[name], y, folds, repeats)
    return result
