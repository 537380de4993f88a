"""Self-contained HTML report of one prediction (images embedded as base64 PNG).
Research use only, not for clinical decisions."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .. import DISCLAIMER

from ..planes import PLANES
# shared by the cohort report (reports/cohort.py)
STYLE = """body{font-family:sans-serif;margin:24px;max-width:1240px;color:#222}
.banner{background:#b03a2e;color:#fff;padding:14px 18px;font-size:22px;font-weight:bold;border-radius:6px}
.note{background:#fdf2e9;border-left:6px solid #e67e22;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#eee}img{max-width:100%}h2{margin-top:26px}small{color:#666}"""
BANNER = f'<div class="banner">{html.escape(DISCLAIMER)}</div>'
# ownership.HTML_SIGNATURE: lets a later run prove it wrote the file before overwriting it
GENERATOR_META = '<meta name="generator" content="OrthoDiffusion">'


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plane_panel(pred, structures) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    from ..io import reorient_canonical

    colours = np.zeros((max(structures.values) + 1, 4))
    for lab in structures.labels:
        colours[lab["value"]] = [*(np.array(lab["color"]) / 255.0), 0.55]
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(1, len(PLANES), figsize=(4.2 * len(PLANES), 4.4))
    for ax, plane in zip(axes, PLANES):
        ax.axis("off")
        pd = pred.planes.get(plane)
        if pd is None:
            ax.set_title(f"{plane}: not present", fontsize=11)
            continue
        img = reorient_canonical(sitk.Cast(pd.image, sitk.sitkFloat32), plane)
        lab = sitk.Resample(pred.labels, pd.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        lab = reorient_canonical(lab, plane)
        a, l = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        k = int(np.argmax((l > 0).reshape(len(l), -1).sum(1))) if l.any() else len(a) // 2
        sl = a[k]
        lo, hi = np.percentile(sl, (1, 99.5))
        sp = img.GetSpacing()
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=sp[1] / sp[0], interpolation="bilinear")
        ax.imshow(np.ma.masked_equal(l[k], 0), cmap=cmap, vmin=0, vmax=len(colours) - 1, aspect=sp[1] / sp[0],
                  interpolation="nearest")
        kind = "reformatted from the sagittal series" if pd.reformatted else "acquired series"
        ax.set_title(f"{plane} ({kind})\nslice {k + 1}/{len(a)}", fontsize=10)
    return _png(fig)


def _findings_chart(pred) -> str:
    import matplotlib.pyplot as plt

    r = pred.result
    keys = [f.key for f in r.findings]
    y = np.arange(len(keys))[::-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(keys) + 1.4), sharey=True)
    p = [f.probability for f in r.findings]
    s = [f.spread for f in r.findings]
    a1.barh(y, p, xerr=s, color=["#c0392b" if f.decision else "#2e86c1" for f in r.findings], capsize=3)
    for yi, f in zip(y, r.findings):
        a1.plot([f.threshold] * 2, [yi - 0.4, yi + 0.4], color="k", lw=1.5)
    a1.set_xlim(0, 1)
    a1.set_yticks(y, keys)
    a1.set_xlabel("probability (bar = mean over noise draws, whisker = spread, black tick = threshold)")
    colours = {"sagittal": "#1b9e77", "coronal": "#d95f02", "axial": "#7570b3"}
    left = np.zeros(len(keys))
    for j, plane in enumerate(PLANES):
        w = np.array([f.weight(plane) for f in r.findings])
        a2.barh(y, w, left=left, color=colours[plane], label=plane)
        left += w
    a2.set_xlim(0, 1)
    a2.set_xlabel("MPAE plane weight (sums to 1 over present planes)")
    a2.legend(loc="lower right", fontsize=8, ncol=3)
    fig.tight_layout()
    return _png(fig)


def png_file_uri(path) -> str:
    """A PNG file on disk as a data: URI (self-contained reports)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(rows, header) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def write_report(pred, path, title: str = "OrthoDiffusion result", notes: list[str] | None = None,
                 wall_s: float | None = None, anonymize: bool = False, salt: str | None = None) -> Path:
    """``anonymize``: the case id is replaced by a pseudonym (see results/anonymize.py)."""
    from ..labelsets import load_label_set
    from ..ownership import HTML_SIGNATURE, check_file_replaceable
    from ..results.anonymize import Pseudonymizer

    check_file_replaceable(path, HTML_SIGNATURE)  # never over a file the tool did not write
    r = pred.result
    structures = load_label_set("knee-11")
    prov = r.provenance
    heads = prov["model"]["heads"]
    real = [p for p in r.planes_present if p not in prov["reformatted_planes"]]
    notes = list(notes or [])
    if heads.get("fitted_on_synthetic"):
        notes.append("The heads of this model were fitted on the synthetic test bed (generated knees), not on "
                     "patients: the numbers below show the pipeline working, they are not clinical performance.")
    planes_line = (f"Planes used: {', '.join(r.planes_present)}. Acquired (real): {', '.join(real) or 'none'}. "
                   f"Reformatted: {', '.join(prov['reformatted_planes']) or 'none'}. "
                   f"Missing: {', '.join(prov['planes_missing']) or 'none'}. Label map on the {r.reference_plane} grid.")
    findings_rows = [(f.key, f.name, f"{f.probability:.3f}", f"±{f.spread:.3f}", f"{f.threshold:.2f}",
                      "positive" if f.decision else "negative",
                      *(f"{f.weight(p):.2f}" for p in PLANES)) for f in r.findings]
    vol_rows = [(lab["name"], f"{pred.structure_volumes_ml.get(lab['key'], 0.0):.2f}") for lab in structures.labels]
    stages = prov.get("stages", {})
    t_rows = [(s, f"{v['seconds']:.2f}", f"{v['peak_rss_mb']:.0f}") for s, v in stages.items()]
    if "writing_s" in r.timings:
        t_rows.append(("writing", f"{r.timings['writing_s']:.2f}", ""))
    if wall_s is not None:
        t_rows.append(("whole command (wall)", f"{wall_s:.1f}", ""))
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8">{GENERATOR_META}<title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
{BANNER}
<h1>{html.escape(title)}</h1>
<p>Case <b>{html.escape(Pseudonymizer(anonymize, salt)(r.case_id))}</b> · model <b>{html.escape(r.model['id'])} {html.escape(r.model['version'])}</b>
· heads {html.escape(str(r.head_version))} · device {html.escape(prov.get('device', ''))}</p>
{''.join(f'<div class="note">{html.escape(n)}</div>' for n in notes)}
<div class="note">{html.escape(planes_line)}</div>
<h2>Segmentation (knee-11)</h2><img src="{_plane_panel(pred, structures)}" alt="planes">
<h2>Findings (knee-8)</h2><img src="{_findings_chart(pred)}" alt="findings">
{_table(findings_rows, ["key", "finding", "probability", "spread", "threshold", "decision", "w sagittal", "w coronal", "w axial"])}
<h2>Structure volumes</h2>{_table(vol_rows, ["structure", "volume (mL)"])}
<h2>Timings and memory</h2>{_table(t_rows, ["stage", "seconds", "peak RSS (MB)"])}
<h2>Warnings</h2><ul>{''.join(f'<li>{html.escape(w)}</li>' for w in pred.warnings) or '<li>none</li>'}</ul>
<p><small>{html.escape(DISCLAIMER)} OrthoDiffusion {html.escape(prov.get('orthodiffusion_version', ''))};
backbones {', '.join(f'{p} {s[:12]}' for p, s in prov['model']['backbones'].items())}; heads sha256
{html.escape(str(heads.get('weights_sha256'))[:12])}.</small></p></body></html>"""
    from ..storage import atomic_write_text

    path = Path(path)
    atomic_write_text(path, doc)
    return path
