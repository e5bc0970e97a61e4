#!/usr/bin/env bash
# `make ghz`: runs the three ghz configs of bench/ghz/ against a running mesh and prints ghz's
# summaries. Start the mesh first, with the edge's per-client rate limit raised:
#
#   SHAREMESH_EDGE_RATE=1000000 SHAREMESH_EDGE_BURST=1000000 make run
#
# Settings (environment): GHZ_HOST (the edge, default 127.0.0.1:50050), GHZ (the ghz binary:
# ../shared/tools/ghz/ghz if present, else ghz on PATH), SHAREMESH_BIN (mints tokens with the
# development secret; against a Helm install set SHAREMESH_TOKEN and HOST_TOKEN instead),
# GHZ_ARGS (extra ghz flags, e.g. "-n 2000" or "-z 5s").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${GHZ_HOST:-127.0.0.1:50050}"
ghz="${GHZ:-}"
if [ -z "$ghz" ]; then
  if [ -x "$root/../shared/tools/ghz/ghz" ]; then ghz="$root/../shared/tools/ghz/ghz"; else ghz="$(command -v ghz || true)"; fi
fi
[ -n "$ghz" ] || { echo "ghz: no ghz binary (set GHZ=/path/to/ghz)" >&2; exit 1; }
bin="${SHAREMESH_BIN:-$root/target/debug/sharemesh}"
token="${SHAREMESH_TOKEN:-$("$bin" token --sub ghz --role customer)}"
host_token="${HOST_TOKEN:-$("$bin" token --sub ghz-host --role host)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A fresh car per run: every PlaceReservation window of it is free.
new_car() {
  curl -sf -H "authorization: Bearer $host_token" -H 'content-type: application/json' \
    -d '{"title":"ghz car","price":{"amountMinor":"10000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}' \
    "http://$host/v1/listings" | python3 -c 'import json,sys; print(json.load(sys.stdin)["listing"]["listingId"])'
}

# Fills ${SHAREMESH_TOKEN} and ${LISTING_ID}, as envsubst would with those two names.
fill() {
  LISTING_ID="$2" SHAREMESH_TOKEN="$token" python3 - "$root/bench/ghz/$1.json" "$work/$1.json" <<'PY'
import os, sys
text = open(sys.argv[1]).read()
for name in ("SHAREMESH_TOKEN", "LISTING_ID"):
    text = text.replace("${" + name + "}", os.environ[name])
open(sys.argv[2], "w").write(text)
PY
}

cd "$root"   # place-reservation.json names proto files relative to the repository root
for config in get-listing list-listing-views place-reservation; do
  fill "$config" "$(new_car)"
  echo "== ghz --config bench/ghz/$config.json $host ${GHZ_ARGS:-}"
  # shellcheck disable=SC2086
  "$ghz" --config "$work/$config.json" ${GHZ_ARGS:-} "$host"
done
