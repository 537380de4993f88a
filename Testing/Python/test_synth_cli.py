"""`orthodiffusion synth --n 2` runs, writes a valid manifest, and does not depend on workers."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.io.manifest import read_manifest
from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case


def test_cli_synth_two_cases(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc = main(["synth", "--n", "2", "--out", str(out), "--seed", "1", "--workers", "2",
               "--working-mm", "1.0", "--quiet", "--prevalence", "ACL=0.5,EFFU=0.5"])
    assert rc == 0
    assert "not clinical" in capsys.readouterr().out
    m = read_manifest(out / "manifest.csv")
    assert [r.study_id for r in m] == ["SYN1-00000", "SYN1-00001"]
    for r in m:
        for plane in ("sagittal", "coronal", "axial"):
            assert r.images[plane].is_file() and r.labels[f"labels_{plane}"].is_file()
        assert r.labels["labels_reference"].is_file()
        assert set(r.findings) == {"ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"}
        assert r.center in {"center_a", "center_b", "center_c"}
        assert r.field_strength in (1.5, 3.0)
        assert r.split in ("train", "val", "test")
    # the parallel run equals an in-process generation of the same (seed, index)
    cfg = SynthConfig(seed=1, working_mm=1.0, prevalence={"ACL": 0.5, "PCL": 0.25, "MM": 0.25,
                      "LM": 0.25, "MCL": 0.25, "LCL": 0.25, "PD": 0.25, "EFFU": 0.5})
    case = generate_case(1, cfg)
    disk = sitk.GetArrayFromImage(sitk.ReadImage(str(m.rows[1].images["sagittal"]))).transpose(2, 1, 0)
    mem = np.clip(np.rint(case.stacks["sagittal"].image), 0, 32767).astype(np.int16)
    assert np.array_equal(disk, mem)
    assert m.rows[1].findings == case.findings


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", "--n", "1", "--out", str(tmp_path), "--centers", "center_x"]) == 2
    assert "unknown center_x" in capsys.readouterr().err
    assert main(["synth", "--n", "1", "--out", str(tmp_path), "--prevalence", "FOO=0.2"]) == 2
