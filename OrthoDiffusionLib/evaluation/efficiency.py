"""Label-efficiency results: macro (and per-label) AUROC per label fraction and method, as a tidy
table (one row per method, fraction and label; label "macro" for the macro AUROC)."""

from __future__ import annotations

import math

from ..errors import InputError


def label_efficiency_table(results) -> list[dict]:
    """Tidy rows from ``results``.

    ``results`` is either a list of dicts ``{"method", "fraction", "report"}`` (``report`` an
    :func:`evaluate_classification` result) or ``{"method", "fraction", "macro_auroc"[, "ci_low",
    "ci_high", "n_cases"]}``, or a mapping ``{method: {fraction: report}}``.
    """
    if isinstance(results, dict):
        results = [{"method": m, "fraction": f, "report": r} for m, by_f in results.items() for f, r in by_f.items()]
    rows = []
    for entry in results:
        try:
            method, fraction = str(entry["method"]), float(entry["fraction"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"label-efficiency entry needs 'method' and a numeric 'fraction': {exc}") from exc
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"label fraction must be in (0, 1], got {fraction} for method {method}")
        base = {"method": method, "fraction": fraction}
        if "report" in entry:
            rep = entry["report"]
            m = rep["macro_auroc"]
            rows.append({**base, "label": "macro", "n_cases": rep["n_cases"], "auroc": m["value"],
                         "ci_low": m["ci_low"], "ci_high": m["ci_high"]})
            for row in rep["per_label"]:
                rows.append({**base, "label": row["label"], "n_cases": row["n"], "auroc": row["auroc"],
                             "ci_low": row["auroc_ci_low"], "ci_high": row["auroc_ci_high"]})
        elif "macro_auroc" in entry:
            rows.append({**base, "label": "macro", "n_cases": entry.get("n_cases"),
                         "auroc": float(entry["macro_auroc"]), "ci_low": float(entry.get("ci_low", math.nan)),
                         "ci_high": float(entry.get("ci_high", math.nan))})
        else:
            raise InputError(f"label-efficiency entry for {method} @ {fraction} has neither 'report' nor 'macro_auroc'")
    rows.sort(key=lambda r: (r["method"], r["fraction"], r["label"] != "macro", r["label"]))
    return rows
