#!/usr/bin/env bash
# Jaeger v2 (an OpenTelemetry Collector distribution: OTLP in, query API + UI out) built from the Go
# module proxy into .cache/bin/jaeger. Used by the tracing integration test and
# `adqc stack up --tracing`. The first build takes ~6 min on 2 cores; later runs only check.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JAEGER_VERSION="${ADQC_JAEGER_VERSION:-v1.76.0}"
MODULE="github.com/jaegertracing/jaeger"
JAEGER="$CACHE_DIR/bin/jaeger"
STAMP="$CACHE_DIR/bin/.jaeger-version"
SCRATCH="$CACHE_DIR/jaeger-build"

step "jaeger: check $JAEGER"
if [ -x "$JAEGER" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$JAEGER_VERSION" ]; then
  info "present: jaeger $JAEGER_VERSION"
  exit 0
fi

step "jaeger: check Go (>= 1.21; newer toolchains come from the module proxy)"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  step "jaeger: install Go (apt golang-go)"
  apt_install golang-go
fi
go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
[ -n "$go_minor" ] && [ "$go_minor" -ge 21 ] \
  || fail "Go $(go env GOVERSION) is too old: Go >= 1.21 is needed to fetch the toolchain $MODULE asks for"
info "present: $(go env GOVERSION)"
# `go get -tool` needs Go 1.24; Jaeger's go.mod may ask for newer: let Go fetch that toolchain.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
[ "$go_minor" -ge 24 ] || export GOTOOLCHAIN="go1.24.0+auto"

step "jaeger: go get -tool $MODULE/cmd/jaeger@$JAEGER_VERSION (scratch module $SCRATCH)"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH" "$(dirname "$JAEGER")"
cd "$SCRATCH"
go mod init adqc.local/jaeger-build >/dev/null 2>&1 || fail "go mod init failed in $SCRATCH"
go get -tool "$MODULE/cmd/jaeger@$JAEGER_VERSION" \
  || fail "go get $MODULE/cmd/jaeger@$JAEGER_VERSION failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"

step "jaeger: go build (slow: ~6 min on 2 cores, once per machine)"
go build -trimpath -ldflags "-s -w" -o "$JAEGER.tmp" "$MODULE/cmd/jaeger" \
  || fail "go build $MODULE/cmd/jaeger failed"
mv "$JAEGER.tmp" "$JAEGER"
echo "$JAEGER_VERSION" >"$STAMP"
cd "$REPO_ROOT"
rm -rf "$SCRATCH"

step "jaeger: check the binary runs"
"$JAEGER" --help >/dev/null 2>&1 || fail "$JAEGER --help failed"
info "installed: $JAEGER ($(du -h "$JAEGER" | cut -f1), $JAEGER_VERSION)"
