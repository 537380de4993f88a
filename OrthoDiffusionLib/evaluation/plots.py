"""Matplotlib figures for evaluation reports (Agg canvas, no pyplot state; atomic PNG writes).

Every figure carries the research-use disclaimer as a footer and in the PNG "Description" field:
:func:`OrthoDiffusionLib.figures.figure_png` is the one place a figure becomes a PNG.
"""

from __future__ import annotations

import math

import numpy as np

from ..figures import figure_png, new_figure, save_figure  # noqa: F401  (the one figure saver)

PLANE_COLOURS = ("#4C72B0", "#DD8452", "#55A868")


def _figure(n_panels: int = 1, ncols: int = 4, panel: float = 3.0, wide: tuple | None = None):
    if wide is not None:
        fig = new_figure(wide)
        return fig, [fig.add_subplot(1, 1, 1)]
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = new_figure((panel * ncols, panel * nrows + 0.6))
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _fmt_ci(v, lo, hi) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def plot_roc_grid(cls_report: dict, path) -> None:
    rows = cls_report["per_label"]
    fig, axes = _figure(len(rows))
    for ax, row in zip(axes, rows):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        if row.get("roc"):
            ax.plot(row["roc"]["fpr"], row["roc"]["tpr"], lw=1.6)
            ax.set_title(f"{row['label']}  AUROC {_fmt_ci(row['auroc'], row['auroc_ci_low'], row['auroc_ci_high'])}",
                         fontsize=8)
        else:
            ax.set_title(f"{row['label']}: {row.get('skipped_reason') or 'no curve'}", fontsize=8)
        ax.text(0.98, 0.03, f"n+={row['n_pos']}  n-={row['n_neg']}", ha="right", fontsize=7, transform=ax.transAxes)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.set_xlabel("1 - specificity", fontsize=8), ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)
    save_figure(fig, path, f"ROC curves (n = {cls_report['n_cases']} cases, {int(cls_report['ci_level'] * 100)}% CI)")


def plot_reliability(cls_report: dict, path) -> None:
    rows = cls_report["per_label"]
    fig, axes = _figure(len(rows))
    for ax, row in zip(axes, rows):
        rc = row.get("reliability")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        if rc and rc["n"]:
            cnt = np.asarray(rc["count"], float)
            ok = cnt > 0
            x = np.asarray(rc["mean_predicted"], float)[ok]
            y = np.asarray(rc["fraction_positive"], float)[ok]
            ax.plot(x, y, marker="o", lw=1.2)
            ax.scatter(x, y, s=10 + 200 * cnt[ok] / cnt.max(), alpha=0.3)
        ax.set_title(f"{row['label']}  ECE {row['ece']:.3f}" if not math.isnan(row["ece"]) else row["label"], fontsize=8)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean predicted probability", fontsize=8), ax.set_ylabel("observed fraction positive", fontsize=8)
        ax.tick_params(labelsize=7)
    save_figure(fig, path, f"Reliability diagrams ({cls_report['n_bins']} equal-width bins; marker area ~ cases)")


def plot_breakdown(entry: dict, path) -> None:
    """Grouped bars: AUROC per label (+ macro) for each group, CI whiskers; hatched = flagged."""
    groups = entry["groups"]
    labels = groups[0]["report"]["labels"] + ["macro"] if groups else []
    fig, (ax,) = _figure(wide=(min(16, max(8, 0.35 * len(labels) * max(1, len(groups)) + 3)), 4.8))
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(labels))
    for gi, grp in enumerate(groups):
        rep = grp["report"]
        vals, lo, hi, hatch = [], [], [], []
        for row in rep["per_label"]:
            vals.append(row["auroc"]), lo.append(row["auroc_ci_low"]), hi.append(row["auroc_ci_high"])
            hatch.append(bool(row["flags"]) or row["skipped_reason"] is not None)
        m = rep["macro_auroc"]
        vals.append(m["value"]), lo.append(m["ci_low"]), hi.append(m["ci_high"]), hatch.append(bool(m["skipped"]))
        v, lo, hi = (np.nan_to_num(np.asarray(a, float)) for a in (vals, lo, hi))
        err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
        err[:, np.isnan(np.asarray(lo, float))] = 0
        pos = x - 0.4 + width * (gi + 0.5)
        bars = ax.bar(pos, v, width, yerr=err, capsize=2, label=f"{grp['group']} (n={grp['n']})", alpha=0.85)
        for b, h in zip(bars, hatch):
            if h:
                b.set_hatch("//")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.05), ax.set_ylabel("AUROC")
    ax.axhline(0.5, ls="--", color="grey", lw=0.8)
    ax.legend(fontsize=8, title=entry["column"], title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path, f"AUROC by {entry['column']} (whiskers: bootstrap CI; hatched: few positives/skipped)")


