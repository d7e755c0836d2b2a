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
#   HAVE            a file listing what the GPU machine has installed (`gpu_suite.sh --have`
#                   there: name==version lines): those versions are preferred when the bounds
#                   allow them (pip constraints) and not downloaded, so only what it lacks
#                   travels (a call to that machine carries 64 MiB)
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
have=()
if [ -n "${HAVE:-}" ]; then
    # Plain pins only (an editable or direct-URL line is no constraint pip can take).
    grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ ;@]+$' "$HAVE" | grep -viE '^highlightsense==' \
        > "$work/have.txt" || true
    have=(-c "$work/have.txt")
fi
if ! "$py" -m pip install --quiet --dry-run --ignore-installed "${target[@]}" "${have[@]}" \
        --report "$work/report.json" "$wheel[test]"; then
    [ -n "${HAVE:-}" ] || exit 1
    echo "prepare_wheels: the installed versions in $HAVE do not all fit the bounds; resolving" \
         "without them (those that differ travel)" >&2
    "$py" -m pip install --quiet --dry-run --ignore-installed "${target[@]}" \
        --report "$work/report.json" "$wheel[test]"
fi

"$py" - "$work/report.json" "${HAVE:+$work/have.txt}" > "$work/pins.txt" <<'EOF'
import json
import re
import sys


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


skip = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|highlightsense)$")
have = set()
if len(sys.argv) > 2 and sys.argv[2]:
    for line in open(sys.argv[2]):
        name, _, version = line.strip().partition("==")
        have.add((norm(name), version))
kept = 0
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    name = norm(meta["name"])
    if skip.match(name):
        continue
    if (name, meta["version"]) in have:
        kept += 1
        continue
    print(f"{name}=={meta['version']}")
if have:
    print(f"prepare_wheels: {kept} packages the GPU machine has already stay behind",
          file=sys.stderr)
EOF
echo "prepare_wheels: downloading $(wc -l < "$work/pins.txt") packages (torch excluded)" >&2
if [ -s "$work/pins.txt" ]; then
    "$py" -m pip download --quiet --no-deps "${target[@]}" --dest "$dest" -r "$work/pins.txt"
fi

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
size=$(du -sm "$dest" | cut -f1)
[ "$size" -le 64 ] || echo "prepare_wheels: note: $size MiB is more than one call to the GPU" \
    "machine carries (64 MiB): give HAVE, or carry the wheels over several calls" >&2
