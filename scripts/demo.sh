#!/usr/bin/env bash
# The whole chain on the built-in sample models: export -> validate -> caption / predict.
# Run through `make demo` (which installs what is missing first).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo-out}
mkdir -p "$OUT"
SAMPLES=$(python -c 'from jetcap import samples; print(samples.sample_dir())')

echo "== PyTorch reference on the sample checkpoints"
python scripts/pytorch_reference.py

echo "== jetcap export (fp32 + fp16 + int8), each variant checked against PyTorch"
jetcap export "$SAMPLES/captioner.pt" -o "$OUT/captioner" --precision fp16 --precision int8 --force
jetcap export "$SAMPLES/classifier.pt" -o "$OUT/classifier" --precision fp16 --precision int8 --force

if jetcap validate --help >/dev/null 2>&1; then
  echo "== jetcap validate (the CI gate)"
  jetcap validate "$OUT/captioner" --precision all
  jetcap validate "$OUT/classifier" --precision all
fi

if jetcap caption --help >/dev/null 2>&1; then
  echo "== torch-free runtime: jetcap caption / predict (ONNX Runtime here; TensorRT on a Jetson)"
  jetcap caption "$OUT/captioner" "$SAMPLES"/images/*.png
  jetcap predict "$OUT/classifier" "$SAMPLES"/sequences/*.npy
fi
