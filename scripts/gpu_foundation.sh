#!/usr/bin/env bash
# The one command for a GPU loan. Call it once per .whl/call-N folder that scripts/gpu_wheels.sh made,
# carrying that folder, back to back (the machine stays warm for about 30 s): each call stores its
# part of the missing packages in /tmp; the call that completes them runs scripts/gpu_foundation.py
# into /tmp/foundation and copies report, backbones and logs into $OUT. Extra arguments go to the script.
set -uo pipefail
cd "$(dirname "$0")/.."
parts=/tmp/orthodiffusion-parts
mkdir -p "$parts"
cp .whl/call-*/part-* .whl/call-*/PARTS "$parts"/ 2>/dev/null || true
if [ -f "$parts/PARTS" ]; then
    read -r n sha < "$parts/PARTS"
    have=$(ls "$parts"/part-* 2>/dev/null | wc -l)
    if [ "$have" -lt "$n" ]; then echo "stored package part(s) $have of $n; make the next call now"; exit 0; fi
    if [ ! -d /tmp/site ]; then
        cat "$parts"/part-* > /tmp/site.tar.xz
        echo "$sha  /tmp/site.tar.xz" | sha256sum -c --quiet || { echo "package parts do not match"; exit 1; }
        mkdir -p /tmp/site && xz -dc /tmp/site.tar.xz | tar -x -C /tmp/site
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/foundation-bundle}
mkdir -p "$out"
rm -rf /tmp/foundation
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/console.txt"
python3 scripts/gpu_foundation.py /tmp/foundation --bundle "$out" "$@" 2>&1 | tee -a "$out/console.txt"
