#!/usr/bin/env bash
# Run tritonserver 2.51 (from nvidia-pytriton, laid out by deploy/scripts/install_triton.sh) with
# the python backend, the way the Helm chart's Triton pod does: all arguments are passed on
# (--model-repository=..., ports, ...). The python-backend stub needs the interpreter that has
# adqc + torch first on PATH and that interpreter's libpython on LD_LIBRARY_PATH
# (see /work/shared/docs/ENVIRONMENT.md); deploy/servers.py TritonServer does the same locally.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${TRITON_ROOT:-${ADQC_CACHE_DIR:-$here/../../.cache}/triton}"
python="${ADQC_PYTHON:-$(command -v python3)}"
if [ ! -x "$root/bin/tritonserver" ]; then
  echo "tritonserver.sh: $root/bin/tritonserver not found (run deploy/scripts/install_triton.sh)" >&2
  exit 2
fi
libdir="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export PATH="$(dirname "$python"):$PATH"
export LD_LIBRARY_PATH="$libdir:$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$root/bin/tritonserver" \
  --backend-directory="$root/backends" \
  --cache-directory="$root/caches" \
  "$@"
