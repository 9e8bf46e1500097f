#!/usr/bin/env bash
# Lay out a runnable tritonserver (CPU, python backend) in .cache/triton from nvidia-pytriton.
# See /work/shared/docs/ENVIRONMENT.md (Triton) and deploy/servers.py (TritonServer).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRITON="$CACHE_DIR/triton"
STAMP="$TRITON/.source"

step "triton: check the venv interpreter $VENV_PYTHON"
[ -x "$VENV_PYTHON" ] || fail "$VENV_PYTHON not found: run 'make setup' first"
PYVER="$("$VENV_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

step "triton: check nvidia-pytriton and numpy < 2 in the venv"
PYTRITON_INFO="$("$VENV_PYTHON" - <<'PY'
import importlib.metadata as md
import importlib.util
import pathlib

numpy_version = md.version("numpy")  # metadata only: importing numpy/pytriton is slow
if int(numpy_version.split(".")[0]) >= 2:
    raise SystemExit(f"numpy {numpy_version} installed: the python-backend stub needs numpy < 2")
spec = importlib.util.find_spec("pytriton")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("nvidia-pytriton is not installed")
pkg = pathlib.Path(list(spec.submodule_search_locations)[0]).resolve()
print(pkg, md.version("nvidia-pytriton"))
PY
)" || fail "nvidia-pytriton missing or numpy >= 2 in the venv (run 'make setup')"
PYTRITON_DIR="${PYTRITON_INFO% *}"
PYTRITON_VERSION="${PYTRITON_INFO##* }"
SRC="$PYTRITON_DIR/tritonserver"
LIBS_SRC="$(dirname "$PYTRITON_DIR")/nvidia_pytriton.libs"
STUB="$SRC/python_backend_stubs/$PYVER/triton_python_backend_stub"
WANT="nvidia-pytriton $PYTRITON_VERSION python $PYVER $SRC"

step "triton: check $TRITON"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$TRITON/bin/tritonserver" ]; then
  info "present: tritonserver from $WANT"
  exit 0
fi

step "triton: copy tritonserver, backends, caches, libraries and the python $PYVER stub"
[ -x "$SRC/bin/tritonserver" ] || fail "$SRC/bin/tritonserver not found"
[ -f "$STUB" ] || fail "no python backend stub for python $PYVER in $SRC/python_backend_stubs"
[ -d "$LIBS_SRC" ] || fail "bundled libraries $LIBS_SRC not found"
rm -rf "$TRITON.tmp"
mkdir -p "$TRITON.tmp"
cp -r "$SRC/bin" "$SRC/backends" "$SRC/caches" "$TRITON.tmp/"
# tritonserver's RPATH is ${ORIGIN}/../lib: the wheel's bundled shared libraries go there.
cp -r "$LIBS_SRC" "$TRITON.tmp/lib"
cp "$STUB" "$TRITON.tmp/backends/python/triton_python_backend_stub"
chmod +x "$TRITON.tmp/bin/tritonserver" "$TRITON.tmp/backends/python/triton_python_backend_stub"
rm -rf "$TRITON.tmp/backends/python/__pycache__" "$TRITON"
mv "$TRITON.tmp" "$TRITON"

step "triton: check the tritonserver binary loads (tritonserver --help)"
# --help exits 1 by design: check for its usage text instead of the status.
USAGE="$("$TRITON/bin/tritonserver" --help 2>&1 || true)"
[[ "$USAGE" == *--model-repository* ]] \
  || fail "$TRITON/bin/tritonserver does not run (missing shared libraries? try: ldd $TRITON/bin/tritonserver)"
echo "$WANT" >"$STAMP"
info "installed: $TRITON (from $WANT)"
