#!/usr/bin/env bash
# GPU benchmark, short and self-contained: `make bench-gpu` (or the device tool) on a CUDA box.
# 1. the stage benchmark on cuda (fp16 search in place of bf16), JSON in $OUT_DIR;
# 2. a KIND_GPU fp16 Triton repository rendered (config checked, not served: the bundled
#    tritonserver here is CPU-only), when the tritonclient package is present.
# Each step has its own timeout so one slow step cannot eat the device budget.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="${OUT_DIR:-${OUT:-docs/perf}}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout "${STAGES_TIMEOUT:-240}" "$PY" -c "from adqc.cli import main; main()" bench stages \
  --device cuda --batches 1,8,32,64 --repeats 10 --variants \
  --json "$OUT_DIR/stages-cuda.json" --profile "$OUT_DIR/profile-cuda.txt"
timeout 120 "$PY" -c "
from pathlib import Path
from deploy.triton_repo import build_model_repository, read_config
out = Path('$OUT_DIR') / 'triton-gpu-repo'
build_model_repository(out, kind='gpu', precision='fp16', instances=2)
print(read_config(out / 'adqc_features' / 'config.pbtxt'))
" > "$OUT_DIR/triton-gpu-config.txt"
echo "bench-gpu: wrote $OUT_DIR"
