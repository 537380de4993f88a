"""Classification metrics: agreement with scikit-learn, NaN handling, bootstrap CIs, thresholds, ECE."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.evaluation import (
    choose_thresholds,
    evaluate_classification,
    expected_calibration_error,
    macro_auroc,
    reliability_curve,
    threshold_for_sensitivity,
    threshold_youden,
)
from OrthoDiffusionLib.evaluation import _vectorised as vx


def _data(n=120, k=3, seed=0, missing=0.15, signal=0.35):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.35).astype(float)
    p = np.clip(signal * y + (1 - signal) * rng.random((n, k)), 0, 1)
    p = np.round(p, 2)  # ties on purpose
    y[rng.random((n, k)) < missing] = np.nan
    return y, p


def test_point_estimates_match_sklearn_on_known_cases():
    y, p = _data()
    thr = [0.4, 0.5, 0.6]
    rep = evaluate_classification(y, p, labels=["a", "b", "c"], thresholds=thr, n_boot=50)
    for k, row in enumerate(rep["per_label"]):
        m = ~np.isnan(y[:, k])
        assert row["n"] == m.sum() and row["n_missing"] == (~m).sum()
        assert row["auroc"] == pytest.approx(roc_auc_score(y[m, k], p[m, k]), abs=1e-12)
        assert row["ap"] == pytest.approx(average_precision_score(y[m, k], p[m, k]), abs=1e-12)
        tn, fp, fn, tp = confusion_matrix(y[m, k], (p[m, k] >= thr[k]).astype(int)).ravel()
        assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)


def test_nan_labels_are_excluded_per_label_only():
    y, p = _data(missing=0.0)
    y_nan = y.copy()
    y_nan[:30, 0] = np.nan  # only label 0 loses cases
    full = evaluate_classification(y, p, n_boot=0)["per_label"]
    part = evaluate_classification(y_nan, p, n_boot=0)["per_label"]
    assert part[0]["n"] == len(y) - 30
    assert part[0]["auroc"] == pytest.approx(roc_auc_score(y[30:, 0], p[30:, 0]))
    assert part[1]["auroc"] == full[1]["auroc"] and part[2]["ap"] == full[2]["ap"]


def test_vectorised_kernels_match_sklearn_with_ties_and_missing():
    rng = np.random.default_rng(3)
    rows_s, rows_y = [], []
    for _ in range(40):
        y = (rng.random(40) < 0.4).astype(float)
        y[:2] = [0, 1]
        y[rng.random(40) < 0.2] = np.nan
        y[:2] = [0, 1]
        rows_s.append(np.round(rng.random(40), 1))
        rows_y.append(y)
    s, y = np.array(rows_s), np.array(rows_y)
    auc, ap = vx.auroc_rows(s, y), vx.average_precision_rows(s, y)
    for i in range(len(s)):
        m = ~np.isnan(y[i])
        assert auc[i] == pytest.approx(roc_auc_score(y[i, m], s[i, m]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y[i, m], s[i, m]), abs=1e-12)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, p = _data(n=150)
    a = evaluate_classification(y, p, n_boot=300, seed=7)
    b = evaluate_classification(y, p, n_boot=300, seed=7)
    c = evaluate_classification(y, p, n_boot=300, seed=8)
    for ra, rb, rc in zip(a["per_label"], b["per_label"], c["per_label"]):
        for key in ("auroc", "ap", "sensitivity", "specificity"):
            assert ra[f"{key}_ci_low"] <= ra[key] <= ra[f"{key}_ci_high"]
            assert ra[f"{key}_ci_low"] == rb[f"{key}_ci_low"] and ra[f"{key}_ci_high"] == rb[f"{key}_ci_high"]
        assert (ra["auroc_ci_low"], ra["auroc_ci_high"]) != (rc["auroc_ci_low"], rc["auroc_ci_high"])
    m = a["macro_auroc"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert m == b["macro_auroc"]


def test_bootstrap_ci_narrows_with_more_cases():
    widths = []
    for n in (60, 240, 960):
        y, p = _data(n=n, k=1, seed=1, missing=0.0)
        row = evaluate_classification(y, p, n_boot=400, seed=0, curves=False)["per_label"][0]
        widths.append(row["auroc_ci_high"] - row["auroc_ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # ~ sqrt(16) = 4 expected


def test_stratified_resamples_keep_class_counts():
    y = np.array([1.0] * 3 + [0.0] * 20 + [np.nan] * 4)
    idx = vx.stratified_indices(y, 200, np.random.default_rng(0))
    assert np.all((y[idx] == 1).sum(axis=1) == 3)
    assert np.all((y[idx] == 0).sum(axis=1) == 20)


def test_bootstrap_is_fast_enough():
    y, p = _data(n=200, k=8, missing=0.1)
    t0 = time.perf_counter()
    evaluate_classification(y, p, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 8.0  # typically ~0.5 s; generous for shared CPUs


def test_macro_auroc_skips_labels_without_both_classes():
    y, p = _data(k=4, missing=0.0)
    y[:, 1] = 0.0
    y[:, 3] = np.nan
    m = macro_auroc(y, p, labels=["ACL", "PCL", "MM", "LM"], n_boot=100)
    assert m["labels_used"] == ["ACL", "MM"]
    assert m["skipped"] == {"PCL": "no positive cases", "LM": "no labelled cases"}
    assert m["value"] == pytest.approx(np.mean([roc_auc_score(y[:, k], p[:, k]) for k in (0, 2)]))
    rep = evaluate_classification(y, p, labels=["ACL", "PCL", "MM", "LM"], n_boot=50)
    pcl = rep["per_label"][1]
    assert pcl["skipped_reason"] == "no positive cases" and np.isnan(pcl["auroc"])
    assert pcl["specificity"] == pytest.approx(np.mean(p[:, 1] < 0.5))  # still defined


def test_few_positives_are_flagged():
    y, p = _data(k=1, missing=0.0)
    y[:, 0] = 0.0
    y[:3, 0] = 1.0
    row = evaluate_classification(y, p, n_boot=20, min_positives=5)["per_label"][0]
    assert row["skipped_reason"] is None and "fewer than 5 positives" in row["flags"]


def test_thresholds_youden_and_target_sensitivity():
    y, p = _data(k=1, n=200, missing=0.0)
    y, p = y[:, 0], p[:, 0]
    t = threshold_youden(y, p)
    j = lambda th: np.mean(p[y == 1] >= th) + np.mean(p[y == 0] < th) - 1  # noqa: E731
    assert j(t) == pytest.approx(max(j(c) for c in np.unique(p)))
    ts = threshold_for_sensitivity(y, p, 0.9)
    assert np.mean(p[y == 1] >= ts) >= 0.9
    higher = np.unique(p)[np.unique(p) > ts]
    assert all(np.mean(p[y == 1] >= h) < 0.9 for h in higher)
    both = choose_thresholds(np.c_[y, np.zeros_like(y)], np.c_[p, p], labels=["x", "none"])
    assert both["x"] == pytest.approx(t) and np.isnan(both["none"])
    rep = evaluate_classification(y, p, thresholds={"label_0": ts}, n_boot=0)
    assert rep["per_label"][0]["sensitivity"] >= 0.9
    with pytest.raises(InputError):
        threshold_youden(np.zeros(5), np.linspace(0, 1, 5))
    # a label whose validation threshold could not be chosen gets no operating point, not a silent 0.5
    none = evaluate_classification(np.c_[y, y], np.c_[p, p], labels=["x", "none"], thresholds=both, n_boot=20)
    assert np.isnan(none["per_label"][1]["sensitivity"]) and np.isnan(none["per_label"][1]["specificity_ci_low"])
    assert any("no operating point" in f for f in none["per_label"][1]["flags"])
    assert none["per_label"][0]["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= t))


def test_ece_zero_when_calibrated_and_large_when_not():
    # 5 equal-width bins; each bin holds 10 cases at p = 0.1, 0.3, ..., 0.9 with exactly 10 p positives
    probs = np.repeat([0.1, 0.3, 0.5, 0.7, 0.9], 10)
    ys = np.concatenate([[1.0] * int(round(10 * c)) + [0.0] * (10 - int(round(10 * c))) for c in (0.1, 0.3, 0.5, 0.7, 0.9)])
    assert expected_calibration_error(ys, probs, n_bins=5) == pytest.approx(0.0, abs=1e-12)
    # confidently wrong: predicts 0.95 for negatives and 0.05 for positives -> gap 0.95 in both bins
    bad = expected_calibration_error(np.r_[np.zeros(50), np.ones(50)], np.r_[np.full(50, 0.95), np.full(50, 0.05)])
    assert bad == pytest.approx(0.95)
    # ECE is the count-weighted mean gap: one bin off by 0.3 holding a quarter of the cases -> 0.075
    off = expected_calibration_error([0, 0, 0, 1] + [0] * 12, [0.55] * 4 + [0.0] * 12, n_bins=10)
    assert off == pytest.approx(4 / 16 * 0.30)
    rc = reliability_curve([0, 1, 1], [0.1, 0.1, 1.0], n_bins=10)
    assert rc["count"][1] == 2 and rc["count"][9] == 1 and rc["fraction_positive"][1] == 0.5
    assert np.isnan(rc["mean_predicted"][5])


def test_input_validation():
    with pytest.raises(InputError):
        evaluate_classification(np.array([[0, 2]]), np.array([[0.1, 0.2]]))
    with pytest.raises(InputError):
        evaluate_classification(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(InputError):
        evaluate_classification(np.zeros((3, 2)), np.zeros((3, 2)), thresholds={"nope": 0.3})
