#!/usr/bin/env bash
# What PostgreSQL runs under PlaceReservation, per database and per statement.
#
#   scripts/pg-statements.sh OUT_PREFIX [ADMIN_URL]
#
# Runs the bench (target/release/sharemesh-bench against $SHAREMESH_BIN, else
# target/release/sharemesh; short windows, row 5 for 12 s), resets pg_stat_statements 3 s into
# row 5 of the PostgreSQL pass, reads it 8 s later and prints the statement time per service
# (each has a database of its own) and the costliest statements. Writes OUT_PREFIX.out (the bench's
# tables), OUT_PREFIX.err (its progress) and OUT_PREFIX.stmts (database|calls|ms|statement).
# The server must load pg_stat_statements:
#   ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'; then restart it.
# See bench/README.md, "Session 18".
set -euo pipefail
out=${1:?usage: scripts/pg-statements.sh OUT_PREFIX [ADMIN_URL]}
pg=${2:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
cd "$(dirname "$0")/.."
psql "$pg" -Atqc "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
if ! psql "$pg" -Atqc "SELECT 1 FROM pg_stat_statements LIMIT 1" >/dev/null 2>&1; then
  echo "pg-statements: the server does not load pg_stat_statements (see the top of $0)" >&2
  exit 1
fi
bench=target/release/sharemesh-bench
[ -x "$bench" ] || { echo "pg-statements: build it first: make bench (or cargo build --release -p sharemesh-bench)" >&2; exit 1; }
"$bench" --sweep "" --duration 2s --warmup 1s --reserve-duration 12s --lag-duration 4s \
  --postgres "$pg" --json "$out.json" >"$out.out" 2>"$out.err" &
run=$!
trap 'kill $run 2>/dev/null || true' EXIT
# The second "5 PlaceReservation" progress line is the PostgreSQL pass's.
until [ "$(grep -c '5 PlaceReservation end to end' "$out.err" || true)" -ge 2 ]; do
  kill -0 $run 2>/dev/null || { echo "pg-statements: the bench ended early: $out.err" >&2; exit 1; }
  sleep 0.5
done
sleep 3
psql "$pg" -Atqc "SELECT pg_stat_statements_reset()" >/dev/null
sleep 8
psql "$pg" -Atc "SELECT d.datname, s.calls, round(s.total_exec_time::numeric, 1),
    left(regexp_replace(s.query, '\s+', ' ', 'g'), 100)
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
  WHERE d.datname LIKE 'sharemesh_bench%' ORDER BY s.total_exec_time DESC" >"$out.stmts"
wait $run
trap - EXIT
# The bench names each database sharemesh_bench_<context>_<uuid>.
service='{ sub(/^sharemesh_bench_/, "", $1); sub(/_[0-9a-f]+$/, "", $1) }'
echo "statement time per service over 8 s of row 5 on PostgreSQL (every statement: $out.stmts)"
awk -F'|' "$service"' {t[$1] += $3; all += $3} END {for (s in t) printf "  %-12s %8.0f ms  %4.1f%%\n", s, t[s], 100 * t[s] / all}' "$out.stmts" | sort -k2 -rn
echo "costliest statements"
awk -F'|' "$service"' {k = sprintf("%-11s %s", $1, $4); c[k] += $2; t[k] += $3}
  END {for (x in c) printf "  %8.1f ms %6d calls %6.3f ms/call  %s\n", t[x], c[x], t[x] / c[x], x}' "$out.stmts" | sort -rn | head -12
grep -E "^== |^5 PlaceReservation e2e" "$out.out"
