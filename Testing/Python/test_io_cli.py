"""``orthodiffusion info`` on the real sample knee."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from OrthoDiffusionLib.cli.main import main


def test_info_prints_plane_and_geometry(sample_knee, capsys):
    assert main(["info", str(sample_knee)]) == 0
    out = capsys.readouterr().out
    assert "planes: sagittal" in out
    assert "256x256x24 voxels" in out and "0.625x0.625x4 mm" in out


def test_info_json(sample_knee, capsys):
    assert main(["info", str(sample_knee), "--json", "--hash"]) == 0
    report = json.loads(capsys.readouterr().out)
    sagittal = report["planes"]["sagittal"]
    assert sagittal["size"] == [256, 256, 24] and sagittal["reformatted"] is False
    assert 2.0 < sagittal["obliquity_deg"] < 15.0 and len(sagittal["volume_hash"]) == 64
    assert report["warnings"] == []


def test_info_bad_path_is_one_line_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such file or folder" in err


def test_installed_command(sample_knee, repo_root):
    exe = Path(sys.executable).parent / "orthodiffusion"
    if not exe.exists():
        exe = repo_root / ".venv" / "bin" / "orthodiffusion"
    done = subprocess.run([str(exe), "info", str(sample_knee)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "sagittal" in done.stdout
    helped = subprocess.run([str(exe), "info", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--json" in helped.stdout


def test_info_reformat_flag_and_ehr(sample_knee, tmp_path, capsys):
    ehr = tmp_path / "ehr.json"
    ehr.write_text('{"age": 54, "sex": "F"}')
    assert main(["info", str(sample_knee), "--reformat", "--slice-mm", "3", "--ehr", str(ehr), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["planes"]) == ["sagittal", "coronal", "axial"]
    assert report["planes"]["coronal"]["reformatted"] and report["planes"]["coronal"]["spacing"][2] == 3.0
    assert report["ehr"] == {"age": 54, "sex": "F"}
