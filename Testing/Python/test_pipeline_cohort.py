"""Cohort predict (resume, corrupt case, workers, torchrun sharding) and the active-learning ranking,
on a toy cohort of three cases plus one truncated .nii.gz, with the shipped knee-demo model."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.cli.main import main
from standins import make_toy_cohort

PLANES = ("sagittal", "coronal", "axial")
GOOD = ["T000", "T001", "T002"]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))  # no user heads shadow the shipped ones
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    good = make_toy_cohort(root / "data", n=3)
    lines = good.read_text().splitlines()
    bad_dir = root / "data" / "cases" / "BAD"
    bad_dir.mkdir()
    for p in PLANES:  # truncated gzip streams: ITK alone would read them as half-zero volumes
        data = (root / "data" / "cases" / "T000" / f"{p}.nii.gz").read_bytes()
        (bad_dir / f"{p}.nii.gz").write_bytes(data[: len(data) // 2])
    bad = lines[1].replace("cases/T000/sagittal", "cases/BAD/sagittal").replace("cases/T000/coronal", "cases/BAD/coronal")
    bad = bad.replace("cases/T000/axial", "cases/BAD/axial").replace("T000,P000", "BAD,PBAD")
    full = root / "data" / "cohort.csv"
    full.write_text("\n".join(lines[:2] + [bad] + lines[2:]) + "\n", encoding="utf-8")
    yield {"root": root, "good": good, "full": full}
    mp.undo()


def _predict(cohort, out, *extra):
    return main(["predict", "--manifest", str(cohort["full"]), "--out", str(out), "--model", "knee-demo",
                 "--device", "cpu", "--draws", "2", "--threads", "1", *extra])


@pytest.fixture(scope="module")
def first_run(cohort):
    out = cohort["root"] / "run1"
    assert _predict(cohort, out, "--cache", str(cohort["root"] / "cache1")) == 0
    return out


def test_cohort_survives_corrupt_case_and_resumes(cohort, first_run, capsys):
    out = first_run
    errors = _read_csv(out / "errors.csv")
    assert [e["study_id"] for e in errors] == ["BAD"] and "truncated gzip" in errors[0]["error"]
    assert not (out / "BAD").exists()  # a failed case leaves no partial folder
    for case in GOOD:
        assert (out / case / "result.json").is_file() and (out / case / "uncertainty_summary.json").is_file()
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["predicted"] == 3 and summary["failed"] == 1 and "Research use only" in summary["disclaimer"]

    mtimes = {c: (out / c / "result.json").stat().st_mtime_ns for c in GOOD}
    capsys.readouterr()
    assert _predict(cohort, out, "--cache", str(cohort["root"] / "cache1")) == 0
    assert "0 predicted, 3 already done, 1 failed" in capsys.readouterr().out
    assert {c: (out / c / "result.json").stat().st_mtime_ns for c in GOOD} == mtimes
    statuses = {c["study_id"]: c["status"] for c in json.loads((out / "cohort_summary.json").read_text())["cases"]}
    assert statuses == {"BAD": "failed", "T000": "skipped", "T001": "skipped", "T002": "skipped"}

    # the failed case is retried: repaired input → predicted, errors.csv gone
    fixed = cohort["root"] / "fixed"
    fixed.mkdir()
    text = cohort["full"].read_text()
    for p in PLANES:
        (fixed / f"{p}.nii.gz").write_bytes((cohort["full"].parent / "cases" / "T000" / f"{p}.nii.gz").read_bytes())
        text = text.replace(f"cases/BAD/{p}.nii.gz", str(fixed / f"{p}.nii.gz"))
    repaired = cohort["root"] / "repaired.csv"
    repaired.write_text(text.replace("cases/T0", str(cohort["full"].parent / "cases") + "/T0"), encoding="utf-8")
    assert main(["predict", "--manifest", str(repaired), "--out", str(out), "--model", "knee-demo", "--device", "cpu",
                 "--draws", "2", "--threads", "1", "--cache", str(cohort["root"] / "cache1")]) == 0
    assert (out / "BAD" / "result.json").is_file() and not (out / "errors.csv").exists()
    assert {c: (out / c / "result.json").stat().st_mtime_ns for c in GOOD} == mtimes


def _case_arrays(folder):
    f = json.loads((folder / "findings.json").read_text())["findings"]
    return {"prob": np.array([x["probability"] for x in f]), "spread": np.array([x["spread"] for x in f]),
            "weights": np.array([[x["plane_weights"][p] for p in PLANES] for x in f]),
            "labels": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd"))),
            "uncertainty": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "uncertainty.nrrd"))),
            "summary": json.loads((folder / "uncertainty_summary.json").read_text())}


def test_two_workers_match_one(cohort, first_run):
    out = cohort["root"] / "run2"
    # own feature cache: the features are recomputed in the workers, not read back from run 1
    assert _predict(cohort, out, "--workers", "2", "--cache", str(cohort["root"] / "cache2")) == 0
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["workers"] == 2 and summary["predicted"] == 3 and summary["failed"] == 1
    pids = {c["pid"] for c in summary["cases"]}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert [e["study_id"] for e in _read_csv(out / "errors.csv")] == ["BAD"]
    for case in GOOD:
        a, b = _case_arrays(first_run / case), _case_arrays(out / case)
        for key in ("prob", "spread", "weights", "labels", "uncertainty"):
            assert np.array_equal(a[key], b[key]), (case, key)
        assert a["summary"] == b["summary"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_style_two_ranks_cover_every_row_once(cohort):
    out = cohort["root"] / "ranks"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "OrthoDiffusionLib", "predict", "--manifest", str(cohort["full"]), "--out", str(out),
             "--device", "cpu", "--draws", "2", "--cache", str(cohort["root"] / "cache1")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert "summary:" in results[0][0] and "summary:" not in results[1][0]  # rank 0 reports for the cohort
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["world_size"] == 2
    ids = [c["study_id"] for c in summary["cases"]]
    assert sorted(ids) == sorted(["BAD", *GOOD]) and len(ids) == len(set(ids))
    order = ["T000", "BAD", "T001", "T002"]  # manifest order; rank r takes rows r::2
    assert {c["study_id"]: c["rank"] for c in summary["cases"]} == {s: i % 2 for i, s in enumerate(order)}
    assert [e["study_id"] for e in _read_csv(out / "errors.csv")] == ["BAD"]
    for case in GOOD:
        assert (out / case / "result.json").is_file()


def test_rank_reuses_results_and_sorts_by_score(cohort, first_run, capsys):
    out = cohort["root"] / "ranking.csv"
    mtimes = {c: (first_run / c / "result.json").stat().st_mtime_ns for c in GOOD}
    assert main(["rank", "--manifest", str(cohort["good"]), "--model", "knee-demo", "--out", str(out),
                 "--results", str(first_run), "--device", "cpu", "--draws", "2", "--threads", "1",
                 "--cache", str(cohort["root"] / "cache1")]) == 0
    assert "Research use only" in capsys.readouterr().out
    assert {c: (first_run / c / "result.json").stat().st_mtime_ns for c in GOOD} == mtimes  # reused
    assert out.read_text().startswith("# Research use only")
    rows = _read_csv(out)
    assert sorted(r["study_id"] for r in rows) == GOOD
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and [int(r["rank"]) for r in rows] == [1, 2, 3]
    for r in rows:
        for c in ("draw_spread", "plane_disagreement", "gate_entropy", "seg_entropy", "score"):
            assert math.isfinite(float(r[c])) and float(r[c]) >= 0, (r, c)
        assert r["status"] == "ok" and r["draws"] == "2"
    # the components come from the cohort results: recompute one by hand from its summary file
    s = json.loads((first_run / rows[0]["study_id"] / "uncertainty_summary.json").read_text())
    assert float(rows[0]["draw_spread"]) == pytest.approx(np.mean([f["spread"] for f in s["findings"].values()]),
                                                          rel=1e-5)
    disagreement = np.mean([np.std([f["expert_probabilities"][p] for p in PLANES]) for f in s["findings"].values()])
    assert float(rows[0]["plane_disagreement"]) == pytest.approx(disagreement, rel=1e-5)


def test_rank_score_is_mean_percentile_rank():
    from OrthoDiffusionLib.inference.rank import rank_table

    entries = [{"study_id": "a", "status": "ok", "draw_spread": 0.1, "plane_disagreement": 0.0, "seg_entropy": 0.5},
               {"study_id": "b", "status": "ok", "draw_spread": 0.3, "plane_disagreement": 0.2, "seg_entropy": 0.4},
               {"study_id": "c", "status": "failed", "error": "x"}]
    rows = rank_table(entries)
    assert [r["study_id"] for r in rows] == ["b", "a", "c"]
    assert rows[0]["score"] == pytest.approx((1.0 + 1.0 + 0.5) / 3) and rows[1]["score"] == pytest.approx(2 / 3)
    assert "rank" not in rows[2]


def test_rank_adds_the_summary_to_a_folder_without_one(cohort, first_run, tmp_path):
    """A result folder from single-case predict has no uncertainty_summary.json: rank recomputes it in
    memory, adds it next to the untouched result files, and gets the cohort run's values."""
    import shutil

    from OrthoDiffusionLib.io.manifest import read_manifest, write_manifest

    results = tmp_path / "results"
    shutil.copytree(first_run, results)  # a cohort output (owned) whose T001 lost its summary
    (results / "T001" / "uncertainty_summary.json").unlink()
    mtime = (results / "T001" / "result.json").stat().st_mtime_ns
    one = write_manifest([r for r in read_manifest(cohort["good"]).rows if r.study_id == "T001"], tmp_path / "one.csv")
    assert main(["rank", "--manifest", str(one), "--model", "knee-demo", "--out", str(tmp_path / "r.csv"),
                 "--results", str(results), "--device", "cpu", "--draws", "2", "--threads", "1",
                 "--cache", str(cohort["root"] / "cache1")]) == 0
    assert (results / "T001" / "result.json").stat().st_mtime_ns == mtime
    got = json.loads((results / "T001" / "uncertainty_summary.json").read_text())
    assert got == json.loads((first_run / "T001" / "uncertainty_summary.json").read_text())
    assert [r["study_id"] for r in _read_csv(tmp_path / "r.csv")] == ["T001"]
