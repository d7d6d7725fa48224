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

echo "== your model, as written: a Lightning captioner (2-layer nn.LSTM decoder) exported from its own code"
echo "   with an adapter file, then captioned without torch (checkpoints built by tests/export/user_models)"
REPOS=tests/export/user_models
python "$REPOS/build_checkpoints.py" "$OUT/user" lightning > /dev/null
jetcap export "$OUT/user/lightning/last.ckpt" --code-path "$REPOS/lightning_repo" --model lit_caption:CaptionNet \
  --adapter "$REPOS/lightning_repo/jetcap_adapter.py" --word-map "$OUT/user/lightning/vocab.json" --image-size 64 \
  --calibration-data "$OUT/user/calibration" --precision fp16 -o "$OUT/lightning" --force 2>&1 | grep -v "pre-flight:"
jetcap validate "$OUT/lightning" --checkpoint "$OUT/user/lightning/last.ckpt" --code-path "$REPOS/lightning_repo" \
  --model lit_caption:CaptionNet --adapter "$REPOS/lightning_repo/jetcap_adapter.py" | tail -n 2
jetcap caption "$OUT/lightning" "$OUT"/user/images/toy_0[0-3].png

echo "== jetcap check: will the bundles build on a Jetson Nano (TensorRT 8.2)? No TensorRT needed"
jetcap check "$OUT/captioner" --target nano | tail -n 14

echo "== jetcap build: TensorRT engines are built on the device (here it says what is missing)"
jetcap build "$OUT/captioner" --precision fp16 || echo "   (expected without TensorRT: exit $?)"

echo "== jetcap serve-engine: HTTP on loopback, one caption request, graceful stop"
python scripts/serve_demo.py "$OUT/captioner"
