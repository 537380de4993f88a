"""Per-label classification metrics with stratified, case-level percentile bootstrap CIs.

Inputs are ``y_true`` [N, K] (1 positive, 0 negative, NaN unknown / not labelled) and ``y_prob``
[N, K]. Every metric is computed per label on the cases whose label is known. Point estimates come
from scikit-learn; the bootstrap uses the row-wise kernels in ``_vectorised`` (checked against
scikit-learn in the tests).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from ..errors import InputError
from . import _vectorised as vx
from .calibration import ece_from_curve, reliability_curve

DEFAULT_MIN_POSITIVES = 5


def as_label_arrays(y_true, y_prob, labels=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate and return float arrays [N, K] and K label names (1-D inputs become K = 1)."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape or y.ndim != 2:
        raise InputError(f"y_true {y.shape} and y_prob {p.shape} must both be [N, K]")
    known = y[~np.isnan(y)]
    if known.size and not np.all((known == 0) | (known == 1)):
        raise InputError("y_true must contain only 0, 1 or NaN (unknown)")
    if not np.all(np.isfinite(p[~np.isnan(y)])):
        raise InputError("y_prob must be finite wherever the label is known")
    if labels is None:
        labels = [f"label_{k}" for k in range(y.shape[1])]
    labels = [str(x) for x in labels]
    if len(labels) != y.shape[1]:
        raise InputError(f"{len(labels)} label names for {y.shape[1]} columns")
    return y, p, labels


# ---------------------------------------------------------------- operating points
def threshold_youden(y_true, y_prob) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (predict positive if p >= t)."""
    y, p = _known(y_true, y_prob)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    j[~np.isfinite(thr)] = -np.inf  # the "predict nothing" point is not a usable threshold
    return float(thr[int(np.argmax(j))])


