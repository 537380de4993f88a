"""Self-contained HTML report over a cohort predictions folder (``orthodiffusion report --cohort``).

Sections: disclaimer banner; cohort summary; distribution plots (probabilities and positive calls per
finding, planes used, mean MPAE plane weights); the case table (findings per case, decisions,
planes used) and the errors of ``errors.csv``; when the manifest has labels, the evaluation of
:func:`OrthoDiffusionLib.evaluation.cohort.evaluate_cohort` (reused from ``<cohort>/evaluation`` when
it is up to date, computed there otherwise): metrics with CIs, ROC curves, calibration,
breakdowns, plane weights, Dice. A CSV of the case table is written next to the HTML.

``anonymize=True`` shows study and patient ids as HMAC pseudonyms (results/anonymize.py) in the
HTML and the CSV, and scrubs the ids from error messages. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path

import numpy as np

from .. import DISCLAIMER, __version__
from ..errors import InputError
from ..results.folder import PLANES, read_result_folder
from ..ownership import CSV_SIGNATURE, HTML_SIGNATURE, check_file_replaceable
from ..results.anonymize import Pseudonymizer
from .case import BANNER, GENERATOR_META, STYLE, _table, png_file_uri

EVAL_DIR = "evaluation"


def read_cohort_folder(cohort_dir) -> tuple[list, list[dict], dict]:
    """(results sorted by case id, errors rows from errors.csv, cohort_summary.json or {})."""
    from ..storage import read_json

    d = Path(cohort_dir)
    if not d.is_dir():
        raise InputError(f"cohort folder not found: {d} (give the --out folder of `predict --manifest`)")
    results = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and (p / "result.json").is_file()):
        results.append(read_result_folder(sub))
    errors = []
    if (d / "errors.csv").is_file():
        with open(d / "errors.csv", newline="", encoding="utf-8") as f:
            errors = list(csv.DictReader(line for line in f if not line.startswith("#")))
    if not results and not errors:
        raise InputError(f"{d} holds no result folders and no errors.csv: not a cohort predictions folder")
    summary = read_json(d / "cohort_summary.json") if (d / "cohort_summary.json").is_file() else {}
    return results, errors, summary


# ---------------------------------------------------------------------------------------------
# figures (Agg canvas, no pyplot state)

def _fig_uri(fig, title: str) -> str:
    fig.suptitle(title, fontsize=12)
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=8, style="italic", color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Title": title, "Description": DISCLAIMER})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _distribution_figure(results) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(f.key for r in results for f in r.findings))
    probs = [[r.finding(k).probability for r in results if any(f.key == k for f in r.findings)] for k in keys]
    pos = [sum(r.finding(k).decision for r in results if any(f.key == k for f in r.findings)) for k in keys]
    fig = Figure(figsize=(13, 4.2))
    FigureCanvasAgg(fig)
    a1, a2, a3 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    a1.boxplot(probs, tick_labels=keys, showmeans=True)
    rng = np.random.default_rng(0)
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
    return _fig_uri(fig, f"Cohort distributions ({len(results)} predicted cases)")


def _weights_figure(results) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..evaluation.plots import PLANE_COLOURS

    keys = list(dict.fromkeys(f.key for r in results for f in r.findings))
    w = np.array([[[r.finding(k).weight(p) for p in PLANES] for k in keys] for r in results])
    mean = w.mean(axis=0)
    fig = Figure(figsize=(max(7, 0.9 * len(keys) + 2), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(keys))
    for i, plane in enumerate(PLANES):
        ax.bar(keys, mean[:, i], bottom=bottom, color=PLANE_COLOURS[i], label=plane)
        bottom += mean[:, i]
    ax.set_ylim(0, 1.05), ax.set_ylabel("mean MPAE weight"), ax.legend(fontsize=8, ncols=3, loc="upper right")
    return _fig_uri(fig, "Mean MPAE plane weight per finding (all predicted cases)")


# ---------------------------------------------------------------------------------------------
# evaluation (reuse when up to date)

def _evaluation(cohort_dir: Path, manifest, n_boot: int, seed: int, operating_point: str,
                log) -> tuple[dict | None, Path | None, str | None]:
    """(evaluation.json dict, its folder, a note) — computed by evaluate_cohort when missing or stale."""
    from ..evaluation.cohort import evaluate_cohort, load_cohort_predictions, predictions_fingerprint
    from ..storage import read_json

    eval_dir = cohort_dir / EVAL_DIR
    existing = read_json(eval_dir / "evaluation.json") if (eval_dir / "evaluation.json").is_file() else None
    if manifest is None and existing is not None and Path(existing["meta"]["manifest"]).is_file():
        manifest = existing["meta"]["manifest"]
    if manifest is None:
        return None, None, "no manifest given (--manifest): case table only, no metrics"
    try:
        cp = load_cohort_predictions(manifest, cohort_dir)
    except InputError as exc:
        return None, None, f"no evaluation: {exc}"
    if (existing is not None and existing["meta"].get("predictions_fingerprint") == predictions_fingerprint(cp)
            and existing["meta"].get("manifest") == str(cp.manifest.path) and existing["meta"].get("split") is None):
        return existing, eval_dir, f"evaluation reused from {EVAL_DIR}/ (up to date with the result folders)"
    log(f"evaluating the cohort against {cp.manifest.path} ...")
    try:
        evaluate_cohort(cp.manifest, cohort_dir, out=eval_dir, operating_point=operating_point, n_boot=n_boot,
                        seed=seed)
    except InputError as exc:
        return None, None, f"no evaluation: {exc}"
    return read_json(eval_dir / "evaluation.json"), eval_dir, f"evaluation computed into {EVAL_DIR}/"


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(v, lo, hi) -> str:
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None else _fmt(v)


def _img(eval_dir: Path, name: str, alt: str) -> str:
    p = eval_dir / name
    return f'<img src="{png_file_uri(p)}" alt="{html.escape(alt)}">' if p.is_file() else ""


def _evaluation_html(ev: dict, eval_dir: Path, anon: Pseudonymizer) -> str:
    parts = ['<h2>Evaluation against the manifest labels</h2>']
    meta = ev["meta"]
    parts.append(f"<p>{meta['n_evaluated']} of {meta['n_manifest_rows']} manifest rows evaluated; "
                 f"{meta['n_boot']} bootstrap resamples (seed {meta['seed']}), 95% percentile CIs.</p>")
    for n in meta.get("notes", []):
        parts.append(f'<div class="note">{html.escape(anon.scrub(n))}</div>')
    if meta.get("missing_predictions"):
        rows = [(anon(m["study_id"]), anon.scrub(m["reason"])) for m in meta["missing_predictions"]]
        rows = sorted(rows) if anon.enabled else rows
        parts.append("<h3>Rows without a prediction (not evaluated)</h3>" + _table(rows, ["study", "reason"]))
    cls = ev.get("classification")
    if cls:
        op = meta["operating_point"]
        parts.append(f"<h3>Findings (knee-8)</h3><p>Operating point: {html.escape(op['name'])} "
                     f"({html.escape(op.get('source', ''))}).</p>")
        rows = [(r["label"], r["n_pos"], r["n_neg"], _ci(r["auroc"], r["auroc_ci_low"], r["auroc_ci_high"]),
                 _ci(r["ap"], r["ap_ci_low"], r["ap_ci_high"]), _fmt(r["threshold"]),
                 _ci(r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"]),
                 _ci(r["specificity"], r["specificity_ci_low"], r["specificity_ci_high"]), _fmt(r["ece"]),
                 "; ".join(([r["skipped_reason"]] if r["skipped_reason"] else []) + r["flags"]))
                for r in cls["per_label"]]
        m = cls["macro_auroc"]
        rows.append(("macro", "", "", _ci(m["value"], m["ci_low"], m["ci_high"]), "", "", "", "", "",
                     "; ".join(f"{k}: {v}" for k, v in m["skipped"].items())))
        parts.append(_table(rows, ["finding", "n+", "n−", "AUROC [95% CI]", "AP [95% CI]", "threshold",
                                   "sensitivity [95% CI]", "specificity [95% CI]", "ECE", "flags"]))
        parts.append(_img(eval_dir, "roc_curves.png", "ROC curves"))
        parts.append("<h3>Calibration</h3>" + _img(eval_dir, "reliability.png", "reliability diagrams"))
    for column, entry in (ev.get("breakdowns") or {}).items():
        rows = [(g["group"], g["n"], _ci(g["report"]["macro_auroc"]["value"], g["report"]["macro_auroc"]["ci_low"],
                                         g["report"]["macro_auroc"]["ci_high"]),
                 *(_fmt(r["auroc"]) for r in g["report"]["per_label"]), len(g["flags"]))
                for g in entry["groups"]]
        labels = [r["label"] for r in entry["groups"][0]["report"]["per_label"]] if entry["groups"] else []
        parts.append(f"<h3>By {html.escape(column.replace('_', ' '))}</h3>"
                     + _table(rows, [column, "n", "macro AUROC [95% CI]", *labels, "flags"])
                     + _img(eval_dir, f"breakdown_{column}.png", f"AUROC by {column}"))
    pw = ev.get("plane_weights")
    if pw:
        rows = []
        for e in pw["per_label"]:
            a, tp = e["groups"]["all"], e["groups"]["true_positive"]
            rows.append((e["label"], *(_fmt(x, 2) for x in a["mean"]), tp["n"], *(_fmt(x, 2) for x in tp["mean"])))
        parts.append("<h3>MPAE plane weights</h3>"
                     + _table(rows, ["finding", "all: sagittal", "coronal", "axial", "true positives (n)",
                                     "TP: sagittal", "coronal", "axial"])
                     + _img(eval_dir, "plane_weights.png", "plane weights"))
    seg = ev.get("segmentation")
    if seg:
        md = seg["macro_dice"]
        rows = [(r["structure"], r["n_cases"], _ci(r["dice_mean"], r["dice_ci_low"], r["dice_ci_high"]),
                 _fmt(r["dice_median"]), _fmt(r["hd95_mean"], 2), _fmt(r["hd95_median"], 2))
                for r in seg["per_structure"]]
        rows.append(("mean over structures", seg["n_cases"], _ci(md["value"], md["ci_low"], md["ci_high"]), "", "", ""))
        per_case = {}
        for r in seg["per_case"]:
            if r["dice"] is not None:
                per_case.setdefault(r["case_id"], []).append(r["dice"])
        case_rows = [(anon(c), _fmt(float(np.mean(v)))) for c, v in per_case.items()]
        if anon.enabled:
            case_rows.sort()
        parts.append("<h3>Segmentation (knee-11)</h3><p>Ground truth resampled (nearest neighbour) onto each "
                     "prediction's grid where it is not already on it; HD95 in mm.</p>"
                     + _table(rows, ["structure", "cases", "Dice mean [95% CI]", "Dice median", "HD95 mean",
                                     "HD95 median"])
                     + _img(eval_dir, "dice_boxplot.png", "Dice per structure")
                     + "<details><summary>Mean Dice per case</summary>" + _table(case_rows, ["case", "mean Dice"])
                     + "</details>")
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# the report

def write_cohort_report(cohort_dir, out=None, manifest=None, anonymize: bool = False, salt: str | None = None,
                        n_boot: int = 1000, seed: int = 0, operating_point: str = "head",
                        log=lambda m: None) -> dict:
    """Write the cohort HTML report (default ``<cohort_dir>/report.html``) and its case-table CSV
    (``<report stem>_cases.csv``); returns {"html", "csv", "evaluation"} paths (evaluation may be None)."""
    from ..io.manifest import read_manifest
    from ..evaluation.report import write_csv
    from ..storage import atomic_write_text

    cohort_dir = Path(cohort_dir)
    results, errors, summary = read_cohort_folder(cohort_dir)
    m = read_manifest(manifest) if manifest is not None else None
    out = Path(out) if out is not None else cohort_dir / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out must name an .html file, got {out}")
    csv_out = out.with_name(out.stem + "_cases.csv")
    check_file_replaceable(out, HTML_SIGNATURE)  # never over a file the tool did not write
    check_file_replaceable(csv_out, CSV_SIGNATURE)
    anon = Pseudonymizer(anonymize, salt)
    rows_by_id = {r.study_id: r for r in m.rows} if m else {}
    anon.register([r.case_id for r in results] + [e.get("study_id") for e in errors] + list(rows_by_id), "case")
    anon.register([r.patient_id for r in rows_by_id.values()], "patient")

    ev, eval_dir, eval_note = _evaluation(cohort_dir, m, n_boot, seed, operating_point, log)
    table, csv_rows = [], []
    for r in results:
        row = rows_by_id.get(r.case_id)
        positives = [f.key for f in r.findings if f.decision]
        truth = [k for k, v in (row.findings.items() if row else []) if v == 1]
        d = {"case": anon(r.case_id), "patient": anon(row.patient_id, "patient") if row else "",
             "center": row.center if row else "", "field_strength": row.field_strength if row else None,
             "split": row.split if row else "", "planes_used": ";".join(r.planes_present),
             "reference_plane": r.reference_plane, "positive_findings": ";".join(positives),
             "labelled_positive": ";".join(truth) if row else "",
             "max_spread": max((f.spread for f in r.findings), default=float("nan")),
             "model": f"{r.model.get('id')} {r.model.get('version')}", "heads": str(r.head_version)}
        d.update({f"p_{f.key}": f.probability for f in r.findings})
        csv_rows.append(d)
        table.append((d["case"], d["patient"], d["center"] or "", "" if d["field_strength"] is None else
                      f"{d['field_strength']:g} T", d["split"] or "", d["planes_used"].replace(";", ", "),
                      ", ".join(positives) or "none", ", ".join(truth) if row else "", _fmt(d["max_spread"]),
                      d["heads"]))
    err_rows = [(anon(e.get("study_id")), anon.scrub(e.get("error", ""))) for e in errors]
    if anonymize:  # the order of the original ids would leak through the row order
        table.sort(key=lambda t: t[0])
        csv_rows.sort(key=lambda d: d["case"])
        err_rows.sort()

    keys = list(dict.fromkeys(f.key for r in results for f in r.findings))
    models = sorted({f"{r.model.get('id')} {r.model.get('version')} (heads {r.head_version})" for r in results})
    notes = []
    if any(r.provenance.get("model", {}).get("heads", {}).get("fitted_on_synthetic") for r in results):
        notes.append("The heads were fitted on the synthetic test bed: the numbers show the pipeline working, "
                     "they are not clinical performance.")
    if anonymize:
        notes.append("Anonymised report: study and patient ids are replaced by pseudonyms (HMAC-SHA256 with a salt "
                     "that is not stored); ids inside error messages are replaced too. Paths are not shown.")
    if eval_note:
        notes.append(eval_note)
    where = "" if anonymize else f" in <code>{html.escape(str(cohort_dir.resolve()))}</code>"
    counts = (f"{len(results)} predicted cases, {len(errors)} failed" + (
        f" (cohort summary: {summary.get('rows')} rows)" if summary.get("rows") is not None else ""))
    body = [BANNER, "<h1>OrthoDiffusion cohort report</h1>",
            f"<p>{html.escape(counts)}{where}. Models: {html.escape('; '.join(models) or 'none')}.</p>",
            "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes)]
    if results:
        body += ["<h2>Distributions</h2>", f'<img src="{_distribution_figure(results)}" alt="distributions">',
                 f'<img src="{_weights_figure(results)}" alt="plane weights">']
    if ev:
        body.append(_evaluation_html(ev, eval_dir, anon))
    body += ["<h2>Cases</h2>",
             f"<p>Decisions at each head's thresholds (findings.json). Findings: {html.escape(', '.join(keys))}.</p>",
             _table(table, ["case", "patient", "center", "field", "split", "planes used", "positive findings",
                            "labelled positive", "max spread", "heads"]),
             "<h2>Errors</h2>", _table(err_rows, ["case", "error"]) if err_rows else "<p>none</p>",
             f"<p><small>{html.escape(DISCLAIMER)} OrthoDiffusion {html.escape(__version__)}.</small></p>"]
    doc = (f'<!DOCTYPE html><html><head><meta charset="utf-8">{GENERATOR_META}<title>OrthoDiffusion cohort report</title>'
           f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(csv_out, csv_rows)
    atomic_write_text(out, doc)
    return {"html": out, "csv": csv_path, "evaluation": eval_dir}
