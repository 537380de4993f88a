#!/usr/bin/env bash
# Reproduces Resources/Models/knee-demo/{sagittal,coronal,axial}.safetensors (+ .json manifests).
# Data: the kit's real MIT-licensed 3 T sagittal MESE knee, all 8 echoes (one volume per echo; echo 8
# held out for the evaluation loss); coronal/axial inputs are reformats of it. The GPL-3.0 DESS
# files are deliberately NOT used. CPU only: the three planes train at the same time, one thread
# each, nice'd (one thread per process is far more robust than 2-thread OpenMP on a shared 2-core VM).
#   usage: [RESUME=1] scripts/train_demo_backbones.sh [RUN_DIR] [STEPS]
# The shipped files were made in two calls (the first run was cut short by the shared machine's load):
#   scripts/train_demo_backbones.sh /tmp/odl-knee-demo-runs 200
#   RESUME=1 scripts/train_demo_backbones.sh /tmp/odl-knee-demo-runs 400
# Resume is exact, so one call with STEPS=400 gives the same weights (bitwise, same thread count).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-build/knee-demo-runs}
STEPS=${2:-400}
DATA=${DATA:-../shared/data/knee_mese_t2_sag_8echo.nii.gz}
PY=${PY:-.venv/bin/python}
DEST=Resources/Models/knee-demo
mkdir -p "$RUN_DIR" "$DEST"
pids=()
for plane in sagittal coronal axial; do
  OMP_NUM_THREADS=1 nice -n 10 "$PY" -m OrthoDiffusionLib pretrain --plane "$plane" --data "$DATA" \
    --config knee-demo --out "$RUN_DIR/$plane" --steps "$STEPS" --batch-size 2 --seed 0 --device cpu \
    --threads 1 --ckpt-every 50 --eval-every 25 --sample-every 100 --sample-steps 20 --n-samples 3 \
    --ema-decay 0.98 --ema-start 50 \
    --echoes all ${RESUME:+--resume} >> "$RUN_DIR/$plane.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for plane in sagittal coronal axial; do
  cp "$RUN_DIR/$plane/backbone/$plane.safetensors" "$RUN_DIR/$plane/backbone/$plane.json" "$DEST/"
  cp "$RUN_DIR/$plane/loss.png" "$DEST/loss_$plane.png"
  cp "$(ls "$RUN_DIR/$plane"/samples/step_*.png | tail -1)" "$DEST/samples_$plane.png"
done
