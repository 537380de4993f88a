#!/usr/bin/env bash
# Run HERE (with PyPI), before a GPU loan: the packages the GPU image lacks (KINDS.md: no SimpleITK,
# pydicom, jsonschema, referencing, jsonschema-specifications, rpds-py) for its Python 3.12, unpacked
# into one site folder, xz-compressed and split into parts that each fit beside the repository in
# the 64 MiB a device call may carry. Each part goes into its own ignored folder .whl/call-N; call
# N of `bash scripts/gpu_foundation.sh` carries .whl/call-N (docs/pretraining.md "When a GPU is lent").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl/download .whl/site
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/download SimpleITK==2.5.7 pydicom==3.0.2 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==2026.9.1
for w in .whl/download/*.whl; do "$PY" -m zipfile -e "$w" .whl/site; done  # a wheel is a zip of site-packages
tar -C .whl/site -cf - . | xz -6 -T1 > .whl/site.tar.xz
repo=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
room=$(( 64 * 1024 * 1024 - repo - 3 * 1024 * 1024 ))  # 3 MiB for untracked files and growth
[ "$room" -gt 1048576 ] || { echo "the repository alone ($repo bytes) leaves no room to carry packages" >&2; exit 1; }
split -b "$room" -d -a 1 .whl/site.tar.xz .whl/part-
n=$(ls .whl/part-* | wc -l)
sha=$(sha256sum .whl/site.tar.xz | cut -d' ' -f1)
i=1
for p in .whl/part-*; do
    mkdir -p ".whl/call-$i" && mv "$p" ".whl/call-$i/" && printf '%s %s\n' "$n" "$sha" > ".whl/call-$i/PARTS"
    i=$((i + 1))
done
rm -rf .whl/download .whl/site .whl/site.tar.xz
echo "packages: $(du -sh .whl | cut -f1) in $n part(s); device calls: $(for k in $(seq 1 "$n"); do printf 'carry .whl/call-%s  ' "$k"; done)"
