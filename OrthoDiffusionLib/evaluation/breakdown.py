"""Classification metrics per subgroup (center, field strength, any metadata column).

Each group is evaluated exactly as :func:`evaluate_classification` on the subset of its cases, so
per-group numbers (and, with the same seed, CIs) equal a direct computation on that subset. Groups
where a label has too few positives or negatives are flagged, never an error.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from .classification import DEFAULT_MIN_POSITIVES, as_label_arrays, evaluate_classification

MISSING_GROUP = "(missing)"


def metadata_column(metadata, column: str, n: int) -> list[str]:
    """One column of ``metadata`` (a {column: values} mapping or a list of per-case dicts) as strings."""
    if isinstance(metadata, dict):
        if column not in metadata:
            raise InputError(f"metadata has no column '{column}' (columns: {', '.join(map(str, metadata))})")
        values = list(metadata[column])
    else:
        values = [row.get(column) if isinstance(row, dict) else None for row in metadata]
        if all(v is None for v in values):
            raise InputError(f"metadata has no column '{column}'")
    if len(values) != n:
        raise InputError(f"metadata column '{column}' has {len(values)} values for {n} cases")
    return [_group_name(v) for v in values]


def _group_name(v) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        return MISSING_GROUP
    if isinstance(v, (float, np.floating)) and math.isnan(float(v)):
        return MISSING_GROUP
    return str(v.item() if isinstance(v, np.generic) else v)


def breakdown_classification(y_true, y_prob, metadata, by, labels=None, thresholds=None, n_boot: int = 1000,
                             seed: int = 0, ci: float = 0.95, n_bins: int = 10,
                             min_positives: int = DEFAULT_MIN_POSITIVES, curves: bool = False) -> dict:
    """{column: {"column", "groups": [{"group", "n", "flags", "report"}]}} for each column in ``by``.

    ``report`` is the full :func:`evaluate_classification` result of the group's cases. A group's
    ``flags`` name the labels whose metrics are unavailable or rest on fewer than ``min_positives``
    positives or negatives.
    """
    y, p, labels = as_label_arrays(y_true, y_prob, labels)
    columns = [by] if isinstance(by, str) else list(by)
    out = {}
    for column in columns:
        groups = metadata_column(metadata, column, y.shape[0])
        entries = []
        for g in sorted(set(groups), key=lambda s: (s == MISSING_GROUP, s)):
            mask = np.array([x == g for x in groups])
            report = evaluate_classification(y[mask], p[mask], labels=labels, thresholds=thresholds,
                                             n_boot=n_boot, seed=seed, ci=ci, n_bins=n_bins,
                                             min_positives=min_positives, curves=curves)
            flags = []
            for row in report["per_label"]:
                if row["skipped_reason"]:
                    flags.append(f"{row['label']}: {row['skipped_reason']}")
                flags += [f"{row['label']}: {f}" for f in row["flags"]]
            entries.append({"group": g, "n": int(mask.sum()), "flags": flags, "report": report})
        out[column] = {"column": column, "groups": entries}
    return out


def breakdown_rows(breakdown: dict) -> list[dict]:
    """Tidy rows (column, group, n_group, label, metrics...) for CSV output and plotting."""
    rows = []
    for column, entry in breakdown.items():
        for grp in entry["groups"]:
            for row in grp["report"]["per_label"]:
                flat = {k: v for k, v in row.items() if k not in ("roc", "reliability", "flags")}
                flat["flags"] = "; ".join(row["flags"])
                rows.append({"column": column, "group": grp["group"], "n_group": grp["n"], **flat})
            m = grp["report"]["macro_auroc"]
            rows.append({"column": column, "group": grp["group"], "n_group": grp["n"], "label": "macro",
                         "auroc": m["value"], "auroc_ci_low": m["ci_low"], "auroc_ci_high": m["ci_high"],
                         "flags": "; ".join(f"{k}: {v}" for k, v in m["skipped"].items())})
    return rows
