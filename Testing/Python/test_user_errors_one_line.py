"""One line for every user error of issue #17 part 5 (EHR codes, broken model.json, read-only cache,
full disk, reserved study ids) and formula-safe CSV cells. Real files and folders only; research use
only, not for clinical decisions."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from OrthoDiffusionLib.errors import InputError, UserError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
HEADER = "study_id,patient_id,sagittal,coronal,axial"


def _manifest(tmp_path: Path, rows: str, extra_cols: str = "") -> Path:
    shutil.copy(SAMPLE, tmp_path / "knee.nii.gz")
    path = tmp_path / "m.csv"
    path.write_text(f"{HEADER}{extra_cols}\n{rows}")
    return path


# ------------------------------------------------------------------------------ EHR: one rule
@pytest.mark.parametrize("text, fragment", [
    ("age=NaN", "is not a number"), ("height_cm=inf", "is not a number"),
    ("patient_type=astronaut", "'astronaut' is not one of outpatient"), ("event=skydiving", "is not one of sport"),
    ("sex=x", "'x' is not one of F, M"), ("sex=unknown", "is not one of F, M"),
])
def test_ehr_values_the_manifest_refuses_are_refused_by_predict_ehr(tmp_path, text, fragment):
    """Before: NaN became 'missing' and unknown codes 'unknown', silently."""
    from OrthoDiffusionLib.io.manifest import read_manifest
    from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

    with pytest.raises(InputError) as cli_side:
        validate_ehr(parse_ehr(text))
    key, value = text.split("=")
    with pytest.raises(InputError) as manifest_side:
        read_manifest(_manifest(tmp_path, f"S1,P1,knee.nii.gz,,,{value}\n", f",{key}"))
    for info in (cli_side, manifest_side):
        assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("record, fragment", [({"age": True}, "is not a number"), ({"weight_kg": [70]}, "not a number"),
                                              ({"age": float("nan")}, "is not a number"), ({"sex": 1}, "not one of F, M"),
                                              ({"bmi": 22}, "unknown field(s)")])
def test_ehr_json_values_of_the_wrong_kind_are_refused(tmp_path, record, fragment):
    from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

    path = tmp_path / "ehr.json"
    path.write_text(json.dumps(record))  # json writes NaN as NaN, which json.loads reads back
    with pytest.raises(InputError) as info:
        validate_ehr(parse_ehr(str(path)))
    assert fragment in str(info.value)


def test_valid_ehr_is_normalised_the_same_way_on_both_paths(tmp_path):
    from OrthoDiffusionLib.io.manifest import read_manifest
    from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

    record = validate_ehr(parse_ehr("age=54,sex=female,height_cm=170,weight_kg=70,patient_type=Outpatient,event=fall"))
    row = read_manifest(_manifest(tmp_path, "S1,P1,knee.nii.gz,,,54,female,170,70,Outpatient,fall\n",
                                  ",age,sex,height_cm,weight_kg,patient_type,event")).rows[0]
    assert record == row.ehr == {"age": 54.0, "sex": "F", "height_cm": 170.0, "weight_kg": 70.0,
                                 "patient_type": "outpatient", "event": "fall"}


# -------------------------------------------------------------------------- reserved study ids
@pytest.mark.parametrize("sid, fragment", [("errors.csv", "uses itself"), ("Cohort_Summary.json", "uses itself"),
                                           ("evaluation", "uses itself"), (".staging-x", "starts with '.'"),
                                           ("..", "cannot be a folder name"), ("a/b", "cannot be a folder name")])
def test_study_ids_that_are_output_names_are_refused(tmp_path, sid, fragment):
    """Before: a study id errors.csv crashed the end of the cohort and the report said '0 failed'."""
    from OrthoDiffusionLib.io.manifest import read_manifest

    with pytest.raises(InputError, match="study_id") as info:
        read_manifest(_manifest(tmp_path, f"{sid},P1,knee.nii.gz,,\n"))
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------- model.json
@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "home"


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "invalid JSON"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"), ("[1, 2]", "model entry"),
    ('{"id": "x"}', "model entry"), (b"\xff\xfe{", "cannot be read"),
])
def test_broken_user_model_json_is_skipped_for_other_models_and_one_line_for_itself(home, content, fragment, capsys):
    """Before: a broken model.json in the user's folder broke every predict, even of other models."""
    from OrthoDiffusionLib.models import catalogue

    folder = home / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "model.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    catalogue._warned.clear()
    assert "knee-demo" in [m.id for m in catalogue.list_models()]  # the other models still work
    assert catalogue.get_model("knee-demo").id == "knee-demo"
    with pytest.raises(UserError) as info:
        catalogue.get_model("broken")
    assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError) as info:  # the folder given as a path: the same one line
        catalogue.get_model(str(folder))
    assert fragment in str(info.value)


