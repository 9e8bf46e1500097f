# Shared helpers for deploy/scripts/install_*.sh (sourced, not executed).
# Every install step prints what it does and names itself when it fails.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="${ADQC_CACHE_DIR:-$REPO_ROOT/.cache}"
VENV_PYTHON="${ADQC_PYTHON:-$REPO_ROOT/.venv/bin/python}"
CURRENT_STEP="(start)"

step() {
  CURRENT_STEP="$1"
  printf '[install] %s\n' "$1"
}

info() {
  printf '[install]   %s\n' "$1"
}

fail() {
  printf '[install] FAILED in step "%s": %s\n' "$CURRENT_STEP" "$1" >&2
  exit 1
}

on_error() {
  local rc=$?
  printf '[install] FAILED in step "%s" (command exited with %s at %s line %s)\n' \
    "$CURRENT_STEP" "$rc" "${BASH_SOURCE[1]##*/}" "${BASH_LINENO[0]}" >&2
  exit "$rc"
}
trap on_error ERR

# Run a command as root (directly, or through sudo when not root).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    fail "needs root to run: $* (run as root, or install it yourself)"
  fi
}

# apt-get install the given packages; runs `apt-get update` only when a package is unknown.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install $* by hand (Debian/Ubuntu expected)"
  local pkg need_update=0
  for pkg in "$@"; do
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then need_update=1; fi
  done
  if [ "$need_update" -eq 1 ]; then
    info "apt-get update"
    as_root apt-get update -qq || fail "apt-get update failed"
  fi
  info "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null || fail "apt-get install $* failed"
}

# sha256 of a file (first field only).
file_sha() {
  sha256sum "$1" | cut -d' ' -f1
}
