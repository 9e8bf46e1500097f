#!/usr/bin/env bash
# Install everything the integration tests, `adqc bench pipeline` and `adqc stack` need: Redis,
# Kafka (jars), Triton (from nvidia-pytriton), Helm and Jaeger (built from the Go module proxy,
# ~6 min once per machine). Idempotent: a second run only checks (seconds).
# Usage: bash deploy/scripts/install_all.sh   (from anywhere; `make servers` runs it)
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

start=$SECONDS
for component in redis kafka triton helm jaeger; do
  t0=$SECONDS
  if ! bash "$HERE/install_$component.sh"; then
    echo "[install] FAILED: deploy/scripts/install_$component.sh (see the message above)" >&2
    exit 1
  fi
  echo "[install] $component ok ($((SECONDS - t0)) s)"
done
echo "[install] all components ready ($((SECONDS - start)) s)"
