"""`orthodiffusion evaluate` and `report --cohort` on a small real pipeline run: a synthetic cohort from
the real generator (4 cases, two without the axial series, + 1 row with a truncated image), predicted
with the shipped knee-demo model through `evaluate --model`, then checked against scikit-learn / numpy
on arrays read straight from the result folders and the manifest CSV."""

from __future__ import annotations

import csv
import json
import shutil

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from OrthoDiffusionLib import DISCLAIMER
from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.evaluation import threshold_youden
from OrthoDiffusionLib.resources import resource_path

KEYS = ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
BROKEN = "BROKEN-07"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalcohort")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))  # the shipped knee-demo heads, not a user's refit
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    assert main(["synth", "--n", "4", "--out", str(root / "cohort"), "--seed", "11", "--working-mm", "1.5",
                 "--quiet", "--prevalence", "0.5", "--no-motion", "--difficulty", "0"]) == 0
    manifest = root / "cohort" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    for i in (3, 4):  # two studies without an axial series (cheaper, and planes used differ)
        cells = lines[i].split(",")
        cells[header.index("axial")] = ""
        lines[i] = ",".join(cells)
    # one more row whose sagittal image is truncated: cohort predict records the failure in errors.csv
    last = lines[-1].split(",")
    broken_dir = root / "cohort" / "cases" / BROKEN
    broken_dir.mkdir()
    good = root / "cohort" / last[2]
    (broken_dir / "sagittal.nii.gz").write_bytes(good.read_bytes()[:300])
    row = [BROKEN, "P-BROKEN", f"cases/{BROKEN}/sagittal.nii.gz", "", ""] + last[5:]
    manifest.write_text("\n".join(lines + [",".join(row)]) + "\n")
    preds, out = root / "preds", root / "eval"
    rc = main(["evaluate", "--manifest", str(manifest), "--model", "knee-demo", "--out-predictions", str(preds),
               "--out", str(out), "--bootstrap", "200", "--device", "cpu", "--draws", "1",
               "--cache", str(root / "cache")])
    yield {"root": root, "manifest": manifest, "preds": preds, "out": out, "rc": rc}
    mp.undo()


def _manifest_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _arrays_from_folders(cohort):
    """y, p, plane weights, thresholds read with json/csv only (independent of the code under test)."""
    rows = [r for r in _manifest_rows(cohort["manifest"]) if (cohort["preds"] / r["study_id"] / "result.json").is_file()]
    y = np.array([[float(r[k]) if r[k] != "" else np.nan for k in KEYS] for r in rows])
    found = [json.loads((cohort["preds"] / r["study_id"] / "findings.json").read_text())["findings"] for r in rows]
    p = np.array([[next(f for f in fs if f["key"] == k)["probability"] for k in KEYS] for fs in found])
    w = np.array([[[next(f for f in fs if f["key"] == k)["plane_weights"][pl] for pl in ("sagittal", "coronal", "axial")]
                   for k in KEYS] for fs in found])
    thr = np.array([next(f for f in found[0] if f["key"] == k)["threshold"] for k in KEYS])
    return rows, y, p, w, thr


