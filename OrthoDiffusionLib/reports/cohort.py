"""Self-contained HTML report over a cohort predictions folder (``orthodiffusion report --cohort``;
``Resources/Templates/cohort.html.j2``).

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

import csv
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..ownership import CSV_SIGNATURE, HTML_SIGNATURE, check_file_replaceable
from ..results.anonymize import Pseudonymizer
from ..results.folder import read_result_folder
from .cohort_evaluation import evaluation_context, load_or_evaluate
from .figures import distribution_figure, weights_figure
from .render import fmt, render


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
# the report

def _case_rows(results, rows_by_id: dict, anon: Pseudonymizer) -> tuple[list[tuple], list[dict]]:
    """(HTML case table rows, CSV rows) in the order of ``results``."""
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
                      ", ".join(positives) or "none", ", ".join(truth) if row else "", fmt(d["max_spread"]),
                      d["heads"]))
    return table, csv_rows


def _notes(results, anonymize: bool, eval_note: str | None) -> list[str]:
    notes = []
    if any(r.provenance.get("model", {}).get("heads", {}).get("fitted_on_synthetic") for r in results):
        notes.append("The heads were fitted on the synthetic test bed: the numbers show the pipeline working, "
                     "they are not clinical performance.")
    if anonymize:
        notes.append("Anonymised report: study and patient ids are replaced by pseudonyms (HMAC-SHA256 with a salt "
                     "that is not stored); ids inside error messages are replaced too. Paths are not shown.")
    return notes + ([eval_note] if eval_note else [])


def write_cohort_report(cohort_dir, out=None, manifest=None, anonymize: bool = False, salt: str | None = None,
                        n_boot: int = 1000, seed: int = 0, operating_point: str = "head",
                        log=lambda m: None) -> dict:
    """Write the cohort HTML report (default ``<cohort_dir>/report.html``) and its case-table CSV
    (``<report stem>_cases.csv``); returns {"html", "csv", "evaluation"} paths (evaluation may be None)."""
    from ..evaluation.report import write_csv
    from ..io.manifest import read_manifest
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

    ev, eval_dir, eval_note = load_or_evaluate(cohort_dir, m, n_boot, seed, operating_point, log)
    table, csv_rows = _case_rows(results, rows_by_id, anon)
    err_rows = [(anon(e.get("study_id")), anon.scrub(e.get("error", ""))) for e in errors]
    if anonymize:  # the order of the original ids would leak through the row order
        table.sort(key=lambda t: t[0])
        csv_rows.sort(key=lambda d: d["case"])
        err_rows.sort()
    models = sorted({f"{r.model.get('id')} {r.model.get('version')} (heads {r.head_version})" for r in results})
    counts = (f"{len(results)} predicted cases, {len(errors)} failed" + (
        f" (cohort summary: {summary.get('rows')} rows)" if summary.get("rows") is not None else ""))
    doc = render(
        "cohort.html.j2", title="OrthoDiffusion cohort report", counts=counts,
        folder=None if anonymize else str(cohort_dir.resolve()), models="; ".join(models) or "none",
        notes=_notes(results, anonymize, eval_note),
        distribution=distribution_figure(results) if results else None,
        weights=weights_figure(results) if results else None,
        evaluation=evaluation_context(ev, eval_dir, anon) if ev else None,
        finding_keys=", ".join(dict.fromkeys(f.key for r in results for f in r.findings)),
        cases=table, errors=err_rows, version=__version__)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(csv_out, csv_rows)
    atomic_write_text(out, doc)
    return {"html": out, "csv": csv_path, "evaluation": eval_dir}
