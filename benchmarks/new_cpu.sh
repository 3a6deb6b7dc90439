#!/usr/bin/env bash
# Every measurement issue 15 asks of a CPU, in one go (about 20 minutes on 2 cores), each figure
# written to runs/<cpu>-*.json beside the console output: run it on a machine not measured yet
# (`make bench-cpu`) and copy the tables into docs/performance.md under that CPU's name.
#   1. yelp-lora bench on the demo adapter: training and prediction against the usual ways, the
#      service, the matmul peaks and their instruction sets, and what `auto` chose and why
#   2. the training shape sweeps: micro-batches of 2, 8 and 16 and padding multiples of 16 and 32,
#      beside auto's choice, in the same rounds
#   3. where the time goes: benchmarks/profile_time.py (a training step, each prediction backend)
#   4. whether OpenVINO's int8 beats ONNX Runtime's here: benchmarks/openvino_int8.py (needs nncf)
#   5. which attention the int8 graph should use here: benchmarks/int8_attention.py
# Needs the demo adapter (make demo) and the [onnx,openvino] extras (make install); installs [bench] (nncf).
set -euo pipefail
BIN=${BIN:-.venv/bin}
RUN_DIR=${RUN_DIR:-runs/demo}
test -d "$RUN_DIR/adapter" || { echo "no adapter in $RUN_DIR: run make demo first (or set RUN_DIR)" >&2; exit 2; }
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
cpu=$(printf '%s' "$model" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
out=runs/${cpu:-cpu}
echo "CPU: $model; flags: $(grep -m1 -o -w -E 'amx_(tile|bf16|int8)|avx512_(bf16|vnni)|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
no_prediction=(--skip pipeline --skip merged-fp32 --skip merged-bf16 --skip onnx-fp32 --skip onnx-int8 --skip openvino-fp32 --skip openvino-bf16)
set -x
"$BIN/yelp-lora" bench --adapter "$RUN_DIR" --json "$out-bench.json"
"$BIN/yelp-lora" bench --samples 512 --no-service --skip usual --skip ours-fp32 "${no_prediction[@]}" \
    --micro-batch-size 2 --micro-batch-size 8 --micro-batch-size 16 --pad-multiple 16 --pad-multiple 32 \
    --json "$out-shapes.json"
"$BIN/python" benchmarks/profile_time.py --adapter "$RUN_DIR" --bf16 --json "$out-profile.json"
"$BIN/python" -c "import nncf" 2>/dev/null || "$BIN/pip" install -q -e '.[bench]'
"$BIN/python" benchmarks/openvino_int8.py --adapter "$RUN_DIR" --json "$out-openvino-int8.json"
"$BIN/python" benchmarks/int8_attention.py --adapter "$RUN_DIR" --json "$out-int8-attention.json"
