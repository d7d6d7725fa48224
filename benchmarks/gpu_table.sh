#!/usr/bin/env bash
# The CUDA table of docs/BENCHMARKS.md: the realistic captioner benchmarked on a machine with a CUDA GPU,
# PyTorch CUDA eager against ONNX Runtime CUDA (where onnxruntime-gpu is installed), and the same machine's
# CPU run beside it, from one prepared command (a lent GPU machine gives a session 15 minutes in all).
#
#   benchmarks/gpu_table.sh OUTDIR [WORKDIR] [THREADS]
#
# Runs from the repository root without installing jetcap (PYTHONPATH); needs torch with CUDA, torchvision,
# onnx, onnxruntime (or onnxruntime-gpu), click and Pillow (onnxslim when there: else the export does not
# simplify).  Builds the benchmark model in WORKDIR (default /tmp/jetcap-gpu) unless it is there, exports
# FP32 and FP16, then writes to OUTDIR: gpu.txt (nvidia-smi), versions.txt, cuda.json / cuda.txt
# (--device cuda: PyTorch CUDA, ONNX Runtime CUDA FP32 and FP16 where onnxruntime-gpu is) and cpu.json /
# cpu.txt (--device cpu, FP32, THREADS threads, default 2 as in the CPU tables).  Both benchmarks run even
# when the first fails; the exit status is the first failure's.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_table.sh OUTDIR [WORKDIR] [THREADS]}
work=${2:-/tmp/jetcap-gpu}
threads=${3:-2}
py=${PYTHON:-python3}
mkdir -p "$out" "$work" || exit 1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
"$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'| onnxruntime', o.__version__, o.get_available_providers())" | tee "$out/versions.txt" || exit 1
if [ ! -f "$work/realistic_captioner.pt" ]; then
    started=$(date +%s)
    "$py" benchmarks/realistic_captioner.py "$work" > "$work/build.log" 2>&1 || { tail -5 "$work/build.log"; exit 1; }
    echo "built the benchmark model in $(( $(date +%s) - started )) s"
fi
simplify=()
"$py" -c "import onnxslim" 2>/dev/null || simplify=(--no-simplify)
"$py" -m jetcap export "$work/realistic_captioner.pt" -o "$work/bundle" --precision fp32 --precision fp16 \
    ${simplify[@]+"${simplify[@]}"} --force 2>&1 | tail -3
[ -f "$work/bundle/manifest.json" ] || exit 1
status=0
bench() {  # bench NAME OPTIONS...: NAME.json (complete or absent) and NAME.txt
    local name=$1; shift
    "$py" -m jetcap bench "$work/bundle" --checkpoint "$work/realistic_captioner.pt" --data "$work/images" \
        --repeat 30 --cold-runs 1 --json "$@" > "$out/$name.json.tmp"
    local rc=$?
    if [ -s "$out/$name.json.tmp" ]; then
        mv "$out/$name.json.tmp" "$out/$name.json"
        "$py" -c "import json, sys; from jetcap.bench.report import format_report
print(format_report(json.load(open(sys.argv[1]))))" "$out/$name.json" | tee "$out/$name.txt"
    else
        rm -f "$out/$name.json.tmp"
    fi
    [ "$status" -ne 0 ] || status=$rc
}
bench cuda --device cuda
bench cpu --device cpu --threads "$threads" --precision fp32
exit "$status"
