#!/usr/bin/env bash
# Reproduce docs/BENCHMARKS.md: export the shipped sample models (fp32, fp16, int8) into an ignored
# directory and run `jetcap bench` on both bundles against their PyTorch checkpoints.
#
#   benchmarks/run.sh [OUT_DIR]        # default: demo-out/bench (ignored by git)
#
# Environment: PYTHON (default .venv/bin/python, else python3), REPEAT (50), WARMUP (5), ROUNDS (3),
# COLD_RUNS (1 per round), THREADS (default: every usable CPU),
# PRECISIONS (variants exported besides fp32, default "fp16 int8").
# Results: OUT_DIR/{captioner,classifier}.{txt,json,png}.
# The machine should be otherwise idle: the script prints the load average before and after.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-demo-out/bench}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
REPEAT="${REPEAT:-50}"
WARMUP="${WARMUP:-5}"
ROUNDS="${ROUNDS:-3}"
COLD_RUNS="${COLD_RUNS:-1}"
PRECISION_ARGS=()
for precision in ${PRECISIONS-fp16 int8}; do PRECISION_ARGS+=(--precision "$precision"); done
THREAD_ARGS=()
if [ -n "${THREADS:-}" ]; then THREAD_ARGS=(--threads "$THREADS"); fi

mkdir -p "$OUT"
CKPT_DIR="$("$PYTHON" -c 'from jetcap import samples; print(samples.sample_dir())')"

echo "== machine" >&2
echo "nproc: $(nproc); $(grep -m1 'model name' /proc/cpuinfo || true); $(grep MemTotal /proc/meminfo)" >&2
echo "load before: $(cat /proc/loadavg)" >&2

for model in captioner classifier; do
    bundle="$OUT/$model"
    echo "== export $model" >&2
    "$PYTHON" -m jetcap export "$CKPT_DIR/$model.pt" -o "$bundle" ${PRECISION_ARGS[@]+"${PRECISION_ARGS[@]}"} --force >&2
    echo "== bench $model" >&2
    "$PYTHON" -m jetcap bench "$bundle" --checkpoint "$CKPT_DIR/$model.pt" --repeat "$REPEAT" --warmup "$WARMUP" \
        --rounds "$ROUNDS" --cold-runs "$COLD_RUNS" ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --plot "$OUT/$model.png" --json > "$OUT/$model.json"
    "$PYTHON" -c 'import json, sys; from jetcap.bench.report import format_report; print(format_report(json.load(open(sys.argv[1]))))' \
        "$OUT/$model.json" | tee "$OUT/$model.txt"
    echo
done
echo "load after: $(cat /proc/loadavg)" >&2
echo "results in $OUT/" >&2
