#!/usr/bin/env bash
# The GPU issue's measurements on a GPU machine without network, in one run of a few minutes.
#
#   benchmarks/gpu_suite.sh [RESULTS_DIR]     (default: bench-results/<date-time>/ in the repo)
#   benchmarks/gpu_suite.sh --have            print what PYTHON has installed (pip freeze), for
#                                             prepare_wheels.sh's HAVE= (only the rest travels)
#
# Before: on a machine with network, benchmarks/prepare_wheels.sh (with HAVE=<the --have list>
# and TARGET_PYTHON=<the GPU machine's Python>: only the wheels it lacks), then the repository
# with wheels/ copied here.
#
# It makes a venv with --system-site-packages (so the machine's own torch, with its CUDA, is
# used), installs highlightsense[test] into it from the wheels only (pip --no-index), then runs,
# with full-size random-weight models through the real loaders (each bench figure measured in a
# fresh process):
#   1. separation alone, 3 minutes, --separator-batch each of SEP_BATCHES, fp32 and (CUDA)
#      --half: x realtime and peak GPU memory;
#   2. the CRNN alone: windows per second at each of CRNN_BATCHES;
#   3. (CUDA) fidelity: the engine on MINUTES of input with fp32 and with --half separation (the
#      same random weights): max |dp| of the window scores and whether the selection is the same;
#   4. end to end on a local LONG_MINUTES file made here (benchmarks/long_input.py: a synthetic
#      10-minute VOD repeated by stream copy; a 2-hour file does not travel), the best batch of
#      step 1, --half on CUDA: x realtime, the first score, peak GPU memory;
#   5. (SEED_WAY=1) the engine against the notebook's way on MINUTES;
#   6. (RSS=1) peak RSS of the engine on 10 and 60 minutes with a small Demucs.
# Each prints its table (also RESULTS_DIR/NAME.txt) and writes RESULTS_DIR/NAME.json; at the end
# benchmarks/gpu_report.py prints every table against the issue's targets (report.txt).
#
# Environment:
#   WHEELS        the wheels folder (default wheels/ at the repository root)
#   PYTHON        the interpreter with the machine's torch (default python3)
#   VENV          the venv to make (default $TMPDIR/hs-gpu-venv); if it exists already, the
#                 project is installed into it as it is (a venv that has torch, for a dry run)
#   SKIP_INSTALL  1: run with PYTHON as it is, highlightsense already installed
#   DEVICE        default cuda;  MINUTES  default 10;  LONG_MINUTES  default 120
#   SEP_BATCHES   default "1 8 32 64";  CRNN_BATCHES  default "16 64 256 512"
#   INPUT_DIR     where the long input is made (default $TMPDIR/hs-gpu-input; kept for a rerun)
#   QUICK         1: a smoke run in a few minutes on any machine (short inputs, small CRNN
#                 and tiny Demucs where the step allows)
#   SEED_WAY      1: add step 5;  RSS  1: add step 6
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-$repo/bench-results/$(date +%Y%m%d-%H%M%S)}"
wheels="${WHEELS:-$repo/wheels}"
py="${PYTHON:-python3}"
venv="${VENV:-${TMPDIR:-/tmp}/hs-gpu-venv}"
device="${DEVICE:-cuda}"
minutes="${MINUTES:-10}"
long_minutes="${LONG_MINUTES:-120}"
piece_minutes=10
read -r -a sep_batches <<< "${SEP_BATCHES:-1 8 32 64}"
read -r -a crnn_batches <<< "${CRNN_BATCHES:-16 64 256 512}"
crnn_windows=1024
crnn=full
separator=full
stage_minutes=3
rss_minutes=(10 60)
if [ "${QUICK:-0}" = 1 ]; then
    minutes=0.5; long_minutes=1; piece_minutes=0.5; crnn=small; separator=tiny
    stage_minutes=0.5; rss_minutes=(0.5 1); crnn_windows=8
    read -r -a sep_batches <<< "${SEP_BATCHES:-1 4}"
    read -r -a crnn_batches <<< "${CRNN_BATCHES:-4}"
fi

if [ "${1:-}" = --have ]; then  # what this machine has, so that only the rest travels
    exec "$py" -m pip list --format=freeze --disable-pip-version-check
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

cuda=0
[[ "$device" == cuda* ]] && cuda=1
precisions=(fp32)
[ "$cuda" = 1 ] && precisions+=(half)  # float16 separation runs on CUDA only

for b in "${sep_batches[@]}"; do  # 1. separation alone
    for prec in "${precisions[@]}"; do
        half=(); [ "$prec" = half ] && half=(--half)
        step "sep_b${b}_$prec" --stage separate --minutes "$stage_minutes" "${models[@]}" \
            --separator-batch "$b" "${half[@]}"
    done
done
best=$("$run_py" -c '
import json, pathlib, re, sys
runs = []
for p in pathlib.Path(sys.argv[1]).glob("sep_b*_*.json"):
    m = re.fullmatch(r"sep_b(\d+)_(fp32|half)\.json", p.name)
    runs.append((json.loads(p.read_text())["engine"]["x_realtime"], int(m[1])))
print(max(runs)[1])' "$results")
say "best separator batch: $best"

say "== crnn: the CRNN alone at batch ${crnn_batches[*]} =="  # 2. the CRNN alone
"$run_py" -m highlightsense.benchmarks.crnn_throughput --device "$device" \
    --batch-size "${crnn_batches[@]}" --windows "$crnn_windows" --rounds 2 --size "$crnn" \
    --json-out "$results/crnn.json" | tee "$results/crnn.txt"

if [ "$cuda" = 1 ]; then  # 3. fidelity: the same input and weights, fp32 and --half
    step fid_fp32 --minutes "$minutes" "${models[@]}" --separator-batch "$best"
    step fid_half --minutes "$minutes" "${models[@]}" --separator-batch "$best" --half
fi

long="${INPUT_DIR:-${TMPDIR:-/tmp}/hs-gpu-input}/long_${long_minutes}min.m4a"  # 4. end to end
mkdir -p "$(dirname "$long")"
"$run_py" -m highlightsense.benchmarks.long_input --minutes "$long_minutes" \
    --piece-minutes "$piece_minutes" --out "$long"
half=(); [ "$cuda" = 1 ] && half=(--half)
step e2e --input "$long" "${models[@]}" --separator-batch "$best" "${half[@]}"

if [ "${SEED_WAY:-0}" = 1 ]; then  # 5. against the notebook's way
    step compare --compare-seed --minutes "$minutes" "${models[@]}" --separator-batch "$best"
fi
if [ "${RSS:-0}" = 1 ]; then  # 6. flat memory
    step rss --rss-minutes "${rss_minutes[@]}" --random-model "$crnn" --separator-batch "$best"
fi
"$run_py" -m highlightsense.benchmarks.gpu_report "$results"
say "done in $(( $(date +%s) - began )) s; results in $results"
ls -l "$results" >&2
