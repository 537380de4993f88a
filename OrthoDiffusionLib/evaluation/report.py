"""Write an evaluation report: one JSON, tidy CSV tables and PNG figures, all atomically and all
carrying the research-use disclaimer.

``report`` keys (each optional): ``classification`` (:func:`evaluate_classification`),
``segmentation`` (:func:`evaluate_segmentation` / :func:`summarize_segmentation`), ``breakdowns``
(:func:`breakdown_classification`), ``plane_weights`` (:func:`plane_weight_summary`),
``label_efficiency`` (rows of :func:`label_efficiency_table` or its input), ``comparisons``
(list of :func:`compare_auroc` results, optionally with "name"), ``meta`` (free-form dict).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np

from .. import csvsafe  # formula-safe cells in every CSV the tool writes
from .. import DISCLAIMER, __version__
from ..errors import InputError
from ..storage import atomic_write_json, atomic_write_text
from . import plots
from .breakdown import breakdown_rows
from .efficiency import label_efficiency_table
from .planes import plane_weight_rows

KNOWN_KEYS = ("classification", "segmentation", "breakdowns", "plane_weights", "label_efficiency",
              "comparisons", "meta")


def json_safe(obj):
    """NaN / inf -> None, numpy -> Python, tuples -> lists (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """CSV with a first comment line holding the disclaimer; NaN/None as empty cells."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    buf.write(f"# {DISCLAIMER}\n")
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"
    if isinstance(v, (list, tuple)):
        return "; ".join(str(x) for x in v)
    return v


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "column"


def write_evaluation(report: dict, out_dir, plots_enabled: bool = True) -> dict[str, list[str]]:
    """Write ``evaluation.json`` plus the CSV tables and PNG figures of each section present.

    Returns {"json": [...], "csv": [...], "png": [...]} with the written paths.
    """
    unknown = set(report) - set(KNOWN_KEYS)
    if unknown:
        raise InputError(f"unknown report sections: {sorted(unknown)} (known: {', '.join(KNOWN_KEYS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": [], "csv": [], "png": []}

    def csv_(name, rows, columns=None):
        written["csv"].append(str(write_csv(out / name, rows, columns)))

    def png(name, fn, data):
        if plots_enabled:
            fn(data, out / name)
            written["png"].append(str(out / name))

    body = dict(report)
    cls = report.get("classification")
    if cls:
        rows = []
        for r in cls["per_label"]:
            flat = {k: v for k, v in r.items() if k not in ("roc", "reliability")}
            rows.append(flat)
        m = cls["macro_auroc"]
        rows.append({"label": "macro", "auroc": m["value"], "auroc_ci_low": m["ci_low"], "auroc_ci_high": m["ci_high"],
                     "skipped_reason": "; ".join(f"{k}: {v}" for k, v in m["skipped"].items()) or None})
        csv_("classification_per_label.csv", rows)
        png("roc_curves.png", plots.plot_roc_grid, cls)
        png("reliability.png", plots.plot_reliability, cls)
    seg = report.get("segmentation")
    if seg:
        csv_("segmentation_per_structure.csv", seg["per_structure"])
        csv_("segmentation_per_case.csv", seg["per_case"], ["case_id", "structure", "value", "dice", "hd95", "status"])
        png("dice_boxplot.png", plots.plot_dice_box, seg)
    for column, entry in (report.get("breakdowns") or {}).items():
        csv_(f"breakdown_{_slug(column)}.csv", breakdown_rows({column: entry}))
        png(f"breakdown_{_slug(column)}.png", plots.plot_breakdown, entry)
    pw = report.get("plane_weights")
    if pw:
        csv_("plane_weights.csv", plane_weight_rows(pw))
        png("plane_weights.png", plots.plot_plane_weights, pw)
    eff = report.get("label_efficiency")
    if eff:
        rows = eff if all("label" in r for r in eff) else label_efficiency_table(eff)
        body["label_efficiency"] = rows
        csv_("label_efficiency.csv", rows, ["method", "fraction", "label", "n_cases", "auroc", "ci_low", "ci_high"])
        png("label_efficiency.png", plots.plot_label_efficiency, rows)
    comps = report.get("comparisons")
    if comps:
        csv_("auroc_comparisons.csv", comps)
    doc = {"disclaimer": DISCLAIMER, "orthodiffusion_version": __version__, **json_safe(body)}
    written["json"].append(str(atomic_write_json(out / "evaluation.json", doc)))
    return written
