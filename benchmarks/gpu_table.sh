#!/usr/bin/env bash
# The CUDA table of docs/BENCHMARKS.md: the realistic captioner benchmarked on a machine with a CUDA GPU,
# PyTorch CUDA eager against ONNX Runtime CUDA (where onnxruntime-gpu is installed), and the same machine's
# CPU run beside it, from one prepared command (a lent GPU machine gives a session 15 minutes in all).
#
#   benchmarks/gpu_table.sh OUTDIR [WORKDIR] [THREADS]
#
# Runs from the repository root without installing jetcap (PYTHONPATH); needs torch with CUDA, torchvision,
# onnx, onnxruntime (or onnxruntime-gpu), click and Pillow.  Builds the benchmark model in WORKDIR
# (default /tmp/jetcap-gpu) unless it is there, exports it, then writes to OUTDIR: gpu.txt (nvidia-smi),
# versions.txt, cuda.json / cuda.txt (--device cuda) and cpu.json / cpu.txt (--device cpu, THREADS
# threads, default 2 as in the CPU tables).  Exit status: the first step that failed.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_table.sh OUTDIR [WORKDIR] [THREADS]}
work=${2:-/tmp/jetcap-gpu}
threads=${3:-2}
py=${PYTHON:-python3}
mkdir -p "$out" "$work"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true
"$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'| onnxruntime', o.__version__, o.get_available_providers())" | tee "$out/versions.txt"
if [ ! -f "$work/realistic_captioner.pt" ]; then
    started=$(date +%s)
    "$py" benchmarks/realistic_captioner.py "$work" > "$work/build.log" 2>&1 || { tail -5 "$work/build.log"; exit 1; }
    echo "built the benchmark model in $(( $(date +%s) - started )) s"
fi
"$py" -m jetcap export "$work/realistic_captioner.pt" -o "$work/bundle" --force 2>&1 | tail -2
common=(--checkpoint "$work/realistic_captioner.pt" --data "$work/images" --repeat 30 --cold-runs 1)
"$py" -m jetcap bench "$work/bundle" "${common[@]}" --device cuda --json > "$out/cuda.json"
"$py" -c "import json, sys; from jetcap.bench.report import format_report
print(format_report(json.load(open(sys.argv[1]))))" "$out/cuda.json" | tee "$out/cuda.txt"
"$py" -m jetcap bench "$work/bundle" "${common[@]}" --device cpu --threads "$threads" --json > "$out/cpu.json"
"$py" -c "import json, sys; from jetcap.bench.report import format_report
print(format_report(json.load(open(sys.argv[1]))))" "$out/cpu.json" | tee "$out/cpu.txt"
