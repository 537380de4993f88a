"""Calibration: expected calibration error (equal-width bins) and reliability-diagram data."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def reliability_curve(y_true, y_prob, n_bins: int = 10) -> dict:
    """Per-bin counts, mean predicted probability and observed positive fraction.

    Bins are equal-width on [0, 1]: [0, 1/b), [1/b, 2/b), ..., [(b-1)/b, 1] (the last bin is closed).
    Cases with a NaN label are dropped. Empty bins have count 0 and NaN means.
    """
    if int(n_bins) < 1:
        raise InputError(f"n_bins must be >= 1 (got {n_bins})")
    n_bins = int(n_bins)
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise InputError(f"y_true and y_prob differ in length ({y.size} vs {p.size})")
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() > 1):
        raise InputError("probabilities must lie in [0, 1] for calibration")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_id = np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bin_id, minlength=n_bins).astype(float)
    sum_p = np.bincount(bin_id, weights=p, minlength=n_bins)
    sum_y = np.bincount(bin_id, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = sum_p / count
        frac_pos = sum_y / count
    return {
        "n_bins": n_bins,
        "bin_edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_predicted": mean_pred.tolist(),
        "fraction_positive": frac_pos.tolist(),
        "n": int(y.size),
    }


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |fraction_positive_b - mean_predicted_b| over non-empty bins."""
    rc = reliability_curve(y_true, y_prob, n_bins)
    return ece_from_curve(rc)


def ece_from_curve(rc: dict) -> float:
    count = np.asarray(rc["count"], dtype=float)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(rc["fraction_positive"], float) - np.asarray(rc["mean_predicted"], float))
    nonempty = count > 0
    return float(np.sum(count[nonempty] * gap[nonempty]) / count.sum())
