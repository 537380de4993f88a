"""Plane-weight summaries: how much each label's MPAE head relies on sagittal / coronal / axial.

``weights`` is [N, K, 3] (per case, per label, per plane, plane order sagittal, coronal, axial).
Per label the mean and sample SD per plane are reported for all cases, for the true positives
(label 1 and predicted positive) and for the other labelled cases (TN, FP, FN). Cases whose label is
unknown (NaN) count only in "all".
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .classification import as_label_arrays, resolve_thresholds

from ..planes import PLANES
GROUPS = ("all", "true_positive", "other")


def _stats(w: np.ndarray) -> dict:
    n = int(w.shape[0])
    mean = w.mean(axis=0) if n else np.full(3, np.nan)
    sd = w.std(axis=0, ddof=1) if n > 1 else np.full(3, np.nan)
    return {"n": n, "mean": [float(x) for x in mean], "sd": [float(x) for x in sd]}


def plane_weight_summary(weights, y_true, y_prob, thresholds=None, labels=None) -> dict:
    """Mean ± SD of the plane weights per label and plane, split by true positives vs others."""
    y, p, labels = as_label_arrays(y_true, y_prob, labels)
    w = np.asarray(weights, dtype=float)
    if w.shape != (y.shape[0], y.shape[1], len(PLANES)):
        raise InputError(f"plane weights must be [N, K, 3] = {(y.shape[0], y.shape[1], 3)}, got {w.shape}")
    thr = resolve_thresholds(thresholds, labels)
    per_label = []
    for k, name in enumerate(labels):
        finite = np.all(np.isfinite(w[:, k]), axis=1)
        known = ~np.isnan(y[:, k])
        tp = known & (y[:, k] == 1) & (p[:, k] >= thr[k])
        groups = {"all": _stats(w[finite, k]),
                  "true_positive": _stats(w[finite & tp, k]),
                  "other": _stats(w[finite & known & ~tp, k])}
        per_label.append({"label": name, "threshold": float(thr[k]), "groups": groups})
    return {"planes": list(PLANES), "labels": labels, "per_label": per_label}


def plane_weight_rows(summary: dict) -> list[dict]:
    """Tidy rows (label, group, n, plane, mean, sd)."""
    rows = []
    for entry in summary["per_label"]:
        for g in GROUPS:
            st = entry["groups"][g]
            for i, plane in enumerate(summary["planes"]):
                rows.append({"label": entry["label"], "group": g, "n": st["n"], "plane": plane,
                             "mean": st["mean"][i], "sd": st["sd"][i]})
    return rows
