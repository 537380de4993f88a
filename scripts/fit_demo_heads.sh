#!/usr/bin/env bash
# Fits the knee-demo heads (Resources/Models/knee-demo/heads/v0001) on the synthetic test bed and
# refreshes the sha256s in Resources/Models/catalogue.json. Needs the knee-demo backbones
# (scripts/train_demo_backbones.sh). CPU only, one thread. Research use only.
#   usage: scripts/fit_demo_heads.sh [N_CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${1:-80}
COHORT=${COHORT:-build/demo-cohort}
DEST=Resources/Models/knee-demo
for p in sagittal coronal axial; do
  [ -f "$DEST/$p.safetensors" ] || { echo "missing $DEST/$p.safetensors: run scripts/train_demo_backbones.sh" >&2; exit 1; }
done
[ -f "$COHORT/manifest.csv" ] || "$PY" -m OrthoDiffusionLib synth --n "$N" --out "$COHORT" --seed 0 --quiet
rm -rf "$DEST/heads"   # a fresh store: the shipped head set is v0001 without a parent
OMP_NUM_THREADS=1 "$PY" -m OrthoDiffusionLib fit --manifest "$COHORT/manifest.csv" --model knee-demo --task all \
  --seed 0 --folds 5 --out "$DEST/heads" --cache build/demo-feature-cache --device cpu --quiet
"$PY" - <<'PY'
from pathlib import Path
from OrthoDiffusionLib.pipeline.catalogue import refresh_file_records
from OrthoDiffusionLib.resources import resource_path
entry = refresh_file_records(resource_path("Models", "catalogue.json"), "knee-demo",
                             extra=["heads/current.json", "heads/versions/v0001/weights.safetensors",
                                    "heads/versions/v0001/manifest.json"])
print("catalogue:", len(entry["files"]), "files")
PY
"$PY" -m OrthoDiffusionLib models verify knee-demo
/usr/bin/time -v "$PY" -m OrthoDiffusionLib demo --out build/demo-check 2>&1 | grep -E "report:|Elapsed|Maximum resident"
