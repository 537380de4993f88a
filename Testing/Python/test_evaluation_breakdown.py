"""Subgroup breakdowns, plane-weight summaries and the label-efficiency table."""

from __future__ import annotations

import numpy as np
import pytest

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.evaluation import (
    breakdown_classification,
    breakdown_rows,
    evaluate_classification,
    label_efficiency_table,
    plane_weight_summary,
)

LABELS = ["ACL", "MM"]


def _data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.35).astype(float)
    p = np.clip(0.4 * y + 0.6 * rng.random((n, 2)), 0, 1)
    y[rng.random((n, 2)) < 0.1] = np.nan
    centers = rng.choice(["A", "B", "C"], n).tolist()
    return y, p, centers


def test_group_numbers_equal_direct_subset_computation():
    y, p, centers = _data()
    bd = breakdown_classification(y, p, {"center": centers}, "center", labels=LABELS, n_boot=200, seed=4)
    groups = bd["center"]["groups"]
    assert [g["group"] for g in groups] == ["A", "B", "C"]
    for g in groups:
        mask = np.array(centers) == g["group"]
        direct = evaluate_classification(y[mask], p[mask], labels=LABELS, n_boot=200, seed=4, curves=False)
        assert g["n"] == mask.sum()
        assert g["report"]["per_label"] == direct["per_label"]  # values and CIs identical
        assert g["report"]["macro_auroc"] == direct["macro_auroc"]


def test_small_groups_are_flagged_not_fatal():
    y, p, _ = _data()
    meta = [{"field_strength": 3.0} for _ in range(len(y))]
    meta[0] = {"field_strength": 1.5}
    meta[1] = {"field_strength": 1.5}
    meta[2] = {"field_strength": None}
    bd = breakdown_classification(y, p, meta, ["field_strength"], labels=LABELS, n_boot=50)
    groups = {g["group"]: g for g in bd["field_strength"]["groups"]}
    assert set(groups) == {"1.5", "3.0", "(missing)"}
    assert groups["1.5"]["n"] == 2 and groups["1.5"]["flags"]
    rows = breakdown_rows(bd)
    assert {r["label"] for r in rows} == {"ACL", "MM", "macro"}
    assert len(rows) == 3 * 3


def test_metadata_errors():
    y, p, centers = _data()
    with pytest.raises(InputError):
        breakdown_classification(y, p, {"center": centers}, "scanner", n_boot=0)
    with pytest.raises(InputError):
        breakdown_classification(y, p, {"center": centers[:-1]}, "center", n_boot=0)


def test_plane_weight_summary_splits_true_positives():
    y = np.array([[1.0], [1.0], [0.0], [0.0], [np.nan]])
    p = np.array([[0.9], [0.2], [0.8], [0.1], [0.9]])
    w = np.array([[[0.6, 0.3, 0.1]], [[0.2, 0.2, 0.6]], [[0.4, 0.4, 0.2]], [[0.3, 0.3, 0.4]], [[1.0, 0.0, 0.0]]])
    s = plane_weight_summary(w, y, p, thresholds=0.5, labels=["ACL"])
    g = s["per_label"][0]["groups"]
    assert s["planes"] == ["sagittal", "coronal", "axial"]
    assert g["true_positive"]["n"] == 1 and g["true_positive"]["mean"] == pytest.approx([0.6, 0.3, 0.1])
    assert np.isnan(g["true_positive"]["sd"]).all()
    assert g["other"]["n"] == 3
    assert g["other"]["mean"] == pytest.approx(w[1:4, 0].mean(axis=0))
    assert g["other"]["sd"] == pytest.approx(w[1:4, 0].std(axis=0, ddof=1))
    assert g["all"]["n"] == 5
    with pytest.raises(InputError):
        plane_weight_summary(w[:, :, :2], y, p)


def test_label_efficiency_table_is_tidy_and_sorted():
    y, p, _ = _data()
    rep = evaluate_classification(y, p, labels=LABELS, n_boot=50, curves=False)
    rows = label_efficiency_table({"scratch": {1.0: rep, 0.1: rep}})
    assert [(r["fraction"], r["label"]) for r in rows] == [(0.1, "macro"), (0.1, "ACL"), (0.1, "MM"),
                                                         (1.0, "macro"), (1.0, "ACL"), (1.0, "MM")]
    assert rows[0]["auroc"] == rep["macro_auroc"]["value"]
    simple = label_efficiency_table([{"method": "m", "fraction": 0.5, "macro_auroc": 0.8, "ci_low": 0.7, "ci_high": 0.9}])
    assert simple == [{"method": "m", "fraction": 0.5, "label": "macro", "n_cases": None, "auroc": 0.8,
                       "ci_low": 0.7, "ci_high": 0.9}]
    with pytest.raises(InputError):
        label_efficiency_table([{"method": "m", "fraction": 2.0, "macro_auroc": 0.8}])
