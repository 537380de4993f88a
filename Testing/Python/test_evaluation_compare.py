"""Paired AUROC comparison: DeLong against a brute-force DeLong and against the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.evaluation import bootstrap_auroc_difference, compare_auroc, delong_test


def _two_models(n=240, seed=0, gap=0.6):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    a = y * 1.2 + rng.normal(size=n)
    b = y * (1.2 - gap) + 0.5 * rng.normal(size=n) + 0.5 * a
    return y, np.round(a, 1), np.round(b, 1)


def _brute_force_delong(y, a, b):
    """DeLong et al. (1988) with the explicit psi kernel, O(m n)."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    cov = np.cov(np.array(v10)) / pos.sum() + np.cov(np.array(v01)) / neg.sum()
    return v10[0].mean() - v10[1].mean(), np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_matches_sklearn_and_brute_force():
    y, a, b = _two_models()
    res = delong_test(y, a, b)
    assert res["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert res["auroc_b"] == pytest.approx(roc_auc_score(y, b))
    diff, se = _brute_force_delong(y, a, b)
    assert res["difference"] == pytest.approx(diff)
    assert res["se"] == pytest.approx(se, rel=1e-10)
    assert res["ci_low"] < res["difference"] < res["ci_high"]
    assert 0.0 <= res["p_value"] <= 1.0


def test_delong_agrees_with_paired_bootstrap():
    y, a, b = _two_models(n=300, seed=2, gap=0.3)
    d = delong_test(y, a, b)
    bs = bootstrap_auroc_difference(y, a, b, n_boot=1500, seed=1)
    assert bs["difference"] == pytest.approx(d["difference"])
    assert bs["se"] == pytest.approx(d["se"], rel=0.2)
    assert bs["ci_low"] == pytest.approx(d["ci_low"], abs=0.03)
    assert bs["ci_high"] == pytest.approx(d["ci_high"], abs=0.03)
    assert bs == bootstrap_auroc_difference(y, a, b, n_boot=1500, seed=1)


def test_identical_models_and_clear_difference():
    y, a, _ = _two_models()
    same = compare_auroc(y, a, a)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    rng = np.random.default_rng(5)
    noise = rng.random(y.size)
    clear = compare_auroc(y, a, noise, method="delong")
    assert clear["difference"] > 0.2 and clear["p_value"] < 1e-4
    assert compare_auroc(y, a, noise, method="bootstrap", n_boot=500)["p_value"] < 0.01


def test_nan_labels_dropped_and_bad_input():
    y, a, b = _two_models()
    y2 = y.copy()
    y2[:40] = np.nan
    assert delong_test(y2, a, b)["n"] == y.size - 40
    assert delong_test(y2, a, b)["auroc_a"] == pytest.approx(roc_auc_score(y[40:], a[40:]))
    with pytest.raises(InputError):
        delong_test(np.zeros(10), a[:10], b[:10])
    with pytest.raises(InputError):
        compare_auroc(y, a, b, method="magic")
