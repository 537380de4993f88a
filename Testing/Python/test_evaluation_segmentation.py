"""Segmentation metrics: agreement with MONAI, empty-mask cases, annotation masks, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.evaluation import evaluate_segmentation, segmentation_case_metrics, summarize_segmentation
from OrthoDiffusionLib.labelsets import load_label_set


def _blobs(seed=0, shape=(20, 22, 12)):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.int64)
    gt[2:10, 3:12, 2:7] = 1
    gt[11:18, 6:18, 4:10] = 2
    pred = gt.copy()
    pred[(rng.random(shape) < 0.08) & (gt == 1)] = 0  # holes
    pred[3:11, 12:14, 3:6] = 1  # over-segmentation
    pred[0:2, 0:2, 0:2] = 2  # a far-away false positive
    return pred, gt


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
def test_dice_and_hd95_match_monai_on_full_arrays():
    pred, gt = _blobs()
    spacing = (0.4, 0.4, 3.0)
    rows = segmentation_case_metrics(pred, gt, {"femur": 1, "tibia": 2}, spacing=spacing)
    onehot = lambda a: torch.as_tensor(np.stack([a == 1, a == 2])[None].astype(np.float32))  # noqa: E731
    dice = compute_dice(onehot(pred), onehot(gt), include_background=True)[0]
    hd = compute_hausdorff_distance(onehot(pred), onehot(gt), include_background=True, percentile=95,
                                    spacing=list(spacing))[0]
    for j, row in enumerate(rows):
        assert row["status"] == "ok"
        assert row["dice"] == pytest.approx(float(dice[j]), abs=1e-6)
        assert row["hd95"] == pytest.approx(float(hd[j]), abs=1e-5)
    assert rows[0]["hd95"] > 0 and 0 < rows[0]["dice"] < 1


def test_empty_cases_are_explicit():
    gt = np.zeros((8, 8, 8), int)
    gt[2:5, 2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:3] = 3
    rows = {r["structure"]: r for r in segmentation_case_metrics(pred, gt, [1, 2, 3])}
    assert rows["1"]["status"] == "empty prediction" and rows["1"]["dice"] == 0.0 and np.isnan(rows["1"]["hd95"])
    assert rows["2"]["status"] == "both empty" and rows["2"]["dice"] == 1.0 and rows["2"]["hd95"] == 0.0
    assert rows["3"]["status"] == "empty ground truth" and rows["3"]["dice"] == 0.0 and np.isnan(rows["3"]["hd95"])


def test_not_annotated_structures_are_ignored():
    pred, gt = _blobs()
    cases = [{"case_id": "a", "pred": pred, "gt": gt},
             {"case_id": "b", "pred": np.zeros_like(gt), "gt": gt, "annotated": ["femur"]}]
    rep = evaluate_segmentation(cases, {"femur": 1, "tibia": 2}, n_boot=100)
    tibia = rep["per_structure"][1]
    assert tibia["n_cases"] == 1 and tibia["n_not_annotated"] == 1
    assert tibia["dice_mean"] == pytest.approx(rep["per_case"][1]["dice"])
    femur = rep["per_structure"][0]
    assert femur["n_cases"] == 2 and femur["n_empty_prediction"] == 1
    assert femur["dice_mean"] == pytest.approx((rep["per_case"][0]["dice"] + 0.0) / 2)


def test_label_set_structures_and_shape_checks():
    ls = load_label_set("knee-11")
    pred, gt = _blobs()
    rows = segmentation_case_metrics(pred, gt, ls, spacing=(1, 1, 1))
    assert [r["structure"] for r in rows] == ls.keys
    assert sum(r["status"] == "both empty" for r in rows) == len(ls) - 2
    with pytest.raises(InputError):
        segmentation_case_metrics(pred, gt[:-1], ls)
    with pytest.raises(InputError):
        segmentation_case_metrics(pred, gt, ls, spacing=(1, 1))


def test_mean_dice_ci_contains_mean_deterministic_and_narrows():
    rng = np.random.default_rng(0)

    def rows(n):
        return [{"case_id": i, "structure": "s", "value": 1, "dice": float(d), "hd95": 1.0, "status": "ok"}
                for i, d in enumerate(np.clip(rng.normal(0.8, 0.1, n), 0, 1))]

    small, large = rows(20), rows(320)
    a = summarize_segmentation(small, n_boot=500, seed=3)
    b = summarize_segmentation(small, n_boot=500, seed=3)
    s = a["per_structure"][0]
    assert s["dice_ci_low"] <= s["dice_mean"] <= s["dice_ci_high"]
    assert a["per_structure"] == b["per_structure"] and a["macro_dice"] == b["macro_dice"]
    big = summarize_segmentation(large, n_boot=500, seed=3)["per_structure"][0]
    assert (big["dice_ci_high"] - big["dice_ci_low"]) < 0.5 * (s["dice_ci_high"] - s["dice_ci_low"])