def test_evaluate_outputs_match_sklearn(cohort, capsys):
    assert cohort["rc"] == 0
    ev = json.loads((cohort["out"] / "evaluation.json").read_text())
    jsonschema.validate(ev, json.loads(resource_path("Schemas", "evaluation.schema.json").read_text()))
    assert ev["disclaimer"] == DISCLAIMER
    meta = ev["meta"]
    assert (meta["n_manifest_rows"], meta["n_evaluated"], meta["n_missing"]) == (5, 4, 1)
    assert meta["missing_predictions"][0]["study_id"] == BROKEN
    assert "Error" in meta["missing_predictions"][0]["reason"]  # the error recorded by cohort predict
    rows, y, p, w, thr = _arrays_from_folders(cohort)
    assert len(rows) == 4
    per = {r["label"]: r for r in ev["classification"]["per_label"]}
    both = [k for j, k in enumerate(KEYS) if len(set(y[:, j][~np.isnan(y[:, j])])) == 2]
    assert len(both) >= 3
    for j, k in enumerate(KEYS):
        r = per[k]
        assert r["threshold"] == pytest.approx(thr[j])  # head thresholds by default
        if k in both:
            assert r["auroc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
            assert r["auroc_ci_low"] <= r["auroc"] + 1e-12 and r["auroc"] <= r["auroc_ci_high"] + 1e-12
        else:
            assert r["auroc"] is None and r["skipped_reason"]
        pos = y[:, j] == 1
        if pos.any():
            sens = np.mean(p[pos, j] >= thr[j])
            assert r["sensitivity"] == pytest.approx(sens)
            assert r["sensitivity_ci_low"] <= r["sensitivity"] + 1e-12 <= r["sensitivity_ci_high"] + 2e-12
    macro = ev["classification"]["macro_auroc"]
    assert macro["value"] == pytest.approx(np.mean([per[k]["auroc"] for k in both]))
    assert macro["ci_low"] <= macro["value"] <= macro["ci_high"]
    # breakdowns: one group per center / field strength present among the evaluated rows
    centers = {r["center"] for r in rows}
    assert {g["group"] for g in ev["breakdowns"]["center"]["groups"]} == centers
    assert {g["group"] for g in ev["breakdowns"]["field_strength"]["groups"]} == {
        f"{float(r['field_strength']):g} T" for r in rows}
    # plane weights: mean over all cases per label and plane
    pw = {e["label"]: e for e in ev["plane_weights"]["per_label"]}
    for j, k in enumerate(KEYS):
        assert np.allclose(pw[k]["groups"]["all"]["mean"], w[:, j].mean(axis=0))
    with open(cohort["out"] / "cohort_cases.csv", newline="") as fh:
        cases = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert [c["planes_present"] for c in cases] == ["sagittal;coronal;axial"] * 2 + ["sagittal;coronal"] * 2
    for name in ("classification_per_label.csv", "breakdown_center.csv", "plane_weights.csv",
                 "segmentation_per_structure.csv", "cohort_cases.csv"):
        assert (cohort["out"] / name).read_text().startswith(f"# {DISCLAIMER}")
    for name in ("roc_curves.png", "reliability.png", "dice_boxplot.png", "breakdown_center.png", "plane_weights.png"):
        assert (cohort["out"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_dice_matches_numpy_and_reference_resampling(cohort):
    from OrthoDiffusionLib.evaluation.cohort import ground_truth_on_grid

    ev = json.loads((cohort["out"] / "evaluation.json").read_text())
    seg = ev["segmentation"]
    assert seg["n_cases"] == 4
    row = _manifest_rows(cohort["manifest"])[0]
    case = row["study_id"]
    src = next(g for g in seg["ground_truth"] if g["study_id"] == case)
    assert (src["ground_truth"], src["resampled"]) == ("labels_sagittal", False)  # same grid: no resampling
    pred_img = sitk.ReadImage(str(cohort["preds"] / case / "labels.nrrd"))
    pred = sitk.GetArrayFromImage(pred_img)
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort["manifest"].parent / row["labels_sagittal"])))
    checked = 0
    for r in seg["per_case"]:
        if r["case_id"] == case and r["status"] == "ok":
            assert r["dice"] == pytest.approx(_dice(pred == r["value"], gt == r["value"]), abs=1e-6)
            checked += 1
    assert checked >= 3
    # labels_reference (1.5 mm isotropic, identity direction) resampled onto the oblique sagittal grid lands on
    # the native sagittal label map: a wrong origin / direction / axis order would not
    ref, resampled = ground_truth_on_grid(cohort["manifest"].parent / row["labels_reference"], pred_img)
    assert resampled and ref.shape == gt.shape
    for value in (1, 2):  # femur, tibia
        assert _dice(ref == value, gt == value) > 0.8


