"""The evaluation section of the cohort report: :func:`OrthoDiffusionLib.evaluation.cohort.evaluate_cohort`
reused from ``<cohort>/evaluation`` when it is up to date (computed there otherwise), turned into the
rows of ``Resources/Templates/cohort_evaluation.html.j2``. Research use only, not for clinical decisions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..results.anonymize import Pseudonymizer
from ..results.folder import FINDINGS_LABEL_SET, STRUCTURES_LABEL_SET
from .figures import png_file_uri
from .render import fmt, fmt_ci

EVAL_DIR = "evaluation"


def load_or_evaluate(cohort_dir: Path, manifest, n_boot: int, seed: int, operating_point: str,
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


def _image(eval_dir: Path, name: str) -> str | None:
    p = eval_dir / name
    return png_file_uri(p) if p.is_file() else None


def _classification(ev: dict, eval_dir: Path) -> dict | None:
    cls = ev.get("classification")
    if not cls:
        return None
    rows = [(r["label"], r["n_pos"], r["n_neg"], fmt_ci(r["auroc"], r["auroc_ci_low"], r["auroc_ci_high"]),
             fmt_ci(r["ap"], r["ap_ci_low"], r["ap_ci_high"]), fmt(r["threshold"]),
             fmt_ci(r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"]),
             fmt_ci(r["specificity"], r["specificity_ci_low"], r["specificity_ci_high"]), fmt(r["ece"]),
             "; ".join(([r["skipped_reason"]] if r["skipped_reason"] else []) + r["flags"]))
            for r in cls["per_label"]]
    m = cls["macro_auroc"]
    rows.append(("macro", "", "", fmt_ci(m["value"], m["ci_low"], m["ci_high"]), "", "", "", "", "",
                 "; ".join(f"{k}: {v}" for k, v in m["skipped"].items())))
    op = ev["meta"]["operating_point"]
    return {"label_set": ev["meta"].get("label_set", FINDINGS_LABEL_SET), "operating_point": op["name"], "source": op.get("source", ""),
            "rows": rows, "roc": _image(eval_dir, "roc_curves.png"), "reliability": _image(eval_dir, "reliability.png")}


def _breakdowns(ev: dict, eval_dir: Path) -> list[dict]:
    out = []
    for column, entry in (ev.get("breakdowns") or {}).items():
        rows = []
        for g in entry["groups"]:
            macro = g["report"]["macro_auroc"]
            rows.append((g["group"], g["n"], fmt_ci(macro["value"], macro["ci_low"], macro["ci_high"]),
                         *(fmt(r["auroc"]) for r in g["report"]["per_label"]), len(g["flags"])))
        labels = [r["label"] for r in entry["groups"][0]["report"]["per_label"]] if entry["groups"] else []
        out.append({"column": column, "title": column.replace("_", " "), "rows": rows,
                    "header": [column, "n", "macro AUROC [95% CI]", *labels, "flags"],
                    "image": _image(eval_dir, f"breakdown_{column}.png")})
    return out


def _plane_weights(ev: dict, eval_dir: Path) -> dict | None:
    pw = ev.get("plane_weights")
    if not pw:
        return None
    rows = []
    for e in pw["per_label"]:
        a, tp = e["groups"]["all"], e["groups"]["true_positive"]
        rows.append((e["label"], *(fmt(x, 2) for x in a["mean"]), tp["n"], *(fmt(x, 2) for x in tp["mean"])))
    return {"rows": rows, "image": _image(eval_dir, "plane_weights.png")}


def _segmentation(ev: dict, eval_dir: Path, anon: Pseudonymizer) -> dict | None:
    seg = ev.get("segmentation")
    if not seg:
        return None
    md = seg["macro_dice"]
    rows = [(r["structure"], r["n_cases"], fmt_ci(r["dice_mean"], r["dice_ci_low"], r["dice_ci_high"]),
             fmt(r["dice_median"]), fmt(r["hd95_mean"], 2), fmt(r["hd95_median"], 2)) for r in seg["per_structure"]]
    rows.append(("mean over structures", seg["n_cases"], fmt_ci(md["value"], md["ci_low"], md["ci_high"]), "", "", ""))
    per_case = {}
    for r in seg["per_case"]:
        if r["dice"] is not None:
            per_case.setdefault(r["case_id"], []).append(r["dice"])
    case_rows = [(anon(c), fmt(float(np.mean(v)))) for c, v in per_case.items()]
    if anon.enabled:  # the order of the original ids would leak through the row order
        case_rows.sort()
    return {"label_set": seg.get("label_set", STRUCTURES_LABEL_SET), "rows": rows, "case_rows": case_rows,
            "image": _image(eval_dir, "dice_boxplot.png")}


def evaluation_context(ev: dict, eval_dir: Path, anon: Pseudonymizer) -> dict:
    """What cohort_evaluation.html.j2 shows, every key present (the templates use StrictUndefined)."""
    meta = ev["meta"]
    missing = [(anon(m["study_id"]), anon.scrub(m["reason"])) for m in meta.get("missing_predictions") or []]
    return {"n_evaluated": meta["n_evaluated"], "n_rows": meta["n_manifest_rows"], "n_boot": meta["n_boot"],
            "seed": meta["seed"], "notes": [anon.scrub(n) for n in meta.get("notes", [])],
            "missing": sorted(missing) if anon.enabled else missing,
            "classification": _classification(ev, eval_dir), "breakdowns": _breakdowns(ev, eval_dir),
            "plane_weights": _plane_weights(ev, eval_dir), "segmentation": _segmentation(ev, eval_dir, anon)}
