#!/usr/bin/env bash
# Install Debian's redis-server (tests start their own instances on free ports; see deploy/servers.py;
# Debian builds it with TLS, used by the rediss:// tests) and openssl (test certificates).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# openssl makes the throw-away TLS certificates of the TLS tests (deploy/tls.py).
step "redis: check openssl (test certificates)"
if command -v openssl >/dev/null 2>&1; then
  info "present: $(openssl version | cut -d' ' -f1-2)"
else
  apt_install openssl
fi

step "redis: check redis-server"
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  info "present: $(redis-server --version | cut -d' ' -f1-3)"
  exit 0
fi

step "redis: install redis-server (apt)"
apt_install redis-server
command -v redis-server >/dev/null 2>&1 || fail "redis-server still missing after apt-get install"

# The Debian package may start a system service on 6379. Our servers use free ports, so a running
# service would not collide, but it wastes memory: stop and disable it where an init system runs.
step "redis: stop the system redis service (tests start their own)"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
  as_root service redis-server stop >/dev/null 2>&1 || true
fi
info "installed: $(redis-server --version | cut -d' ' -f1-3)"