def test_broken_model_json_warns_in_one_line_and_predict_of_another_model_runs(home, tmp_path):
    (home / "models" / "broken").mkdir(parents=True)
    (home / "models" / "broken" / "model.json").write_text("{oops")
    proc = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "models", "list"], capture_output=True, text=True,
                          timeout=300, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "knee-demo" in proc.stdout, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warning) == 1 and "skipped the model" in warning[0] and "invalid JSON" in warning[0]
    proc = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "predict", str(SAMPLE), "--model", "broken",
                           "--out", str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "skipped the model" not in ln]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot be used" in lines[0], proc.stderr


# ------------------------------------------------------------------------ read-only cache, full disk
def test_read_only_feature_cache_warns_once_and_the_prediction_completes(tmp_path, caplog):
    """Before: a PermissionError traceback at the first cache write."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the read-only mount below covers it")
    _predict_with_unwritable_cache(tmp_path, caplog, lambda d: os.chmod(d, 0o555))


def _predict_with_unwritable_cache(tmp_path, caplog, make_unwritable):
    from OrthoDiffusionLib.jobs import PredictJob
    from OrthoDiffusionLib.inference.predict import predict_study

    cache = tmp_path / "cache"
    cache.mkdir()
    make_unwritable(cache)
    try:
        with caplog.at_level("WARNING", logger="orthodiffusion"):
            pred = predict_study(PredictJob(inputs=[str(SAMPLE)], out=str(tmp_path / "out"), device="cpu",
                                            cache=str(cache)), log=lambda m: None)
    finally:
        os.chmod(cache, 0o755)
    assert (tmp_path / "out" / "result.json").is_file() and len(pred.result.findings) == 8
    warnings = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warnings) == 1 and "continuing without caching" in warnings[0]


def _mount_tmpfs(path: Path, size: str, options: str = "") -> None:
    path.mkdir()
    opts = f"size={size}" + (f",{options}" if options else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")


def test_read_only_mounted_cache_warns_once_and_the_prediction_completes(tmp_path, caplog):
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        from OrthoDiffusionLib.jobs import PredictJob
        from OrthoDiffusionLib.inference.predict import predict_study

        with caplog.at_level("WARNING", logger="orthodiffusion"):
            pred = predict_study(PredictJob(inputs=[str(SAMPLE)], out=str(tmp_path / "out"), device="cpu",
                                            cache=str(mount / "features")), log=lambda m: None)
        assert len(pred.result.findings) == 8 and (tmp_path / "out" / "result.json").is_file()
        warnings = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
        assert len(warnings) == 1 and "Read-only file system" in warnings[0]
    finally:
        subprocess.run(["umount", str(mount)])


def test_full_disk_gives_one_line_and_leaves_no_output(tmp_path):
    """Before: several lines from ITK's NRRD writer and a RuntimeError traceback."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "512k")
    try:
        proc = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "predict", str(SAMPLE), "--out",
                               str(mount / "out"), "--device", "cpu"], capture_output=True, text=True, timeout=300,
                              cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                  "ORTHODIFFUSION_HOME": str(tmp_path / "home"),
                                                  "ORTHODIFFUSION_CACHE": str(mount / "cache")})
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "feature cache" not in ln]
        assert proc.returncode == 3, proc.stderr
        assert len(lines) == 1 and "no space left on the device" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and not (mount / "out").exists()
        assert [p.name for p in mount.iterdir() if p.name.startswith(".out.")] == []
    finally:
        subprocess.run(["umount", str(mount)])