def plot_plane_weights(summary: dict, path) -> None:
    """Stacked bars (sagittal / coronal / axial mean weight) per label, true positives vs others."""
    entries = summary["per_label"]
    fig, (ax,) = _figure(wide=(max(8, 1.2 * len(entries) + 2), 4.8))
    x = np.arange(len(entries))
    for off, group, tag in ((-0.2, "true_positive", "TP"), (0.2, "other", "other")):
        bottom = np.zeros(len(entries))
        for i, plane in enumerate(summary["planes"]):
            h = np.nan_to_num([e["groups"][group]["mean"][i] for e in entries])
            ax.bar(x + off, h, 0.38, bottom=bottom, color=PLANE_COLOURS[i % 3], edgecolor="white",
                   hatch="" if group == "true_positive" else "..", label=plane if off < 0 else None)
            bottom += h
        for xi, e in zip(x, entries):
            ax.text(xi + off, bottom[xi] + 0.02, f"{tag}\nn={e['groups'][group]['n']}", ha="center", fontsize=7)
    ax.set_xticks(x, [e["label"] for e in entries], fontsize=8)
    ax.set_ylim(0, 1.25), ax.set_ylabel("mean plane weight")
    ax.legend(fontsize=8, loc="upper right", ncols=3)
    save_figure(fig, path, "MPAE plane weights per label (left: true positives, right dotted: others)")


def plot_dice_box(seg_report: dict, path) -> None:
    names = seg_report["structures"]
    data = []
    for name in names:
        d = [r["dice"] for r in seg_report["per_case"] if r["structure"] == name and r["status"] != "not annotated"]
        data.append([v for v in d if not math.isnan(v)] or [np.nan])
    fig, (ax,) = _figure(wide=(max(7, 0.8 * len(names) + 2), 4.8))
    ax.boxplot(data, tick_labels=names, showmeans=True)
    ax.set_ylim(-0.02, 1.02), ax.set_ylabel("Dice")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    save_figure(fig, path, f"Dice per structure (n = {seg_report['n_cases']} cases; triangle = mean)")


def plot_label_efficiency(rows: list[dict], path) -> None:
    macro = [r for r in rows if r["label"] == "macro"]
    fig, (ax,) = _figure(wide=(7, 4.8))
    methods = list(dict.fromkeys(r["method"] for r in macro))
    for m in methods:
        pts = sorted((r for r in macro if r["method"] == m), key=lambda r: r["fraction"])
        f = np.array([r["fraction"] for r in pts])
        v = np.array([r["auroc"] for r in pts], float)
        lo = np.array([r["ci_low"] for r in pts], float)
        hi = np.array([r["ci_high"] for r in pts], float)
        err = np.nan_to_num(np.vstack([v - lo, hi - v]))
        ax.errorbar(f * 100, v, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=m)
    fr = [r["fraction"] for r in macro]
    if fr and max(fr) / min(fr) >= 10:
        ax.set_xscale("log")
    ticks = sorted(set(100 * x for x in fr))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training data (%)"), ax.set_ylabel("macro AUROC")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path, "Label efficiency: macro AUROC vs label fraction (bars: CI)")
