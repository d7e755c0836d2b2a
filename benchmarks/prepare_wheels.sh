#!/usr/bin/env bash
# Collect, on a machine with network, everything benchmarks/gpu_suite.sh installs on a GPU
# machine without it: the project's own wheel and the wheels of all its dependencies (with the
# `test` extra: librosa for the seed's way, pytest), torch excluded (the GPU machine's own torch
# is used, with its CUDA build).
#
#   benchmarks/prepare_wheels.sh [DEST]          DEST defaults to wheels/ at the repository root
#
# Then copy the repository with DEST to the GPU machine and run benchmarks/gpu_suite.sh there.
#
# Environment:
#   PYTHON          the interpreter to resolve with (default python3). Use the GPU machine's
#                   Python minor version, or set TARGET_PYTHON, since binary wheels (numpy, av,
#                   numba, ...) are built per Python version.
#   TARGET_PYTHON   e.g. 3.10: download wheels for that Python instead of PYTHON's own
#   TARGET_PLATFORM e.g. manylinux2014_x86_64 (with TARGET_PYTHON; default: this machine's)
#
# How: pip resolves the whole set once (`pip install --dry-run --ignore-installed --report`,
# which reads torch's metadata but installs and keeps nothing), then every package the report
# names except torch and the CUDA packages that come with it (nvidia-*, cuda-*, triton) is downloaded
# with --no-deps at the resolved version.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo/wheels}"
py="${PYTHON:-python3}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

target=()
if [ -n "${TARGET_PYTHON:-}" ]; then
    target+=(--python-version "$TARGET_PYTHON" --only-binary=:all:)
    [ -n "${TARGET_PLATFORM:-}" ] && target+=(--platform "$TARGET_PLATFORM")
fi

echo "prepare_wheels: building the highlightsense wheel" >&2
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$work/own" "$repo"
wheel="$(ls "$work"/own/highlightsense-*.whl)"
rm -f "$dest"/highlightsense-*.whl
cp "$wheel" "$dest/"

echo "prepare_wheels: resolving its dependencies" >&2
"$py" -m pip install --quiet --dry-run --ignore-installed "${target[@]}" \
    --report "$work/report.json" "$wheel[test]"

"$py" - "$work/report.json" > "$work/pins.txt" <<'EOF'
import json
import re
import sys

skip = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|highlightsense)$")
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
    if not skip.match(name):
        print(f"{name}=={meta['version']}")
EOF
echo "prepare_wheels: downloading $(wc -l < "$work/pins.txt") packages (torch excluded)" >&2
"$py" -m pip download --quiet --no-deps "${target[@]}" --dest "$dest" -r "$work/pins.txt"

# Wheels only, so the offline install never builds anything: an sdist left here would need
# its build backend, which the GPU machine cannot fetch.
sdists="$(find "$dest" -maxdepth 1 -name '*.tar.gz' -o -maxdepth 1 -name '*.zip')"
if [ -n "$sdists" ]; then
    echo "prepare_wheels: building wheels from source distributions" >&2
    for s in $sdists; do
        "$py" -m pip wheel --quiet --no-deps --wheel-dir "$dest" "$s" && rm -f "$s"
    done
fi
echo "prepare_wheels: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest" >&2