def test_evaluate_operating_points_and_errors(cohort, tmp_path, capsys):
    from OrthoDiffusionLib.evaluation.cohort import evaluate_cohort

    rep = evaluate_cohort(cohort["manifest"], cohort["preds"], operating_point="fixed=0.5", n_boot=0,
                          segmentation=False)
    rows, y, p, _, _ = _arrays_from_folders(cohort)
    for j, r in enumerate(rep["classification"]["per_label"]):
        assert r["threshold"] == 0.5
        neg = y[:, j] == 0
        if neg.any():
            assert r["specificity"] == pytest.approx(np.mean(p[neg, j] < 0.5))
    yr = evaluate_cohort(cohort["manifest"], cohort["preds"], operating_point="youden", n_boot=0, segmentation=False)
    assert "optimistic" in yr["meta"]["operating_point"]["source"]
    # --split train: the Youden thresholds come from the predicted 'val' rows where they have both classes
    splits = {r["study_id"]: r["split"] for r in rows}
    val = [i for i, r in enumerate(rows) if r["split"] == "val"]
    assert val and "train" in splits.values()
    tr = evaluate_cohort(cohort["manifest"], cohort["preds"], operating_point="youden", n_boot=0,
                         segmentation=False, split="train")
    op = tr["meta"]["operating_point"]
    assert "'val' cases" in op["source"] and tr["meta"]["n_evaluated"] == list(splits.values()).count("train")
    for j, k in enumerate(KEYS):
        yv = y[val, j]
        if len(set(yv)) == 2:
            assert op["thresholds"][k] == pytest.approx(threshold_youden(yv, p[val, j]))
        else:
            assert k in op["head_threshold_fallback"]
    # user errors: one line, exit 2, nothing written
    out = tmp_path / "never"
    assert main(["evaluate", "--manifest", str(cohort["manifest"]), "--predictions", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    assert "predictions folder not found" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "--manifest", str(cohort["manifest"]), "--predictions", str(cohort["preds"]),
                 "--out", str(out), "--operating-point", "sens=1.5"]) == 2
    assert "unknown operating point" in capsys.readouterr().err and not out.exists()
    unlabelled = tmp_path / "unlabelled.csv"
    with open(cohort["manifest"], newline="") as f:
        recs = list(csv.DictReader(f))
    cols = ["study_id", "patient_id", "sagittal", "coronal", "axial"]
    unlabelled.write_text("\n".join([",".join(cols)] + [",".join(
        str((cohort["manifest"].parent / r[c]).resolve()) if c in cols[2:] and r[c] else r[c] for c in cols)
        for r in recs]) + "\n")
    assert main(["evaluate", "--manifest", str(unlabelled), "--predictions", str(cohort["preds"]),
                 "--out", str(out)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err and not out.exists()


def test_cohort_report(cohort, capsys):
    out = cohort["root"] / "report" / "cohort.html"
    assert main(["report", "--cohort", str(cohort["preds"]), "--manifest", str(cohort["manifest"]),
                 "--out", str(out), "--bootstrap", "100"]) == 0
    text = out.read_text()
    assert "Research use only, not for clinical decisions." in text[:2000]  # banner at the top
    for r in _manifest_rows(cohort["manifest"])[:4]:
        assert r["study_id"] in text
    assert BROKEN in text  # in the errors table
    assert "AUROC [95% CI]" in text and "Dice mean [95% CI]" in text and "By center" in text
    assert text.count("data:image/png;base64,") >= 7 and 'src="http' not in text
    assert (cohort["preds"] / "evaluation" / "evaluation.json").is_file()
    cases = (cohort["root"] / "report" / "cohort_cases.csv").read_text()
    assert cases.startswith(f"# {DISCLAIMER}") and len(cases.strip().splitlines()) == 1 + 1 + 4
    capsys.readouterr()
    # second run: the evaluation in DIR/evaluation is up to date and reused
    assert main(["report", "--cohort", str(cohort["preds"]), "--manifest", str(cohort["manifest"]),
                 "--out", str(out)]) == 0
    assert "evaluating" not in capsys.readouterr().out
    assert "evaluation reused" in out.read_text()


def test_cohort_report_anonymized(cohort):
    ids = []
    for r in _manifest_rows(cohort["manifest"]):
        ids += [r["study_id"], r["patient_id"]]
    outs = []
    for name, salt in (("a.html", "s3cret"), ("b.html", "s3cret"), ("c.html", None)):
        out = cohort["root"] / "anon" / name
        argv = ["report", "--cohort", str(cohort["preds"]), "--manifest", str(cohort["manifest"]), "--out", str(out),
                "--anonymize"] + (["--anonymize-salt", salt] if salt else [])
        assert main(argv) == 0
        outs.append(out)
        for path in (out, out.with_name(out.stem + "_cases.csv")):
            data = path.read_bytes()
            leaked = [i for i in ids if i.encode() in data]
            assert not leaked, f"{path.name} contains {leaked}"
            assert DISCLAIMER.encode() in data
    a, b, c = (o.with_name(o.stem + "_cases.csv").read_text().splitlines() for o in outs)
    pseudo = lambda lines: [ln.split(",")[0] for ln in lines[2:]]
    assert pseudo(a) == pseudo(b) and len(set(pseudo(a))) == 4  # same salt: same pseudonyms, one per case
    assert set(pseudo(a)).isdisjoint(pseudo(c))                  # another salt: unlinkable


def test_demo_report_anonymized(cohort, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--draws", "1", "--anonymize"]) == 0
    text = (out / "report.html").read_text()
    assert "sample-knee" not in text and "Case <b>case-" in text
    assert "Research use only, not for clinical decisions." in text
    shutil.rmtree(out)
