"""Resource guards, privacy, no network, and two predictions sharing one feature cache.

Real runs of ``orthodiffusion predict`` with the shipped knee-demo model on the sample knee (or a
small DICOM series written here). Research use only, not for clinical decisions.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import ResourceError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
BAD = REPO / "Testing" / "Data" / "bad"


def _env(tmp: Path, cache: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OD_TEST_KILL_AT"}
    env.update({"ORTHODIFFUSION_HOME": str(tmp / "home"), "ORTHODIFFUSION_CACHE": str(cache or tmp / "cache"),
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return env


def _predict_cmd(inputs, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "OrthoDiffusionLib", "predict", *map(str, inputs), "--out", str(out),
            "--device", "cpu", *extra]


# ------------------------------------------------------------------------------ resource guards
def test_memory_estimate_within_factor_two_of_measured_peak(tmp_path):
    """The estimate printed before loading vs the peak RSS the same process reached (demo case)."""
    out = tmp_path / "out"
    proc = subprocess.run(_predict_cmd([SAMPLE], out, "--reformat"), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    estimate = float(re.search(r"memory estimate ([0-9.]+) GB", proc.stdout).group(1)) * 1e9  # bytes
    stages = json.loads((out / "result.json").read_text())["provenance"]["stages"]
    peak = max(s["peak_rss_mb"] for s in stages.values()) * 2**20  # peak_rss_mb is MiB (ru_maxrss)
    assert 0.5 <= estimate / peak <= 2.0, (estimate, peak)


def test_max_voxels_refuses_from_the_header_alone(tmp_path):
    """The header declares 2.5 G voxels and the data file is empty: the refusal (with sizes) proves
    no pixel was read; a read would fail with another message."""
    from OrthoDiffusionLib.inference.guard import guard_predict

    huge = BAD / "huge_5gb.nhdr"
    assert (BAD / "huge_5gb.raw").stat().st_size == 0
    with pytest.raises(ResourceError) as info:
        guard_predict([huge], "knee-demo", draws=3, log=lambda m: None)
    msg = str(info.value)
    assert "2048x2048x600 = 2,516,582,400 voxels" in msg and "5.0 GB of pixel data" in msg
    assert "--max-voxels 134,217,728" in msg
    # a limit above the size lets it through to the memory check, which refuses on the estimate
    with pytest.raises(ResourceError, match="needs an estimated"):
        guard_predict([huge], "knee-demo", draws=3, max_voxels=10**10, available=8 * 10**9, log=lambda m: None)


def test_memory_guard_scales_with_the_input_and_passes_small_cases():
    from OrthoDiffusionLib.io.guards import read_headers
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.inference.guard import estimate_predict_memory, guard_predict

    spec = get_model("knee-demo")
    small = estimate_predict_memory(read_headers(SAMPLE), spec, draws=3)
    big = estimate_predict_memory(read_headers(BAD / "big_float.nhdr"), spec, draws=3)
    assert big.parts["segmentation"] > 50 * small.parts["segmentation"] > 0
    assert guard_predict([SAMPLE], "knee-demo", draws=3, available=64 * 10**9, log=lambda m: None).total == \
        pytest.approx(small.total, rel=0.2)


# ---------------------------------------------------------------------------------- privacy
NAME, PATIENT_ID, BIRTH = "Doe^Jane", "MRN-4417-93", "19610203"


def _write_named_dicom(folder: Path) -> None:
    """A sagittal MR series (the sample knee, shrunk) whose headers carry a patient's identity."""
    from test_io_dicom import STUDY_UID, write_dicom_series

    knee = sitk.Cast(sitk.BinShrink(sitk.ReadImage(str(SAMPLE)), [2, 2, 1]), sitk.sitkInt16)
    write_dicom_series(knee, folder, f"{STUDY_UID}.1", "T2 SAG", extra={
        "0010|0010": NAME, "0010|0020": PATIENT_ID, "0010|0030": BIRTH, "0008|0080": "St Elsewhere Hospital",
        "0008|0090": "House^Gregory", "0008|0050": "ACC-77123"})


def test_outputs_and_logs_hold_no_patient_identity(tmp_path):
    dicom = tmp_path / "study"
    _write_named_dicom(dicom)
    out = tmp_path / "out"
    proc = subprocess.run(_predict_cmd([dicom], out), env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    files = [p for root in (out, tmp_path / "cache", tmp_path / "home") if root.exists()
             for p in root.rglob("*") if p.is_file()]
    assert (out / "result.json").is_file() and len(files) > 5
    secrets = [NAME, PATIENT_ID, BIRTH, "St Elsewhere", "House^Gregory", "ACC-77123"]
    short = ["Doe", "Jane"]  # 3-4 bytes occur by chance in compressed voxel data: searched in text only
    for text, where in [(proc.stdout, "stdout"), (proc.stderr, "stderr")] + [
            (p.read_bytes().decode("latin-1"), str(p)) for p in files]:
        leaked = [s for s in secrets if s in text] + [s for s in short if s in _text_part(where, text)]
        assert not leaked, f"{where} contains {leaked}"


def _text_part(where: str, content: str) -> str:
    """What a person or a program reads as text: NRRD headers, safetensors JSON headers, text files."""
    if where.endswith(".nrrd"):
        return content.split("\n\n", 1)[0]
    if where.endswith(".safetensors"):
        n = int.from_bytes(content[:8].encode("latin-1"), "little")
        return content[8:8 + n]
    if where.endswith((".gz", ".png", ".npy", ".pt")):
        return ""
    return content


# ------------------------------------------------------------------------------- no network
def test_predict_runs_with_the_network_blocked(tmp_path, monkeypatch, capsys):
    from OrthoDiffusionLib.cli.main import main

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))
    rc = main(["predict", str(SAMPLE), "--out", str(tmp_path / "out"), "--device", "cpu", "--draws", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "result.json").is_file()
    assert attempts == []


# ------------------------------------------------------------------------------ concurrency
def test_two_predictions_share_one_feature_cache(tmp_path):
    cache = tmp_path / "shared-cache"
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen(_predict_cmd([SAMPLE], out, "--cache", str(cache), "--draws", "2"),
                              env=_env(tmp_path, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=str(REPO)) for out in outs]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    findings = [json.loads((o / "findings.json").read_text())["findings"] for o in outs]
    assert [f["probability"] for f in findings[0]] == [f["probability"] for f in findings[1]]
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(o / "labels.nrrd"))) for o in outs]
    np.testing.assert_array_equal(labels[0], labels[1])
    from safetensors.torch import load_file

    entries = list(cache.rglob("*.safetensors"))
    assert entries and all(load_file(str(e)) for e in entries)
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no temporary file left behind
    # a third run is served from the cache and agrees
    third = subprocess.run(_predict_cmd([SAMPLE], tmp_path / "c", "--cache", str(cache), "--draws", "2"),
                           env=_env(tmp_path, cache), capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert third.returncode == 0, third.stderr
    assert json.loads((tmp_path / "c" / "findings.json").read_text())["findings"] == findings[0]


def test_truncated_label_map_refused(tmp_path):
    """ITK reads a truncated .nii.gz label map as half zeros; read_label_map must refuse it."""
    from OrthoDiffusionLib.errors import InputError
    from OrthoDiffusionLib.io.labels import read_label_map

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 12, size=(24, 48, 48), dtype=np.uint8)
    whole = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(whole))
    assert np.array_equal(sitk.GetArrayFromImage(read_label_map(whole)), arr)
    cut = tmp_path / "cut.nii.gz"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_label_map(cut)
