"""Evaluate a predicted cohort against its manifest: the library side of ``orthodiffusion evaluate``.

    from OrthoDiffusionLib.evaluation.cohort import evaluate_cohort
    report = evaluate_cohort("cohort/manifest.csv", "predictions/", out="eval/",
                             operating_point="head", n_boot=1000, seed=0, split="test")

``predictions_dir`` holds one result folder per study (``<predictions_dir>/<study_id>/result.json``,
as written by ``orthodiffusion predict --manifest``). Rows without a complete result folder are left
out and listed (with the error from ``errors.csv`` when there is one); metrics cover the rest.

What is computed (see docs/evaluation.md): knee-8 classification (AUROC, AP, sensitivity and
specificity at the operating point, ECE, bootstrap CIs, macro AUROC), breakdowns by ``center`` and
``field_strength``, MPAE plane-weight summaries, and Dice / HD95 per knee-11 structure for rows
whose manifest names a label map (the ground truth is resampled, nearest neighbour in physical
space, onto the prediction's grid). Research use only, not for clinical decisions.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import DISCLAIMER
from ..io.manifest import Manifest, ManifestRow, read_manifest
from ..errors import InputError
from ..labelsets import load_label_set
from ..results.folder import PLANES, CaseResult, read_result_folder

BREAKDOWN_COLUMNS = ("center", "field_strength")
CASES_CSV = "cohort_cases.csv"


@dataclass
class OperatingPoint:
    """How decision thresholds are chosen: ``head`` (the fitted head's thresholds, as recorded in
    each findings.json), ``youden``, ``sensitivity`` (``target``) or ``fixed`` (``value``)."""

    method: str = "head"
    target: float | None = None
    value: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "OperatingPoint":
        t = (text or "head").strip().lower()
        if t in ("head", "youden"):
            return cls(t)
        for prefix, method in (("sens=", "sensitivity"), ("sensitivity=", "sensitivity"), ("fixed=", "fixed")):
            if t.startswith(prefix):
                try:
                    x = float(t[len(prefix):])
                except ValueError:
                    break
                lo_ok = x > 0.0 if method == "sensitivity" else x >= 0.0
                if not (lo_ok and x <= 1.0):
                    break
                return cls(method, target=x) if method == "sensitivity" else cls(method, value=x)
        raise InputError(f"unknown operating point '{text}': use head, youden, sens=0.9 or fixed=0.5")

    def describe(self) -> str:
        return {"head": "head thresholds", "youden": "Youden J",
                "sensitivity": f"sensitivity >= {self.target}", "fixed": f"fixed threshold {self.value}"}[self.method]


@dataclass
class CohortPredictions:
    """Manifest rows paired with their result folders (``results[i]`` belongs to ``rows[i]``)."""

    manifest: Manifest
    rows: list[ManifestRow]
    results: list[CaseResult]
    missing: list[dict] = field(default_factory=list)   # {"study_id", "reason"}
    keys: list[str] = field(default_factory=list)        # finding keys both in the manifest and the results

    def arrays(self):
        """y [N, K] (NaN unknown), p [N, K], plane weights [N, K, 3], head thresholds [K]."""
        n, k = len(self.rows), len(self.keys)
        y = np.full((n, k), np.nan)
        p = np.full((n, k), np.nan)
        w = np.full((n, k, len(PLANES)), np.nan)
        thr = np.full((n, k), np.nan)
        for i, (row, res) in enumerate(zip(self.rows, self.results)):
            for j, key in enumerate(self.keys):
                v = row.findings.get(key)
                y[i, j] = np.nan if v is None else float(v)
                f = res.finding(key)
                p[i, j] = f.probability
                thr[i, j] = f.threshold
                w[i, j] = [f.weight(pl) for pl in PLANES]
        return y, p, w, _head_thresholds(thr)


def _head_thresholds(thr: np.ndarray) -> np.ndarray:
    """One threshold per label: the value every case agrees on (the head's), else the median."""
    return np.array([np.nan if not np.isfinite(c).any() else float(np.nanmedian(c)) for c in thr.T])


def read_errors_csv(predictions_dir) -> dict[str, str]:
    """study_id -> error message from ``errors.csv`` (written by cohort predict), if present."""
    path = Path(predictions_dir) / "errors.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    from ..csvsafe import unescape  # study ids were escaped against formula injection

    return {unescape(r.get("study_id", "")): unescape(r.get("error", "")) for r in rows if r.get("study_id")}


def load_cohort_predictions(manifest, predictions_dir, split: str | None = None,
                            label_set: str = "knee-8") -> CohortPredictions:
    """Pair manifest rows (optionally one split) with the result folders under ``predictions_dir``."""
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, label_set=label_set)
    pdir = Path(predictions_dir)
    if not pdir.is_dir():
        raise InputError(f"predictions folder not found: {pdir} (run `orthodiffusion predict --manifest` first "
                         "or pass --model)")
    rows = m.by_split(split) if split else list(m.rows)
    if not rows:
        splits = sorted({r.split for r in m.rows if r.split})
        raise InputError(f"{m.path}: no rows with split '{split}' (splits present: {', '.join(splits) or 'none'})")
    errors = read_errors_csv(pdir)
    have_rows, results, missing = [], [], []
    for row in rows:
        folder = pdir / row.study_id
        if not (folder / "result.json").is_file():
            reason = errors.get(row.study_id) or "no result folder (not predicted yet)"
            missing.append({"study_id": row.study_id, "reason": reason})
            continue
        try:
            results.append(read_result_folder(folder))
        except InputError as exc:
            missing.append({"study_id": row.study_id, "reason": f"unreadable result folder: {exc}"})
            continue
        have_rows.append(row)
    if not have_rows:
        raise InputError(f"none of the {len(rows)} manifest rows has a result folder in {pdir} "
                         "(folder names must equal study_id)")
    result_keys = {f.key for r in results for f in r.findings}
    keys = [k for k in m.finding_keys() if k in result_keys]
    return CohortPredictions(manifest=m, rows=have_rows, results=results, missing=missing, keys=keys)


