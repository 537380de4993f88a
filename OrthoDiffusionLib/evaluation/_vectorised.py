"""Row-wise (vectorised) metric kernels used by the bootstraps.

Each kernel takes ``scores`` and ``labels`` of shape [B, n] (one bootstrap resample per row) and
returns one value per row. Entries with ``labels`` NaN are ignored (missing label). The point
estimates themselves come from scikit-learn; these kernels only make 1000s of resamples cheap, and
the tests check them against scikit-learn on the unresampled data.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC per row via the Mann-Whitney U statistic with mid-ranks (ties count 1/2).

    Missing entries get score +inf: being above every valid score they leave the valid entries'
    ranks unchanged, so no per-row masking loop is needed.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    valid = ~np.isnan(labels)
    pos = valid & (labels == 1)
    ranks = rankdata(np.where(valid, scores, np.inf), axis=1, method="average")
    n_pos = pos.sum(axis=1).astype(float)
    n_neg = (valid & (labels == 0)).sum(axis=1).astype(float)
    u = (ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def average_precision_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision per row, same definition as ``sklearn.metrics.average_precision_score``:
    AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (tied scores form one threshold)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    valid = ~np.isnan(labels)
    s = np.where(valid, scores, -np.inf)
    y = np.where(valid, labels, 0.0)
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    y_sorted = np.take_along_axis(y, order, axis=1)
    v_sorted = np.take_along_axis(valid, order, axis=1)
    tp = np.cumsum(y_sorted, axis=1)
    cnt = np.cumsum(v_sorted, axis=1)
    n = s.shape[1]
    # last position of each tie group: where the next score differs (or the row ends)
    group_end = np.ones_like(s_sorted, dtype=bool)
    group_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    # index of the end of the tie group each position belongs to (back-fill via reversed min-accumulate)
    idx = np.where(group_end, np.arange(n)[None, :], n)
    end_idx = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
    end_idx = np.minimum(end_idx, n - 1)
    tp_end = np.take_along_axis(tp, end_idx, axis=1)
    cnt_end = np.take_along_axis(cnt, end_idx, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision_end = tp_end / cnt_end
        n_pos = y.sum(axis=1)
        out = (y_sorted * np.nan_to_num(precision_end)).sum(axis=1) / n_pos
    n_neg = (valid & (labels == 0)).sum(axis=1)
    out[n_pos == 0] = np.nan
    out[n_neg + n_pos == 0] = np.nan
    return out


def sens_spec_rows(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity per row at ``score >= threshold`` (predicted positive)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    pred = scores >= threshold
    pos = labels == 1
    neg = labels == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (pred & pos).sum(axis=1) / pos.sum(axis=1)
        spec = (~pred & neg).sum(axis=1) / neg.sum(axis=1)
    return sens, spec


def stratified_indices(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] case indices, resampling each stratum (label value) with replacement at its own
    size, so every resample keeps the observed numbers of positives and negatives."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    out = np.empty((n_boot, n), dtype=np.int64)
    col = 0
    keys = np.where(np.isnan(labels.astype(float)), -1.0, labels.astype(float))
    for value in np.unique(keys):
        members = np.flatnonzero(keys == value)
        draw = rng.integers(0, members.size, size=(n_boot, members.size))
        out[:, col:col + members.size] = members[draw]
        col += members.size
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0):
    """Percentile interval ignoring NaN resamples; NaN when every resample is NaN."""
    samples = np.asarray(samples, dtype=float)
    alpha = (1.0 - level) / 2.0
    if np.all(np.isnan(samples)):
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=axis)
    return float(lo), float(hi)
