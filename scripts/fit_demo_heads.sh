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
[ -f "$COHORT/manifest.csv" ] || "$PY" -m OrthoDiffusionLib synth --n "$N" --out "$COHORT" --seed 0 --quiet \
  --finding-difficulty 0.5  # the generator the shipped heads were fitted with (before per-finding defaults)
# a fresh store (the shipped head set is v0001 without a parent), fitted aside and swapped in at the
# end so the shipped model is never left without heads while the fit runs
NEW=build/knee-demo-heads-new
rm -rf "$NEW"
OMP_NUM_THREADS=1 "$PY" -m OrthoDiffusionLib fit --manifest "$COHORT/manifest.csv" --model knee-demo --task all \
  --seed 0 --folds 5 --out "$NEW" --cache build/demo-feature-cache --device cpu --quiet \
  --replay 24   # 24 replay cases (~2.8 MB) keep the whole knee-demo model under the 30 MB budget (48: ~5.5 MB)
rm -rf "$DEST/heads.old" && { [ ! -d "$DEST/heads" ] || mv "$DEST/heads" "$DEST/heads.old"; } && mv "$NEW" "$DEST/heads" \
  && rm -rf "$DEST/heads.old"
"$PY" - <<'PY'
from pathlib import Path
from OrthoDiffusionLib.pipeline.catalogue import refresh_file_records
from OrthoDiffusionLib.resources import resource_path
root = resource_path("Models", "knee-demo")
# every file of the shipped head set (weights, manifest, and whatever else fit stores, e.g. a replay sample)
heads = sorted(str(p.relative_to(root)) for p in (root / "heads" / "versions" / "v0001").rglob("*") if p.is_file())
entry = refresh_file_records(resource_path("Models", "catalogue.json"), "knee-demo",
                             extra=["heads/current.json", *heads])
print("catalogue:", len(entry["files"]), "files")
PY
"$PY" -m OrthoDiffusionLib models verify knee-demo
/usr/bin/time -v "$PY" -m OrthoDiffusionLib demo --out build/demo-check 2>&1 | grep -E "report:|Elapsed|Maximum resident"
# README screenshot of the demo report (headless Chromium; skipped when it is not installed)
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
    --screenshot="$PWD/docs/demo_report.png" "file://$PWD/build/demo-check/report.html" 2>/dev/null
fi
