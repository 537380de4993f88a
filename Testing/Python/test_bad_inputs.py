"""The bad-input corpus (Testing/Data/bad, made by scripts/make_bad_inputs.py): every case is
refused by the ``orthodiffusion predict`` CLI and by the library call that reads it, with the
expected exit code and message fragment, one line, no traceback, and no output folder left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from OrthoDiffusionLib.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "Testing" / "Data" / "bad"
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
CASES = json.loads((BAD / "cases.json").read_text())["cases"]
CLI_CASES = [c for c in CASES if c["cli"]]


def _fill(value, out: Path):
    if isinstance(value, str):
        return value.replace("{bad}", str(BAD)).replace("{out}", str(out)).replace("{sample}", str(SAMPLE))
    if isinstance(value, list):
        return [_fill(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, out) for k, v in value.items()}
    return value


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))


def _snapshot(path: Path) -> dict:
    """Files (and their bytes) under ``path``: an output folder must be absent or unchanged."""
    if not path.exists():
        return {}
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _out_target(c: dict, out: Path) -> Path:
    args = _fill(c["cli"], out)
    return Path(args[args.index("--out") + 1])


def test_corpus_is_complete_and_small():
    assert len(CASES) >= 40
    assert len({c["id"] for c in CASES}) == len(CASES)
    size = sum(p.stat().st_size for p in BAD.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024
    for c in CASES:
        assert c["exit"] != 0 and c["message"] and c["api"]["call"]


@pytest.mark.parametrize("c", CLI_CASES, ids=[c["id"] for c in CLI_CASES])
def test_cli_refuses(c, tmp_path, capsys):
    from OrthoDiffusionLib.cli.main import main

    out = tmp_path / "out"
    target = _out_target(c, out)
    before = _snapshot(target)
    rc = main(_fill(c["cli"], out))
    captured = capsys.readouterr()
    assert rc == c["exit"], captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("orthodiffusion predict: error: ")
    assert c["message"] in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(target) == before  # absent stays absent; someone else's folder is untouched
    siblings = [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert siblings == []  # no staging leftovers


def _call(c: dict, tmp_path: Path):
    kw = _fill(c["api"]["kwargs"], tmp_path / "out")
    call = c["api"]["call"]
    if call == "load_study":
        from OrthoDiffusionLib.io import load_study

        return load_study(kw.pop("paths"), **kw)
    if call == "guard":
        from OrthoDiffusionLib.inference.guard import guard_predict

        return guard_predict(kw.pop("inputs"), model="knee-demo", draws=3, log=lambda m: None, **kw)
    if call == "read_manifest":
        from OrthoDiffusionLib.io.manifest import read_manifest

        return read_manifest(kw["path"])
    if call == "read_label_map":
        from OrthoDiffusionLib.io.labels import read_label_map

        return read_label_map(kw["path"])
    if call == "ehr":
        from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

        return validate_ehr(parse_ehr(kw["text"]))
    if call == "get_model":
        from OrthoDiffusionLib.models.catalogue import get_model

        return get_model(kw["model"])
    if call == "predict_job":
        from OrthoDiffusionLib.jobs import PredictJob
        from OrthoDiffusionLib.inference.predict import predict_study

        job = PredictJob(**{"out": str(tmp_path / "out"), "device": "cpu", **kw})
        return predict_study(job, log=lambda m: None)
    raise AssertionError(f"unknown api call {call}")


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_api_refuses(c, tmp_path):
    with pytest.raises(UserError) as info:
        _call(c, tmp_path)
    message = str(info.value)
    assert c["message"] in message and "\n" not in message
    assert info.value.exit_code == c["exit"]
    assert not (tmp_path / "out").exists()


REAL_PROCESS = ["huge_header_nifti", "dicom_missing_orientation", "manifest_duplicate_id", "nan_voxels"]


@pytest.mark.parametrize("cid", REAL_PROCESS)
def test_installed_command_prints_one_line(cid, tmp_path):
    """The same cases through a real process: stderr is one line, no traceback, nothing written."""
    c = next(c for c in CASES if c["id"] == cid)
    out = tmp_path / "out"
    env = {**os.environ, "ORTHODIFFUSION_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", *_fill(c["cli"], out)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert proc.returncode == c["exit"], proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and c["message"] in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_relative_manifest_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    """The documented rule: a relative image path is relative to the manifest's folder, never the cwd."""
    from OrthoDiffusionLib.io.manifest import read_manifest

    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "knee.nrrd").write_bytes((BAD / "manifests" / "knee.nrrd").read_bytes())
    (folder / "m.csv").write_text("study_id,patient_id,sagittal,coronal,axial\nS1,P1,knee.nrrd,,\n")
    monkeypatch.chdir(BAD / "manifests")  # the knee.nrrd in the cwd must not be the one picked
    row = read_manifest(folder / "m.csv").rows[0]
    assert row.images["sagittal"] == folder.resolve() / "knee.nrrd"


def test_correction_with_labels_outside_the_set_is_refused_and_nothing_saved(tmp_path):
    """A cast to uint8 would have wrapped the bad values into valid-looking labels."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.results.corrections import CorrectionsStore

    store = CorrectionsStore(tmp_path / "corrections")
    for name in ("labels_out_of_set.nrrd", "labels_negative.nrrd", "labels_fractional.nrrd"):
        with pytest.raises(UserError, match="label map correction of case1"):
            store.save("case1", sitk.ReadImage(str(BAD / name)), {})
    assert store.entries() == [] and not list((tmp_path / "corrections").rglob("*.nrrd"))
