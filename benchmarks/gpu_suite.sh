#!/usr/bin/env bash
# The benchmark suite on a GPU machine without network, in a few minutes.
#
#   benchmarks/gpu_suite.sh [RESULTS_DIR]     (default: bench-results/<date-time>/ in the repo)
#
# Before: benchmarks/prepare_wheels.sh on a machine with network (the project's wheel and its
# dependencies' wheels, torch excluded, in wheels/), then the repository with wheels/ copied here.
#
# It makes a venv with --system-site-packages (so the machine's own torch, with its CUDA, is
# used), installs highlightsense[test] into it from the wheels only (pip --no-index), then runs
# `python -m highlightsense.benchmarks.bench` (each figure measured in a fresh process):
#   1. compare: the engine against the seed's way on one generated 10-minute VOD, full-size
#      random-weight HTDemucs (htdemucs's shape) and CRNN, --device cuda, Demucs batch 4;
#   2. separate alone on 3 minutes, Demucs batch 1 and 8 (what batching buys on this GPU);
#   3. the engine with float16 separation (--half), 10 minutes;
#   4. with RSS=1, peak RSS of the engine on 10 and 60 minutes with a small Demucs (slower).
# Each prints its table (also in RESULTS_DIR/NAME.txt) and writes RESULTS_DIR/NAME.json.
#
# Environment:
#   WHEELS        the wheels folder (default wheels/ at the repository root)
#   PYTHON        the interpreter with the machine's torch (default python3)
#   VENV          the venv to make (default $TMPDIR/hs-gpu-venv); if it exists already, the
#                 project is installed into it as it is (a venv that has torch, for a dry run)
#   SKIP_INSTALL  1: run with PYTHON as it is, highlightsense already installed
#   DEVICE        default cuda;  MINUTES  default 10;  SEPARATOR_BATCH  default 4
#   SEED_WAY      0 to skip the seed's way (the engine alone in step 1)
#   QUICK         1: a smoke run in about a minute on any machine (half a minute of input,
#                 small CRNN, tiny Demucs; step 3 skipped unless on CUDA)
#   RSS           1: add step 4
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-$repo/bench-results/$(date +%Y%m%d-%H%M%S)}"
wheels="${WHEELS:-$repo/wheels}"
py="${PYTHON:-python3}"
venv="${VENV:-${TMPDIR:-/tmp}/hs-gpu-venv}"
device="${DEVICE:-cuda}"
minutes="${MINUTES:-10}"
batch="${SEPARATOR_BATCH:-4}"
crnn=full
separator=full
stage_minutes=3
rss_minutes=(10 60)
if [ "${QUICK:-0}" = 1 ]; then
    minutes=0.5; crnn=small; separator=tiny; stage_minutes=0.5; rss_minutes=(0.5 1)
fi

say() { echo "gpu_suite: $*" >&2; }

if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    run_py="$py"
else
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -c "import torch" 2>/dev/null || {
            say "$py has no torch: set PYTHON to the interpreter that has the machine's torch"
            exit 1
        }
        say "making $venv (--system-site-packages: this machine's torch)"
        "$py" -m venv --system-site-packages "$venv"
    fi
    [ -d "$wheels" ] || { say "no wheels folder $wheels: run benchmarks/prepare_wheels.sh first"; exit 1; }
    say "installing highlightsense[test] from $wheels (no index)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$wheels" "highlightsense[test]"
    run_py="$venv/bin/python"
fi

"$run_py" - "$device" <<'EOF'
import sys

import torch

import highlightsense

device = sys.argv[1]
print(f"gpu_suite: highlightsense {highlightsense.__version__} from {highlightsense.__file__}; "
      f"torch {torch.__version__} (CUDA {torch.version.cuda})", file=sys.stderr)
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("gpu_suite: --device cuda but torch sees no CUDA GPU here (set DEVICE=cpu?)")
    print(f"gpu_suite: {torch.cuda.get_device_name(0)}", file=sys.stderr)
EOF

mkdir -p "$results"
bench=("$run_py" -m highlightsense.benchmarks.bench --device "$device")
models=(--random-model "$crnn" --random-separator "$separator")
began=$(date +%s)

step() {  # step NAME ARGS...: one bench run, its table to the terminal and NAME.txt
    local name="$1"; shift
    say "== $name: bench $* =="
    "${bench[@]}" "$@" --json-out "$results/$name.json" | tee "$results/$name.txt"
}

compare=(--compare-seed)
[ "${SEED_WAY:-1}" = 0 ] && compare=()
step compare "${compare[@]}" --minutes "$minutes" "${models[@]}" --separator-batch "$batch"
for b in 1 8; do
    step "separate_batch$b" --stage separate --minutes "$stage_minutes" "${models[@]}" \
        --separator-batch "$b"
done
if [[ "$device" == cuda* ]]; then
    step half --minutes "$minutes" "${models[@]}" --separator-batch "$batch" --half
fi
if [ "${RSS:-0}" = 1 ]; then
    step rss --rss-minutes "${rss_minutes[@]}" --random-model "$crnn" --separator-batch "$batch"
fi
say "done in $(( $(date +%s) - began )) s; results in $results"
ls -l "$results" >&2
