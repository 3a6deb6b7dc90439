#!/usr/bin/env bash
# Why configs/demo.yaml's learning rate differs from the reference: validation macro-F1
# (rows carved from train.csv, never test.csv) per epoch for several peak learning rates.
# Usage: bash benchmarks/demo_lr_sweep.sh [LR ...]   (each run ~4-6 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
lrs=("$@"); [ ${#lrs[@]} -gt 0 ] || lrs=(2e-4 1e-3 3e-3)
for lr in "${lrs[@]}"; do
  .venv/bin/yelp-lora train --config configs/demo.yaml --lr "$lr" --output-dir "runs/lr-sweep/$lr" --overwrite >/dev/null 2>&1
  .venv/bin/python - "$lr" <<'PY'
import json, sys
run = json.load(open(f"runs/lr-sweep/{sys.argv[1]}/run.json"))
scores = "  ".join(f"epoch {e['epoch']:.0f}: {e['macro_f1']:.4f}" for e in run["validation"])
print(f"lr {sys.argv[1]:>6}  validation macro-F1  {scores}  ({run['train_runtime']:.0f}s)")
PY
done
