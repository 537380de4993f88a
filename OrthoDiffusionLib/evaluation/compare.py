"""Paired comparison of two models' AUROC on the same cases: DeLong or paired bootstrap.

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837, in the mid-rank form of
Sun & Xu (2014), IEEE Signal Processing Letters 21:1389.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from ..errors import InputError
from . import _vectorised as vx


def _structural_components(pos: np.ndarray, neg: np.ndarray):
    """AUC and DeLong placement values for one or more score rows (pos [M, m], neg [M, n])."""
    m, n = pos.shape[1], neg.shape[1]
    both = np.concatenate([pos, neg], axis=1)
    r_all = rankdata(both, axis=1)
    r_pos = rankdata(pos, axis=1)
    r_neg = rankdata(neg, axis=1)
    v10 = (r_all[:, :m] - r_pos) / n  # per positive: fraction of negatives below (ties 1/2)
    v01 = 1.0 - (r_all[:, m:] - r_neg) / m  # per negative: fraction of positives above
    auc = v10.mean(axis=1)
    return auc, v10, v01


def delong_test(y_true, prob_a, prob_b, ci: float = 0.95) -> dict:
    """DeLong paired test of AUROC(a) - AUROC(b). Cases with a NaN label are dropped."""
    y, a, b = _paired(y_true, prob_a, prob_b)
    pos, neg = y == 1, y == 0
    scores = np.stack([a, b])
    auc, v10, v01 = _structural_components(scores[:, pos], scores[:, neg])
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    cov = s10 / pos.sum() + s01 / neg.sum()
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(max(var, 0.0)))
    z_crit = norm.ppf(0.5 + ci / 2)
    if se > 0:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    else:
        z, p = (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
    return {"method": "delong", "n": int(y.size), "n_pos": int(pos.sum()), "n_neg": int(neg.sum()),
            "auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "difference": diff, "se": se,
            "z": float(z), "p_value": p, "ci_level": ci,
            "ci_low": float(diff - z_crit * se), "ci_high": float(diff + z_crit * se)}


def bootstrap_auroc_difference(y_true, prob_a, prob_b, n_boot: int = 2000, seed: int = 0,
                               ci: float = 0.95) -> dict:
    """Paired, stratified case-level bootstrap of AUROC(a) - AUROC(b): the same resampled cases
    score both models. p-value: two-sided, from the share of resampled differences on the other
    side of zero (with the +1 correction), capped at 1."""
    y, a, b = _paired(y_true, prob_a, prob_b)
    rng = np.random.default_rng([int(seed), 20_000])
    idx = vx.stratified_indices(y, int(n_boot), rng)
    d = vx.auroc_rows(a[idx], y[idx]) - vx.auroc_rows(b[idx], y[idx])
    diff = float(roc_auc_score(y, a) - roc_auc_score(y, b))
    lo, hi = vx.percentile_ci(d, ci)
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    p = float(min(1.0, 2 * (tail + 1) / (d.size + 1)))
    return {"method": "bootstrap", "n": int(y.size), "n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()),
            "auroc_a": float(roc_auc_score(y, a)), "auroc_b": float(roc_auc_score(y, b)),
            "difference": diff, "se": float(np.std(d, ddof=1)), "p_value": p, "ci_level": ci,
            "ci_low": lo, "ci_high": hi, "n_boot": int(n_boot), "seed": int(seed)}


def compare_auroc(y_true, prob_a, prob_b, method: str = "delong", **kwargs) -> dict:
    """Dispatch to :func:`delong_test` or :func:`bootstrap_auroc_difference`."""
    if method == "delong":
        return delong_test(y_true, prob_a, prob_b, **kwargs)
    if method == "bootstrap":
        return bootstrap_auroc_difference(y_true, prob_a, prob_b, **kwargs)
    raise InputError(f"unknown comparison method '{method}' (use 'delong' or 'bootstrap')")


def _paired(y_true, prob_a, prob_b):
    y = np.asarray(y_true, dtype=float).ravel()
    a = np.asarray(prob_a, dtype=float).ravel()
    b = np.asarray(prob_b, dtype=float).ravel()
    if not (y.shape == a.shape == b.shape):
        raise InputError("y_true, prob_a and prob_b must describe the same cases (same length)")
    keep = ~np.isnan(y)
    y, a, b = y[keep], a[keep], b[keep]
    if not (np.any(y == 1) and np.any(y == 0)):
        raise InputError("comparing AUROCs needs both positive and negative cases")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("probabilities must be finite for labelled cases")
    return y, a, b
