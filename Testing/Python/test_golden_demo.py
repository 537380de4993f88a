"""Golden check: ``orthodiffusion demo`` writes the same ``labels.nrrd`` (byte for byte) and the
same findings (every probability, spread, plane weight, structure volume: exact equality) as the
golden files of the shipped model release. Only a model release may update them
(``scripts/update_golden.py``); a code change that moves them is a behaviour change."""

from __future__ import annotations

import json

from golden import canonical_findings, golden_dir, run_demo_isolated


def test_demo_outputs_equal_the_golden_files(tmp_path):
    out, spec = run_demo_isolated(tmp_path)
    golden = golden_dir(spec)
    assert (golden / "labels.nrrd").is_file(), f"no golden files for {spec.id} {spec.version}"
    assert (out / "labels.nrrd").read_bytes() == (golden / "labels.nrrd").read_bytes()
    assert canonical_findings(out / "findings.json") == json.loads((golden / "findings.json").read_text())
