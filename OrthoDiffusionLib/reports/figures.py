"""The figures of the HTML reports, as PNG data URIs (the reports are single self-contained files).

Every figure goes through :func:`OrthoDiffusionLib.evaluation.plots.figure_png`, which adds the
title and the research-use disclaimer. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from ..evaluation.plots import PLANE_COLOURS
from ..figures import figure_png, new_figure
from ..planes import PLANES

REPORT_DPI = 90  # smaller than the evaluation PNGs: a cohort report embeds a dozen of them


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_file_uri(path) -> str:
    """A PNG file on disk as a data: URI."""
    return png_data_uri(Path(path).read_bytes())


def figure_uri(fig, title: str) -> str:
    return png_data_uri(figure_png(fig, title, dpi=REPORT_DPI))


# ---------------------------------------------------------------------------------------------
# one case

def plane_panel(pred, structures) -> str:
    """The label map over the slice with most foreground, one panel per plane."""
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    from ..io import reorient_canonical

    colours = np.zeros((max(structures.values) + 1, 4))
    for lab in structures.labels:
        colours[lab["value"]] = [*(np.array(lab["color"]) / 255.0), 0.55]
    cmap = ListedColormap(colours)
    fig = new_figure((4.2 * len(PLANES), 4.6))
    for ax, plane in zip(fig.subplots(1, len(PLANES)), PLANES):
        ax.axis("off")
        pd = pred.planes.get(plane)
        if pd is None:
            ax.set_title(f"{plane}: not present", fontsize=11)
            continue
        img = reorient_canonical(sitk.Cast(pd.image, sitk.sitkFloat32), plane)
        lab = sitk.Resample(pred.labels, pd.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        a, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(reorient_canonical(lab, plane))
        k = int(np.argmax((lab > 0).reshape(len(lab), -1).sum(1))) if lab.any() else len(a) // 2
        lo, hi = np.percentile(a[k], (1, 99.5))
        sp = img.GetSpacing()
        ax.imshow(a[k], cmap="gray", vmin=lo, vmax=hi, aspect=sp[1] / sp[0], interpolation="bilinear")
        ax.imshow(np.ma.masked_equal(lab[k], 0), cmap=cmap, vmin=0, vmax=len(colours) - 1, aspect=sp[1] / sp[0],
                  interpolation="nearest")
        kind = "reformatted from the sagittal series" if pd.reformatted else "acquired series"
        ax.set_title(f"{plane} ({kind})\nslice {k + 1}/{len(a)}", fontsize=10)
    return figure_uri(fig, "Label map on each plane's series (slice with the most labelled voxels)")


def findings_chart(pred) -> str:
    """Probability with spread and threshold per finding; the MPAE plane weights beside it."""
    findings = pred.result.findings
    keys = [f.key for f in findings]
    y = np.arange(len(keys))[::-1]
    fig = new_figure((11, 0.45 * len(keys) + 1.8))
    a1, a2 = fig.subplots(1, 2, sharey=True)
    a1.barh(y, [f.probability for f in findings], xerr=[f.spread for f in findings], capsize=3,
            color=["#c0392b" if f.decision else "#2e86c1" for f in findings])
    for yi, f in zip(y, findings):
        a1.plot([f.threshold] * 2, [yi - 0.4, yi + 0.4], color="k", lw=1.5)
    a1.set_xlim(0, 1)
    a1.set_yticks(y, keys)
    a1.set_xlabel("probability (bar = mean over noise draws, whisker = spread, black tick = threshold)")
    left = np.zeros(len(keys))
    for i, plane in enumerate(PLANES):
        w = np.array([f.weight(plane) for f in findings])
        a2.barh(y, w, left=left, color=PLANE_COLOURS[i], label=plane)
        left += w
    a2.set_xlim(0, 1)
    a2.set_xlabel("MPAE plane weight (sums to 1 over present planes)")
    a2.legend(loc="lower right", fontsize=8, ncol=3)
    return figure_uri(fig, "Findings (red: positive at the head's threshold)")


# ---------------------------------------------------------------------------------------------
# a cohort

def _finding_keys(results) -> list[str]:
    return list(dict.fromkeys(f.key for r in results for f in r.findings))


def distribution_figure(results) -> str:
    keys = _finding_keys(results)
    probs = [[r.finding(k).probability for r in results if any(f.key == k for f in r.findings)] for k in keys]
    pos = [sum(r.finding(k).decision for r in results if any(f.key == k for f in r.findings)) for k in keys]
    fig = new_figure((13, 4.2))
    a1, a2, a3 = fig.subplots(1, 3)
    a1.boxplot(probs, tick_labels=keys, showmeans=True)
    rng = np.random.default_rng(0)  # jitter only: the same picture on every run
    for i, pr in enumerate(probs, start=1):
        a1.scatter(i + rng.uniform(-0.15, 0.15, len(pr)), pr, s=8, alpha=0.5, color="#2e86c1")
    a1.set_ylim(-0.02, 1.02), a1.set_ylabel("probability"), a1.set_title("Probability per finding", fontsize=10)
    a1.tick_params(axis="x", labelsize=8)
    a2.bar(keys, pos, color="#c0392b")
    a2.set_ylabel("cases called positive"), a2.set_ylim(0, max(1, len(results)))
    a2.set_title(f"Positive decisions (of {len(results)} cases)", fontsize=10)
    a2.tick_params(axis="x", labelsize=8)
    combos = {}
    for r in results:
        c = "+".join(p[:3] for p in PLANES if p in r.planes_present)
        combos[c] = combos.get(c, 0) + 1
    a3.bar(list(combos), list(combos.values()), color="#7570b3")
    a3.set_ylabel("cases"), a3.set_title("Planes used", fontsize=10)
    return figure_uri(fig, f"Cohort distributions ({len(results)} predicted cases)")


def weights_figure(results) -> str:
    keys = _finding_keys(results)
    mean = np.array([[[r.finding(k).weight(p) for p in PLANES] for k in keys] for r in results]).mean(axis=0)
    fig = new_figure((max(7, 0.9 * len(keys) + 2), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(keys))
    for i, plane in enumerate(PLANES):
        ax.bar(keys, mean[:, i], bottom=bottom, color=PLANE_COLOURS[i], label=plane)
        bottom += mean[:, i]
    ax.set_ylim(0, 1.05), ax.set_ylabel("mean MPAE weight"), ax.legend(fontsize=8, ncols=3, loc="upper right")
    return figure_uri(fig, "Mean MPAE plane weight per finding (all predicted cases)")
