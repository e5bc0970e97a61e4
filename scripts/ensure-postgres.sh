#!/usr/bin/env bash
# Makes a PostgreSQL server answer on 127.0.0.1:5432 for the tests (installing and starting
# Debian's package if needed) and prints an admin URL for SHAREMESH_TEST_POSTGRES.
# Each test creates and drops its own database, so runs never collide.
set -euo pipefail
url="${SHAREMESH_TEST_POSTGRES:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }

if ! ready; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "ensure-postgres: installing postgresql" >&2
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "ensure-postgres: starting PostgreSQL $version" >&2
  $sudo_cmd pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 50); do ready && break; sleep 0.2; done
  ready || { echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
  # A fresh Debian cluster asks TCP clients for a password: give the admin user the one in $url.
  $sudo_cmd runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >&2 || true
fi
echo "$url"