def predictions_fingerprint(cp: CohortPredictions) -> str:
    """sha256 over (study_id, result.json bytes) of the evaluated cases: detects stale evaluations."""
    h = hashlib.sha256()
    for row, res in zip(cp.rows, cp.results):
        h.update(row.study_id.encode("utf-8") + b"\0")
        h.update((Path(res.directory) / "result.json").read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# segmentation ground truth on the prediction grid

def ground_truth_source(row: ManifestRow, reference_plane: str) -> tuple[str, Path] | None:
    """The manifest label map to compare with a prediction on ``reference_plane``'s grid: that plane's
    own label column when present (same grid, no resampling), else ``labels_reference``."""
    for col in (f"labels_{reference_plane}", "labels_reference"):
        if row.labels.get(col):
            return col, Path(row.labels[col])
    return None


def ground_truth_on_grid(gt_path: Path, pred_img, label_set: str = "knee-11"):
    """Read a label map of ``label_set`` and resample it (nearest neighbour, physical space) onto ``pred_img``'s grid;
    returns (numpy array in (k, j, i) order, resampled: bool)."""
    import SimpleITK as sitk

    from ..results.folder import _same_grid

    from ..io.volumes import check_volume_path

    check_volume_path(gt_path, allow_outputs=True)  # data files next to the header, never a device
    gt = sitk.ReadImage(str(gt_path))
    if gt.GetDimension() != 3 or gt.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"label map {gt_path} must be a 3D single-component image")
    arr = sitk.GetArrayViewFromImage(gt)
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise InputError(f"label map {gt_path} holds non-integer values: give a {label_set} label map")
    allowed = {0, *load_label_set(label_set).values}
    bad = sorted(set(np.unique(arr).tolist()) - allowed)
    if bad:
        raise InputError(f"label map {gt_path} has values outside {label_set}: {bad[:8]}")
    if _same_grid(gt, pred_img):
        return sitk.GetArrayFromImage(gt).astype(np.uint8), False
    res = sitk.Resample(sitk.Cast(gt, sitk.sitkUInt8), pred_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res), True