def test_enospc_from_python_writes_is_one_line(tmp_path, capsys):
    """An OSError ENOSPC / EROFS reaching the CLI becomes one line (here: writing into /dev/full's twin)."""
    import errno

    from OrthoDiffusionLib.diskspace import as_user_error

    try:
        with open("/dev/full", "w") as f:
            f.write("x" * 10)
            f.flush()
    except OSError as exc:
        user = as_user_error(exc)
        assert exc.errno == errno.ENOSPC and user is not None and user.exit_code == 3
        assert "no space left" in str(user) and "\n" not in str(user)
    else:
        pytest.skip("/dev/full is not available")
    assert as_user_error(OSError(errno.EROFS, "Read-only file system", "/x")).exit_code == 2
    assert as_user_error(OSError(errno.ENOENT, "No such file", "/x")) is None


# ---------------------------------------------------------------------------- CSV formula cells
def test_csv_helper_escapes_formula_cells_and_keeps_numbers():
    from OrthoDiffusionLib import csvsafe

    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["=HYPERLINK(\"http://x\")", "+1+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "-0.25", "+3", "1e-05", "ok", 7])
    cells = next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert cells == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\nx", "-0.25", "+3",
                     "1e-05", "ok", "7"]
    # a CR inside a cell is written as LF (a bare CR would split the row in readers)
    assert [csvsafe.unescape(c) for c in cells[:6]] == ["=HYPERLINK(\"http://x\")", "+1+1", "-cmd", "@SUM(A1)",
                                                        "\tx", "\nx"]


def test_every_csv_writer_of_the_library_goes_through_the_helper():
    """No module writes CSV with the csv module directly (grep, as the review does)."""
    offenders = []
    for path in (REPO / "OrthoDiffusionLib").rglob("*.py"):
        if path.name == "csvsafe.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "csv.writer(" in text.replace("csvsafe.writer(", "") or "csv.DictWriter(" in text.replace(
                "csvsafe.DictWriter(", ""):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_manifest_cells_stay_escaped_in_written_csvs_and_read_back_unchanged(tmp_path):
    from OrthoDiffusionLib.io.manifest import read_manifest, write_manifest
    from OrthoDiffusionLib.evaluation.report import write_csv
    from OrthoDiffusionLib.inference.rank import write_ranking

    m = read_manifest(_manifest(tmp_path, '"=HYPERLINK(""evil"")",@P1,knee.nii.gz,,,+center\n', ",center"))
    row = m.rows[0]
    assert row.study_id == '=HYPERLINK("evil")'
    out = write_manifest([row], tmp_path / "again.csv")
    raw = out.read_text()
    assert "'=HYPERLINK" in raw and ",'@P1," in raw and "'+center" in raw
    back = read_manifest(out).rows[0]  # the tool's own manifests read back as the user wrote them
    assert (back.study_id, back.patient_id, back.center) == (row.study_id, "@P1", "+center")
    table = write_csv(tmp_path / "t.csv", [{"case_id": row.study_id, "dice": -0.5}])
    assert list(csv.reader(table.read_text().splitlines()[1:])) == [["case_id", "dice"],
                                                                    ["'=HYPERLINK(\"evil\")", "-0.5"]]
    ranked = write_ranking([{"rank": 1, "study_id": "-2+3", "score": 0.5}], tmp_path / "rank.csv")
    assert ranked.read_text().splitlines()[2].startswith("1,'-2+3,0.5")


def test_cohort_errors_csv_escapes_the_study_id(tmp_path):
    """errors.csv of a cohort: a study id '=cmd' is escaped, and the evaluation reads it back."""
    from OrthoDiffusionLib.evaluation.cohort import read_errors_csv
    from OrthoDiffusionLib.inference.cohort import _write_reports

    out = tmp_path / "cohort"
    out.mkdir()
    _write_reports(out, [{"study_id": "=cmd|' /C calc'!A0", "status": "failed", "error": "InputError: -bad",
                          "trace": ""}], 1, {}, 1, 1, 1)
    text = (out / "errors.csv").read_text()
    assert text.splitlines()[0].startswith("# Research use only") and "'=cmd" in text and "'-bad" not in text
    assert read_errors_csv(out) == {"=cmd|' /C calc'!A0": "InputError: -bad"}
