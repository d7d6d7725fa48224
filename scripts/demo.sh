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

echo "== jetcap validate (the CI gate): every precision, tensor level and task level"
jetcap validate "$OUT/captioner" --precision all | tail -n 12
jetcap validate "$OUT/classifier" --precision all | tail -n 8

echo "== torch-free runtime: jetcap caption / predict (ONNX Runtime here; TensorRT on a Jetson)"
jetcap caption "$OUT/captioner" "$SAMPLES"/images/*.png
jetcap caption "$OUT/captioner" "$SAMPLES"/images/sample_00.png --precision int8 --beam 3 \
  --attention-map "$OUT/attention_sample_00.png"
echo "   attention map of each word: $OUT/attention_sample_00.png"
jetcap predict "$OUT/classifier" "$SAMPLES"/sequences/*.npy

echo "== jetcap build: TensorRT engines are built on the device (here it says what is missing)"
jetcap build "$OUT/captioner" --precision fp16 || echo "   (expected without TensorRT: exit $?)"

echo "== jetcap serve-engine: HTTP on loopback, one caption request, graceful stop"
python scripts/serve_demo.py "$OUT/captioner"