def threshold_for_sensitivity(y_true, y_prob, target: float = 0.9) -> float:
    """Highest threshold whose sensitivity on these cases is >= ``target`` (best specificity)."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"target sensitivity must be in (0, 1] (got {target})")
    y, p = _known(y_true, y_prob)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    ok = (tpr >= target - 1e-12) & np.isfinite(thr)
    return float(np.max(thr[ok]))


def choose_thresholds(y_true, y_prob, method: str = "youden", target_sensitivity: float = 0.9,
                      labels=None) -> dict[str, float]:
    """Per-label thresholds chosen on a validation set ("youden" or "sensitivity").

    Labels without both classes get NaN (no operating point can be chosen).
    """
    y, p, labels = as_label_arrays(y_true, y_prob, labels)
    if method not in ("youden", "sensitivity"):
        raise InputError(f"unknown threshold method '{method}' (use 'youden' or 'sensitivity')")
    out = {}
    for k, name in enumerate(labels):
        yk = y[:, k][~np.isnan(y[:, k])]
        if yk.size == 0 or yk.min() == yk.max():
            out[name] = float("nan")
        elif method == "youden":
            out[name] = threshold_youden(y[:, k], p[:, k])
        else:
            out[name] = threshold_for_sensitivity(y[:, k], p[:, k], target_sensitivity)
    return out


def resolve_thresholds(thresholds, labels: list[str]) -> np.ndarray:
    """None -> 0.5; scalar; sequence of K; or mapping label -> threshold (missing labels 0.5)."""
    k = len(labels)
    if thresholds is None:
        return np.full(k, 0.5)
    if isinstance(thresholds, dict):
        unknown = set(thresholds) - set(labels)
        if unknown:
            raise InputError(f"thresholds given for unknown labels: {sorted(unknown)}")
        return np.array([float(thresholds.get(name, 0.5)) for name in labels])
    arr = np.asarray(thresholds, dtype=float)
    if arr.ndim == 0:
        return np.full(k, float(arr))
    if arr.shape != (k,):
        raise InputError(f"expected {k} thresholds, got {arr.shape}")
    return arr


def _known(y_true, y_prob):
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    if y.size == 0 or y.min() == y.max():
        raise InputError("choosing a threshold needs both positive and negative cases")
    return y, p


# ---------------------------------------------------------------- metrics
def skip_reason(y_col: np.ndarray) -> str | None:
    """Why AUROC cannot be computed for this label column, or None."""
    known = y_col[~np.isnan(y_col)]
    if known.size == 0:
        return "no labelled cases"
    if not np.any(known == 1):
        return "no positive cases"
    if not np.any(known == 0):
        return "no negative cases"
    return None


def label_metrics(y_col, p_col, threshold: float, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                  n_bins: int = 10, min_positives: int = DEFAULT_MIN_POSITIVES, label: str = "label",
                  rng_key: int = 0, curves: bool = True) -> dict:
    """All metrics of one label column (NaN labels dropped) with bootstrap CIs."""
    y_col = np.asarray(y_col, dtype=float)
    p_col = np.asarray(p_col, dtype=float)
    keep = ~np.isnan(y_col)
    y, p = y_col[keep], p_col[keep]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    row = {"label": label, "n": int(y.size), "n_pos": n_pos, "n_neg": n_neg,
           "n_missing": int((~keep).sum()), "threshold": float(threshold)}
    flags = []
    reason = skip_reason(y_col)
    if reason is None and n_pos < min_positives:
        flags.append(f"fewer than {min_positives} positives")
    if reason is None and n_neg < min_positives:
        flags.append(f"fewer than {min_positives} negatives")
    nan = float("nan")
    for key in ("auroc", "ap", "sensitivity", "specificity"):
        row[key] = nan
        row[f"{key}_ci_low"] = nan
        row[f"{key}_ci_high"] = nan
    if reason is None:
        row["auroc"] = float(roc_auc_score(y, p))
        row["ap"] = float(average_precision_score(y, p))
    has_thr = bool(np.isfinite(threshold))
    if not has_thr:
        flags.append("no operating point (threshold is NaN)")
    if y.size and has_thr:
        pred = (p >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(y.astype(int), pred, labels=[0, 1]).ravel()
        row.update(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))
        row["sensitivity"] = float(tp / (tp + fn)) if tp + fn else nan
        row["specificity"] = float(tn / (tn + fp)) if tn + fp else nan
    if n_boot > 0 and y.size:
        rng = np.random.default_rng([int(seed), int(rng_key)])
        idx = vx.stratified_indices(y, int(n_boot), rng)
        ys, ps = y[idx], p[idx]
        samples = {}
        if has_thr:
            samples["sensitivity"], samples["specificity"] = vx.sens_spec_rows(ps, ys, threshold)
        if reason is None:
            samples["auroc"] = vx.auroc_rows(ps, ys)
            samples["ap"] = vx.average_precision_rows(ps, ys)
        for key, s in samples.items():
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = vx.percentile_ci(s, ci)
    rc = reliability_curve(y, p, n_bins)
    row["ece"] = ece_from_curve(rc)
    row["skipped_reason"] = reason
    row["flags"] = flags
    if curves:
        row["reliability"] = rc
        if reason is None:
            fpr, tpr, _ = roc_curve(y, p)
            row["roc"] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
    return row


def macro_auroc(y_true, y_prob, labels=None, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean AUROC over the labels that have both classes; skipped labels are listed with reasons.

    CI: case-level bootstrap resampling all labels jointly (so label correlations are kept),
    stratified on the used label with the fewest minority-class cases; a resample in which some other
    label loses a class averages over the labels that remain (counted in ``n_degenerate_resamples``).
    """
    y, p, labels = as_label_arrays(y_true, y_prob, labels)
    used, skipped = [], {}
    for k, name in enumerate(labels):
        reason = skip_reason(y[:, k])
        if reason is None:
            used.append(k)
        else:
            skipped[name] = reason
    out = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "labels_used": [labels[k] for k in used], "skipped": skipped, "n_degenerate_resamples": 0}
    if not used:
        return out
    per = [roc_auc_score(y[~np.isnan(y[:, k]), k], p[~np.isnan(y[:, k]), k]) for k in used]
    out["value"] = float(np.mean(per))
    if n_boot > 0:
        minority = [min((y[:, k] == 1).sum(), (y[:, k] == 0).sum()) for k in used]
        strat = used[int(np.argmin(minority))]
        rng = np.random.default_rng([int(seed), 10_000])
        idx = vx.stratified_indices(y[:, strat], int(n_boot), rng)
        boot = np.stack([vx.auroc_rows(p[idx, k], y[idx, k]) for k in used], axis=1)
        out["n_degenerate_resamples"] = int(np.isnan(boot).any(axis=1).sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN, dropped by the CI
            samples = np.nanmean(boot, axis=1)
        out["ci_low"], out["ci_high"] = vx.percentile_ci(samples, ci)
    return out


def evaluate_classification(y_true, y_prob, labels=None, thresholds=None, n_boot: int = 1000, seed: int = 0,
                            ci: float = 0.95, n_bins: int = 10, min_positives: int = DEFAULT_MIN_POSITIVES,
                            curves: bool = True) -> dict:
    """Per-label AUROC, AP, sensitivity/specificity at the thresholds, ECE (all with CIs where
    applicable) plus macro AUROC. The result is JSON-ready (NaN floats become null on writing)."""
    y, p, labels = as_label_arrays(y_true, y_prob, labels)
    thr = resolve_thresholds(thresholds, labels)
    per_label = [label_metrics(y[:, k], p[:, k], thr[k], n_boot=n_boot, seed=seed, ci=ci, n_bins=n_bins,
                               min_positives=min_positives, label=name, rng_key=k, curves=curves)
                 for k, name in enumerate(labels)]
    return {
        "labels": labels,
        "n_cases": int(y.shape[0]),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "ci_level": float(ci),
        "n_bins": int(n_bins),
        "per_label": per_label,
        "macro_auroc": macro_auroc(y, p, labels, n_boot=n_boot, seed=seed, ci=ci),
    }


def auroc(y_col, p_col) -> float:
    """AUROC of one label (sklearn) over the cases whose label is known; NaN unless both classes occur.
    The point estimate used while fitting and probing (``label_metrics`` adds CIs and the rest)."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y_col, dtype=float), np.asarray(p_col, dtype=float)
    known = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[known], p[known]
    if y.size == 0 or not 0 < y.sum() < y.size:
        return float("nan")
    return float(roc_auc_score(y.astype(int), p))


def auroc_per_label(y, p, keys) -> dict:
    """{"auroc": {key: value or None}, "macro_auroc": mean of the defined ones or None, "n": cases}."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    per = {key: auroc(y[:, k], p[:, k]) for k, key in enumerate(keys)}
    per = {k: (None if np.isnan(v) else v) for k, v in per.items()}
    vals = [v for v in per.values() if v is not None]
    return {"auroc": per, "macro_auroc": float(np.mean(vals)) if vals else None, "n": int(len(y))}
