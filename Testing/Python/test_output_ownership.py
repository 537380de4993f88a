"""Output ownership (issue #17, data loss): the tool replaces or deletes only what it can prove it
wrote. Each test reproduces one reported loss on real files and checks nothing was touched."""

from __future__ import annotations

import json
import shutil

import pytest

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.io.manifest import write_manifest
from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.ownership import (MARKER, check_file_replaceable, check_replaceable, claim_folder,
                                         read_marker, remove_owned, HTML_SIGNATURE)
from OrthoDiffusionLib.storage import staged_folder


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def cohort_folder(tmp_path, sample_knee):
    """A user's cohort folder: images, the manifest and the user's notes side by side."""
    d = tmp_path / "cohort"
    (d / "K1").mkdir(parents=True)
    shutil.copy(sample_knee, d / "K1" / "sag.nii.gz")
    (d / "K1" / "notes.txt").write_text("reader 1: ACL looks torn")
    manifest = write_manifest([{"study_id": "K1", "patient_id": "P1", "sagittal": str(d / "K1" / "sag.nii.gz")}],
                              d / "manifest.csv")
    return d, manifest


def test_cohort_out_set_to_the_cohort_folder_is_refused_and_nothing_deleted(cohort_folder, home, capsys):
    d, manifest = cohort_folder
    before = _snapshot(d)
    rc = main(["predict", "--manifest", str(manifest), "--out", str(d), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "contains the input" in err and "Traceback" not in err
    assert _snapshot(d) == before


def test_cohort_out_unrelated_folder_keeps_its_files(cohort_folder, tmp_path, home, capsys):
    _, manifest = cohort_folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "errors.csv").write_text("my own spreadsheet\n")
    before = _snapshot(other)
    assert main(["predict", "--manifest", str(manifest), "--out", str(other), "--device", "cpu"]) == 2
    assert "is not empty and is not an earlier OrthoDiffusion cohort output" in capsys.readouterr().err
    assert _snapshot(other) == before


def test_single_predict_never_replaces_a_folder_with_user_files(tmp_path, sample_knee, home, capsys):
    out = tmp_path / "thesis"
    (out / "data").mkdir(parents=True)
    (out / "thesis.docx").write_bytes(b"PK\x03\x04 chapter 3")
    (out / "result.json").write_text("{}")  # looked like a previous result to the old rule
    (out / "data" / "table.csv").write_text("a,b\n1,2\n")
    before = _snapshot(out)
    rc = main(["predict", str(sample_knee), "--out", str(out), "--device", "cpu", "--draws", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "did not write" in err and "thesis.docx" in err
    assert _snapshot(out) == before


def test_repredict_replaces_own_output_but_not_once_a_user_file_is_added(tmp_path, sample_knee, home, capsys):
    out = tmp_path / "case"
    args = ["predict", str(sample_knee), "--out", str(out), "--device", "cpu", "--draws", "1",
            "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    marker = read_marker(out)
    assert marker["kind"] == "case" and {"result.json", "labels.nrrd", "findings.json"} <= set(marker["files"])
    assert main(args) == 0  # an earlier output holding only the tool's files: replaced
    (out / "my_measurements.txt").write_text("patella 12 mL")
    before = _snapshot(out)
    assert main(args) == 2
    assert "my_measurements.txt" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_input_inside_out_is_refused(tmp_path, sample_knee, home, capsys):
    out = tmp_path / "study"
    out.mkdir()
    shutil.copy(sample_knee, out / "sag.nii.gz")
    before = _snapshot(out)
    assert main(["predict", str(out / "sag.nii.gz"), "--out", str(out), "--device", "cpu"]) == 2
    assert "did not write" in capsys.readouterr().err  # the folder is the user's: refused before anything
    assert _snapshot(out) == before
    empty_out = tmp_path / "new"
    with pytest.raises(UserError, match="contains the input"):
        from OrthoDiffusionLib.ownership import refuse_inputs_inside

        refuse_inputs_inside(empty_out, [empty_out / "x.nii.gz"])


def test_out_symlink_refused_before_computing(tmp_path, sample_knee, home, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert main(["predict", str(sample_knee), "--out", str(link), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err and "timings" not in err
    assert list(real.iterdir()) == [] and link.is_symlink()


def test_staged_folder_rechecks_before_replacing(tmp_path):
    """A file the user drops into an owned folder while a job runs stops the replacement."""
    dest = tmp_path / "case"
    with staged_folder(dest) as stage:
        (stage / "result.json").write_text("{}")
    with pytest.raises(UserError, match="late.txt"):
        with staged_folder(dest) as stage:
            (stage / "result.json").write_text('{"new": 1}')
            (dest / "late.txt").write_text("written meanwhile")
    assert (dest / "result.json").read_text() == "{}" and (dest / "late.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["case"]  # no staging folder left


def test_claim_and_remove_owned(tmp_path):
    d = claim_folder(tmp_path / "c", "cohort")
    (d / "errors.csv").write_text("x")
    assert not remove_owned(d, "errors.csv", "cohort")  # not recorded: not provably ours
    assert (d / "errors.csv").is_file()
    from OrthoDiffusionLib.ownership import record_files

    record_files(d, "cohort", "errors.csv")
    assert remove_owned(d, "errors.csv", "cohort") and not (d / "errors.csv").exists()
    with pytest.raises(UserError, match="'cohort' output, not a 'evaluation'"):
        claim_folder(d, "evaluation")
    with pytest.raises(UserError, match="not a 'case'"):
        check_replaceable(d, "case")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MARKER).write_text("{not json")
    with pytest.raises(UserError, match="did not write"):
        check_replaceable(tmp_path / "broken", "case")


def test_report_out_never_overwrites_a_foreign_file(tmp_path):
    mine = tmp_path / "report.html"
    mine.write_text("<html>my own notes</html>")
    with pytest.raises(UserError, match="was not written by OrthoDiffusion"):
        check_file_replaceable(mine, HTML_SIGNATURE)
    ours = tmp_path / "ours.html"
    ours.write_bytes(b'<!DOCTYPE html><html><head><meta charset="utf-8">' + HTML_SIGNATURE + b'">')
    assert check_file_replaceable(ours, HTML_SIGNATURE) == ours


def test_report_cli_refuses_foreign_html_and_csv(tmp_path, capsys):
    from OrthoDiffusionLib.reports.cohort import write_cohort_report

    cohort = claim_folder(tmp_path / "preds", "cohort")
    (cohort / "errors.csv").write_text("# x\nstudy_id,error,trace\nA,boom,\n")
    foreign = tmp_path / "summary.html"
    foreign.write_text("<html>the department's summary</html>")
    rc = main(["report", "--cohort", str(cohort), "--out", str(foreign)])
    assert rc == 2 and "was not written by OrthoDiffusion" in capsys.readouterr().err
    assert foreign.read_text() == "<html>the department's summary</html>"
    csv_only = tmp_path / "r_cases.csv"
    csv_only.write_text("id,value\n1,2\n")
    with pytest.raises(UserError, match="r_cases.csv"):
        write_cohort_report(cohort, out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    paths = write_cohort_report(cohort, out=tmp_path / "fresh.html")
    again = write_cohort_report(cohort, out=tmp_path / "fresh.html")  # its own files: overwritten
    assert paths["html"] == again["html"] and HTML_SIGNATURE in paths["html"].read_bytes()


def test_cohort_study_id_equal_to_errors_csv_is_refused_per_case(tmp_path):
    from OrthoDiffusionLib.inference.cohort import case_folder_problem

    assert "uses itself" in case_folder_problem("errors.csv")
    assert "uses itself" in case_folder_problem(".hidden")
    assert case_folder_problem("K001") is None
    assert "folder name" in case_folder_problem("../x")


def test_marker_lists_what_was_written(tmp_path):
    dest = tmp_path / "case"
    with staged_folder(dest) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    marker = json.loads((dest / MARKER).read_text())
    assert marker["files"] == ["a.txt", "sub"] and marker["kind"] == "case"
    assert "Research use only" in marker["disclaimer"]
