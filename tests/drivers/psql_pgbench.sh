#!/usr/bin/env bash
# tests/drivers/psql_pgbench.sh — psql and pgbench through pgkeel, briefly: a multi-statement
# string, \copy in and out, and pgbench -M simple, extended and prepared on a script of its own
# (no pgbench -i), two clients, every transaction checked by pgbench.
#
#   PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
#     tests/drivers/psql_pgbench.sh
#
# Prints one line per case, `PASS name` or `FAIL name: reason`, then a summary; exits 1 if any
# case failed.
set -uo pipefail
export PGCONNECT_TIMEOUT=10
table="drivers_psql_$RANDOM$RANDOM"
work=$(mktemp -d "${TMPDIR:-/tmp}/drivers-psql.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $(tr '\n' ' ' <<<"$2" | cut -c1-600)"; failed=$((failed + 1)); }

out=$(psql -XAtq -v ON_ERROR_STOP=1 -c "SELECT 1; SELECT 'two'" 2>&1)
[[ "$out" == $'1\ntwo' ]] && pass psql_multi_statement || fail psql_multi_statement "$out"

seq 1 5000 | awk '{ print $1 "\tline " $1 }' >"$work/in.tsv"
out=$(psql -XAtq -v ON_ERROR_STOP=1 2>&1 <<SQL
CREATE TABLE $table (id int, v text);
\\copy $table FROM '$work/in.tsv'
\\copy (SELECT id, v FROM $table ORDER BY id) TO '$work/out.tsv'
DROP TABLE $table;
SQL
)
if [[ -n "$out" ]]; then
  fail psql_copy_in_out "$out"
elif ! cmp -s "$work/in.tsv" "$work/out.tsv"; then
  fail psql_copy_in_out "what \\copy wrote out differs from what went in ($(wc -l <"$work/out.tsv") lines)"
else
  pass psql_copy_in_out
fi

cat >"$work/bench.sql" <<'SQL'
\set a random(1, 1000000)
BEGIN;
SELECT :a::int + 1;
SELECT repeat('x', :a % 100);
END;
SELECT :a::bigint * 2;
SQL
for mode in simple extended prepared; do
  out=$(pgbench -n -c 2 -j 1 -t 100 -M "$mode" -f "$work/bench.sql" 2>&1)
  rc=$?
  if ((rc != 0)); then
    fail "pgbench_$mode" "exit $rc: $(grep -v '^pgbench (' <<<"$out" | tail -5)"
  elif ! grep -q 'number of transactions actually processed: 200/200' <<<"$out" ||
    ! grep -q 'number of failed transactions: 0 ' <<<"$out"; then
    fail "pgbench_$mode" "$(tail -12 <<<"$out")"
  else
    pass "pgbench_$mode"
  fi
done

echo "summary: psql/pgbench: $passed passed, $failed failed"
((failed == 0))
