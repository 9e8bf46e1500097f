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

# Go: the one on PATH (or /usr/local/go) when it is >= 1.21 (it fetches the newer toolchain
# Jaeger's go.mod asks for through the module proxy), else Go itself from the module proxy
# (the golang.org/toolchain module: what GOTOOLCHAIN downloads). Debian 12's golang-go is 1.19.
GO_VERSION="${ADQC_GO_VERSION:-1.25.4}"
go_minor() {
  command -v go >/dev/null 2>&1 || return 1
  go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'
}

step "jaeger: check Go (>= 1.21)"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
minor="$(go_minor || true)"
if [ -z "$minor" ] || [ "$minor" -lt 21 ]; then
  case "$(uname -m)" in
    x86_64) go_arch=amd64 ;;
    aarch64 | arm64) go_arch=arm64 ;;
    *) fail "no Go >= 1.21 and no Go toolchain download for $(uname -m): install Go >= 1.24" ;;
  esac
  proxy="${GOPROXY:-https://proxy.golang.org}"
  proxy="${proxy%%,*}"
  case "$proxy" in http*) ;; *) proxy="https://proxy.golang.org" ;; esac
  toolchain="v0.0.1-go$GO_VERSION.linux-$go_arch"
  GO_DIR="$CACHE_DIR/go-toolchain"
  GO_BIN="$GO_DIR/golang.org/toolchain@$toolchain/bin"
  if [ ! -x "$GO_BIN/go" ]; then
    step "jaeger: fetch Go $GO_VERSION from the Go module proxy ($proxy golang.org/toolchain@$toolchain)"
    command -v unzip >/dev/null 2>&1 || apt_install unzip
    rm -rf "$GO_DIR"
    mkdir -p "$GO_DIR"
    curl -fsSL -o "$GO_DIR/toolchain.zip" "$proxy/golang.org/toolchain/@v/$toolchain.zip" \
      || fail "download of $proxy/golang.org/toolchain/@v/$toolchain.zip failed"
    unzip -q -o "$GO_DIR/toolchain.zip" -d "$GO_DIR" || fail "unzip of the Go toolchain failed"
    rm -f "$GO_DIR/toolchain.zip"
    chmod +x "$GO_BIN"/* "$GO_DIR/golang.org/toolchain@$toolchain/pkg/tool/"*/* 2>/dev/null || true
  fi
  export PATH="$GO_BIN:$PATH"
  minor="$(go_minor || true)"
  [ -n "$minor" ] && [ "$minor" -ge 21 ] || fail "the fetched Go toolchain does not run ($GO_BIN/go)"
fi
info "present: $(go env GOVERSION) ($(command -v go))"
# `go get -tool` needs Go 1.24; Jaeger's go.mod may ask for newer: let Go fetch that toolchain.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
[ "$minor" -ge 24 ] || export GOTOOLCHAIN="go1.24.0+auto"

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
