"""write_evaluation: every file written, strict JSON with the disclaimer, CSV/PNG carry it too."""

from __future__ import annotations

import json

import numpy as np

from OrthoDiffusionLib import DISCLAIMER
from OrthoDiffusionLib.evaluation import (
    breakdown_classification,
    delong_test,
    evaluate_classification,
    evaluate_segmentation,
    plane_weight_summary,
    write_evaluation,
)


def _report():
    rng = np.random.default_rng(0)
    n, labels = 60, ["ACL", "PCL", "MM"]
    y = (rng.random((n, 3)) < 0.4).astype(float)
    y[:, 1] = 0.0  # skipped label -> NaN metrics must become null in JSON
    p = np.clip(0.4 * y + 0.6 * rng.random((n, 3)), 0, 1)
    gt = np.zeros((10, 10, 6), int)
    gt[2:6, 2:6, 1:4] = 1
    seg_cases = [{"pred": gt, "gt": gt, "spacing": (1.0, 1.0, 2.0)}, {"pred": np.zeros_like(gt), "gt": gt}]
    cls = evaluate_classification(y, p, labels=labels, n_boot=50)
    return {
        "classification": cls,
        "segmentation": evaluate_segmentation(seg_cases, {"femur": 1, "tibia": 2}, n_boot=50),
        "breakdowns": breakdown_classification(y, p, {"center": rng.choice(["A", "B"], n).tolist()}, "center",
                                               labels=labels, n_boot=50),
        "plane_weights": plane_weight_summary(rng.dirichlet([1, 1, 1], (n, 3)), y, p, labels=labels),
        "label_efficiency": [{"method": "m", "fraction": f, "report": cls} for f in (0.1, 1.0)],
        "comparisons": [{"name": "ACL a vs b", **delong_test(y[:, 0], p[:, 0], rng.random(n))}],
        "meta": {"model": "test"},
    }


def test_write_evaluation_writes_all_files(tmp_path):
    written = write_evaluation(_report(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    expected = {"evaluation.json", "classification_per_label.csv", "segmentation_per_structure.csv",
                "segmentation_per_case.csv", "breakdown_center.csv", "plane_weights.csv", "label_efficiency.csv",
                "auroc_comparisons.csv", "roc_curves.png", "reliability.png", "dice_boxplot.png",
                "breakdown_center.png", "plane_weights.png", "label_efficiency.png"}
    assert names == expected  # and no temporary files left behind
    assert sum(len(v) for v in written.values()) == len(expected)

    text = (tmp_path / "evaluation.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict: no NaN
    assert doc["disclaimer"] == DISCLAIMER
    assert doc["classification"]["per_label"][1]["auroc"] is None
    assert doc["classification"]["macro_auroc"]["skipped"] == {"PCL": "no positive cases"}
    assert doc["meta"] == {"model": "test"}

    for csv_path in tmp_path.glob("*.csv"):
        lines = csv_path.read_text().splitlines()
        assert lines[0] == f"# {DISCLAIMER}" and len(lines) > 2
    seg_rows = (tmp_path / "segmentation_per_case.csv").read_text().splitlines()
    assert any("empty prediction" in r for r in seg_rows)

    from PIL import Image

    for png in tmp_path.glob("*.png"):
        with Image.open(png) as im:
            assert im.info.get("Description") == DISCLAIMER
            assert im.size[0] > 300 and im.size[1] > 300


def test_write_evaluation_partial_report(tmp_path):
    rep = _report()
    written = write_evaluation({"classification": rep["classification"]}, tmp_path, plots_enabled=False)
    assert {p.name for p in tmp_path.iterdir()} == {"evaluation.json", "classification_per_label.csv"}
    assert written["png"] == []


def test_one_figure_saver_keeps_the_disclaimer(tmp_path):
    """figure_png (used by the evaluation PNGs and the HTML reports): the disclaimer is the footer and
    the PNG Description, and extra metadata cannot replace it."""
    from PIL import Image

    from OrthoDiffusionLib.evaluation.plots import new_figure, save_figure

    fig = new_figure((4, 3))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png", "a title", dpi=50, metadata={"Layout": "{}", "Description": "other"})
    assert any(t.get_text() == DISCLAIMER for t in fig.texts)
    with Image.open(tmp_path / "f.png") as im:
        assert im.info["Description"] == DISCLAIMER and im.info["Title"] == "a title" and im.info["Layout"] == "{}"
        assert im.size == (200, 150)
