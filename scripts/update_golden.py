"""Maintainer script, run only for a model release: record the demo's outputs as the golden files
that ``Testing/Python/test_golden_demo.py`` compares every later change against.

    .venv/bin/python scripts/update_golden.py

Writes ``Testing/Data/golden/<model>-<version>/labels.nrrd`` (bytes) and ``findings.json`` (the
run-independent part: findings, planes, structure volumes, feature spec, model and head version;
paths, timings and memory are left out). Research use only, not for clinical decisions.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))

from golden import canonical_findings, golden_dir, run_demo_isolated  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="od-golden-") as tmp:
        out, spec = run_demo_isolated(Path(tmp))
        dest = golden_dir(spec)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "labels.nrrd", dest / "labels.nrrd")
        (dest / "findings.json").write_text(json.dumps(canonical_findings(out / "findings.json"), indent=2) + "\n",
                                            encoding="utf-8")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
