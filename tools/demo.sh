#!/usr/bin/env bash
# tools/demo.sh — the README's demo command: installs what is missing, builds pgkeel, starts a
# local primary + synchronous streaming standby on loopback with pgkeel in front, drives a short
# pgbench through it, then kills the primary (kill -9) under a ledger load and shows pgkeel
# promote the standby: write downtime, client errors, and that no acknowledged commit was lost.
# Everything stays up until `tools/demo.sh stop`.
#
#   tools/demo.sh          install, build, start, show
#   tools/demo.sh stop     stop pgkeel and the cluster, remove the demo folder
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
demo=${PGKEEL_DEMO_DIR:-$root/.cache/demo}

stop_demo() {
  if [[ -f "$demo/pgkeel.pid" ]]; then
    pid=$(cat "$demo/pgkeel.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  [[ -f "$demo/cluster/cluster.env" ]] && tools/cluster.sh down "$demo/cluster" --rm || true
  rm -rf "$demo"
}

if [[ "${1:-}" == "stop" ]]; then
  stop_demo
  echo "demo stopped"
  exit 0
fi

echo "=== installing what is missing"
tools/install-deps.sh
echo "=== building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target pgkeel pgkeel-ledger

stop_demo
mkdir -p "$demo"
echo "=== starting a primary and a streaming standby"
tools/cluster.sh up "$demo/cluster" --standbys 1 --sync
# shellcheck disable=SC1091
source "$demo/cluster/cluster.env"

read -r port console_port < <(tools/free-ports.sh 2)
cat >"$demo/pgkeel.toml" <<TOML
[general]
workers = 0
max_client_conn = 1000
log_level = "info"
users_file = "$demo/cluster/users.txt"
state_file = "$demo/pgkeel.state"

[health]
user = "pgkeel"
password = "pgkeel-pass"
probe_interval = "250ms"
probe_timeout = "500ms"

[failover]
synchronous_mode = "on"
replication_password = "replicator-pass"

[console]
port = $console_port
admin_users = ["pgkeel"]

[cluster]
initial_primary = "db1"

[pool]
pool_size = 20

[[listener]]
name = "rw"
host = "127.0.0.1"
port = $port
intent = "read-write"

[[node]]
name = "db1"
host = "127.0.0.1"
port = $DB1_PORT

[[node]]
name = "db2"
host = "127.0.0.1"
port = $DB2_PORT

[databases]
"*" = {}
TOML
build/pgkeel --check-config -c "$demo/pgkeel.toml"
echo "=== starting pgkeel on 127.0.0.1:$port"
build/pgkeel -c "$demo/pgkeel.toml" >"$demo/pgkeel.log" 2>&1 &
echo $! >"$demo/pgkeel.pid"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

export PGPASSWORD=app-pass
console() { PGPASSWORD=pgkeel-pass psql -X -h 127.0.0.1 -p "$console_port" -U pgkeel pgkeel -c "$1"; }
echo "=== pgbench through pgkeel (TPC-B-like, 10 clients, 10 s)"
pgbench -i -s 5 -q -h 127.0.0.1 -p "$port" -U app app
pgbench -c 10 -j 2 -T 10 -P 2 -h 127.0.0.1 -p "$port" -U app app
console "SHOW NODES"

echo "=== failover: 4 ledger clients write through pgkeel; the primary gets kill -9 after 4 s"
conninfo="host=127.0.0.1 port=$port user=app password=app-pass dbname=app"
build/pgkeel-ledger setup --conninfo "$conninfo" --truncate
build/pgkeel-ledger run --conninfo "$conninfo" --clients 4 --duration 12 --out "$demo/ledger.json" &
ledger_pid=$!
sleep 4
kill_ms=$(date +%s%3N)
echo "demo: kill -9 of the primary's postmaster (pid $DB1_PID)"
kill -9 "$DB1_PID"
wait "$ledger_pid" || true
console "SHOW EVENTS"
console "SHOW NODES"
echo "=== verifying the ledger on the new primary (db2), around the kill"
build/pgkeel-ledger verify --conninfo "$conninfo" --in "$demo/ledger.json" --at-unix-ms "$kill_ms" || true

cat <<EOF2

pgkeel is running in front of the cluster (log: $demo/pgkeel.log); db2 is the primary now.
Connect through it:
  PGPASSWORD=app-pass psql -h 127.0.0.1 -p $port -U app app
  JDBC: jdbc:postgresql://127.0.0.1:$port/app?user=app&password=app-pass
The console:
  PGPASSWORD=pgkeel-pass psql -h 127.0.0.1 -p $console_port -U pgkeel pgkeel -c 'SHOW EVENTS'
Turn the old primary into a standby of the new one:
  tools/rejoin.sh $demo/cluster db1 db2
Stop everything:
  tools/demo.sh stop
EOF2