def evaluate_cohort_segmentation(cp: CohortPredictions, n_boot: int = 1000, seed: int = 0,
                                 progress: bool = False) -> dict | None:
    """Dice / HD95 per structure (the label set the predictions record) on the cases whose manifest
    row names a label map."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from .segmentation import segmentation_case_metrics, summarize_segmentation

    pairs = [(row, res) for row, res in zip(cp.rows, cp.results)
             if ground_truth_source(row, res.reference_plane) is not None]
    sets = sorted({res.label_sets["structures"] for _, res in pairs})
    if len(sets) > 1:
        raise InputError(f"the predictions use different structure label sets ({', '.join(sets)}); evaluate them apart")
    structures = load_label_set(sets[0] if sets else "knee-11")
    rows, sources = [], []
    for row, res in tqdm(pairs, desc="segmentation", unit="case", disable=not progress):
        col, path = ground_truth_source(row, res.reference_plane)
        pred_img = sitk.ReadImage(str(res.path("labels")))
        gt, resampled = ground_truth_on_grid(path, pred_img, structures.id)
        pred = sitk.GetArrayFromImage(pred_img)
        spacing = tuple(float(s) for s in pred_img.GetSpacing()[::-1])  # numpy (k, j, i) order
        rows += segmentation_case_metrics(pred, gt, structures, spacing=spacing, annotated=row.annotated_classes,
                                          case_id=row.study_id)
        sources.append({"study_id": row.study_id, "ground_truth": col, "resampled": resampled,
                        "reference_plane": res.reference_plane})
    if not rows:
        return None
    summary = summarize_segmentation(rows, n_boot=n_boot, seed=seed)
    summary["ground_truth"] = sources
    summary["label_set"] = structures.id
    return summary


# ---------------------------------------------------------------------------------------------
# thresholds

def _thresholds(op: OperatingPoint, cp: CohortPredictions, head_thr: np.ndarray, split: str | None,
                predictions_dir) -> tuple[np.ndarray, dict]:
    """Thresholds [K] for the operating point and a description of where they came from."""
    from .classification import choose_thresholds

    if op.method == "head":
        return head_thr, {"method": "head", "source": "thresholds of the fitted heads (findings.json)"}
    if op.method == "fixed":
        return np.full(len(cp.keys), float(op.value)), {"method": "fixed", "value": op.value,
                                                         "source": "given on the command line"}
    sel, source = cp, "the evaluated cases (optimistic: threshold chosen on the same cases)"
    if split and split != "val" and any(r.split == "val" for r in cp.manifest.rows):
        try:
            val = load_cohort_predictions(cp.manifest, predictions_dir, split="val")
            sel, source = val, f"the {len(val.rows)} predicted 'val' cases of the manifest"
        except InputError:
            pass
    y_sel, p_sel, _, _ = sel.arrays()
    y = np.full((len(sel.rows), len(cp.keys)), np.nan)  # align the selection's labels with cp.keys
    p = np.zeros_like(y)
    for j, key in enumerate(cp.keys):
        if key in sel.keys:
            y[:, j], p[:, j] = y_sel[:, sel.keys.index(key)], p_sel[:, sel.keys.index(key)]
    chosen = choose_thresholds(y, p, method="sensitivity" if op.method == "sensitivity" else "youden",
                               target_sensitivity=op.target or 0.9, labels=cp.keys)
    thr = np.array([chosen[k] for k in cp.keys])
    fallback = [k for k, t in zip(cp.keys, thr) if not math.isfinite(t)]
    thr = np.where(np.isfinite(thr), thr, head_thr)
    info = {"method": op.method, "target_sensitivity": op.target, "source": source,
            "head_threshold_fallback": fallback}
    return thr, info


# ---------------------------------------------------------------------------------------------
# the entry point

def evaluate_cohort(manifest, predictions_dir, out=None, operating_point: str | OperatingPoint = "head",
                    n_boot: int = 1000, seed: int = 0, split: str | None = None, segmentation: bool = True,
                    plots: bool = True, progress: bool = False, label_set: str = "knee-8") -> dict:
    """Evaluate the result folders under ``predictions_dir`` against the labels of ``manifest``.

    Parameters
    ----------
    manifest : path or :class:`OrthoDiffusionLib.io.manifest.Manifest`
    predictions_dir : folder with one result folder per study (named by ``study_id``)
    out : folder for ``evaluation.json``, the CSV tables, the PNG figures and ``cohort_cases.csv``;
        None computes without writing
    operating_point : ``"head"`` (default: the fitted heads' thresholds), ``"youden"``, ``"sens=0.9"``
        or ``"fixed=0.5"``; Youden / sensitivity thresholds are chosen on the manifest's predicted
        ``val`` rows when ``split`` is another split, else on the evaluated cases (flagged optimistic)
    n_boot, seed : bootstrap resamples and seed (the same seed gives the same CIs)
    split : evaluate only rows of this split (``train``, ``val`` or ``test``); None = all rows
    segmentation : compute Dice / HD95 where the manifest has label maps

    Returns the report dict handed to :func:`write_evaluation` (keys ``classification``,
    ``breakdowns``, ``plane_weights``, ``segmentation`` when present, and ``meta``), plus ``files``
    (paths written) when ``out`` is given. Raises ``InputError`` when nothing can be evaluated.
    """
    from .breakdown import breakdown_classification
    from .classification import evaluate_classification
    from .planes import plane_weight_summary
    from .report import write_csv, write_evaluation

    op = operating_point if isinstance(operating_point, OperatingPoint) else OperatingPoint.parse(operating_point)
    cp = load_cohort_predictions(manifest, predictions_dir, split=split, label_set=label_set)
    y, p, w, head_thr = cp.arrays()
    has_labels = bool(cp.keys) and bool(np.isfinite(y).any())
    has_maps = segmentation and any(ground_truth_source(r, res.reference_plane)
                                    for r, res in zip(cp.rows, cp.results))
    if not has_labels and not has_maps:
        raise InputError(f"{cp.manifest.path}: no finding labels ({', '.join(load_label_set(label_set).keys)}) "
                         "and no label maps for the predicted rows: nothing to evaluate")
    report: dict = {}
    thr_info: dict = {}
    if has_labels:
        thr, thr_info = _thresholds(op, cp, head_thr, split, predictions_dir)
        thresholds = dict(zip(cp.keys, thr.tolist()))
        thr_info["thresholds"] = thresholds
        report["classification"] = evaluate_classification(y, p, labels=cp.keys, thresholds=thr, n_boot=n_boot,
                                                           seed=seed)
        metadata = {"center": [r.center for r in cp.rows],
                    "field_strength": [None if r.field_strength is None else f"{r.field_strength:g} T"
                                       for r in cp.rows]}
        by = [c for c in BREAKDOWN_COLUMNS if any(v is not None for v in metadata[c])]
        if by:
            report["breakdowns"] = breakdown_classification(y, p, metadata, by=by, labels=cp.keys, thresholds=thr,
                                                            n_boot=n_boot, seed=seed)
        report["plane_weights"] = plane_weight_summary(w, y, p, thresholds=thr, labels=cp.keys)
    if has_maps:
        seg = evaluate_cohort_segmentation(cp, n_boot=n_boot, seed=seed, progress=progress)
        if seg:
            report["segmentation"] = seg
    models = sorted({f"{r.model.get('id')} {r.model.get('version')} heads {r.head_version}" for r in cp.results})
    report["meta"] = {
        "disclaimer": DISCLAIMER,
        "manifest": str(cp.manifest.path),
        "predictions_dir": str(Path(predictions_dir).resolve()),
        "split": split,
        "n_manifest_rows": len(cp.rows) + len(cp.missing),
        "n_evaluated": len(cp.rows),
        "n_missing": len(cp.missing),
        "missing_predictions": cp.missing,
        "labels": cp.keys,
        "label_set": label_set,
        "operating_point": {"name": op.describe(), **thr_info},
        "n_boot": int(n_boot),
        "seed": int(seed),
        "models": models,
        "predictions_fingerprint": predictions_fingerprint(cp),
        "notes": _notes(cp, models),
    }
    if out is not None:
        from ..ownership import claim_folder

        out = claim_folder(out, "evaluation")
        files = write_evaluation(report, out, plots_enabled=plots)
        files["csv"].append(str(write_csv(out / CASES_CSV, case_rows(cp, report))))
        report["files"] = files
    return report


def _notes(cp: CohortPredictions, models: list[str]) -> list[str]:
    notes = []
    if cp.missing:
        notes.append(f"{len(cp.missing)} of {len(cp.rows) + len(cp.missing)} manifest rows have no prediction and "
                     "are not evaluated (see missing_predictions)")
    if len(models) > 1:
        notes.append(f"predictions come from {len(models)} different models / head versions: {'; '.join(models)}")
    if any((r.provenance.get("model", {}).get("heads", {}) or {}).get("fitted_on_synthetic") for r in cp.results):
        notes.append("heads fitted on the synthetic test bed: these numbers are not clinical performance")
    return notes


def case_rows(cp: CohortPredictions, report: dict | None = None) -> list[dict]:
    """One row per evaluated case: ids, site columns, planes, label / probability / decision per finding."""
    thr = {}
    if report and "classification" in report:
        thr = {r["label"]: r["threshold"] for r in report["classification"]["per_label"]}
    out = []
    for row, res in zip(cp.rows, cp.results):
        d = {"study_id": row.study_id, "patient_id": row.patient_id, "split": row.split, "center": row.center,
             "field_strength": row.field_strength, "planes_present": ";".join(res.planes_present),
             "reference_plane": res.reference_plane}
        for key in cp.keys:
            f = res.finding(key)
            d[f"{key}_label"] = row.findings.get(key)
            d[f"{key}_prob"] = f.probability
            d[f"{key}_decision"] = int(f.probability >= thr.get(key, f.threshold))
        out.append(d)
    return out
