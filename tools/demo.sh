#!/usr/bin/env bash
# tools/demo.sh — the README's demo command: installs what is missing, builds pgkeel, starts a
# local primary + synchronous streaming standby on loopback with pgkeel in front, drives a short
# pgbench through it, and ends with a short drill (tools/drill): the primary gets kill -9 under
# load, pgkeel promotes the standby, and the drill prints write downtime, client errors by class
# and lost acknowledged commits (zero), and where its HTML report is.
# Everything stays up until `tools/demo.sh stop`.
#
#   tools/demo.sh          install, build, start, show
#   tools/demo.sh stop     stop pgkeel and the cluster, remove the demo folder
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
demo=${PGKEEL_DEMO_DIR:-$root/.cache/demo}

stop_demo() {
  [[ -d "$demo" ]] && tools/rehearsal.sh down "$demo" || true
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
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target pgkeel pgkeel-drill

stop_demo
echo "=== starting a primary, a synchronous streaming standby and pgkeel (tools/rehearsal.sh)"
tools/rehearsal.sh up "$demo" --standbys 1 --sync
# shellcheck disable=SC1091
source "$demo/rehearsal.env"
port=$PGKEEL_PORT
console_port=$PGKEEL_CONSOLE_PORT

export PGPASSWORD=app-pass
console() { PGPASSWORD=pgkeel-pass psql -X -h 127.0.0.1 -p "$console_port" -U pgkeel pgkeel -c "$1"; }
echo "=== pgbench through pgkeel (TPC-B-like, 10 clients, 10 s)"
pgbench -i -s 5 -q -h 127.0.0.1 -p "$port" -U app app
pgbench -c 10 -j 2 -T 10 -P 2 -h 127.0.0.1 -p "$port" -U app app
console "SHOW NODES"

echo "=== the drill: 4 clients write and read through pgkeel; the primary gets kill -9 at 5 s"
build/pgkeel-drill --env "$demo/rehearsal.env" --clients 4 --duration 15s --fault kill@5s \
  --max-downtime 5s --out "$demo" || true
console "SHOW EVENTS"
console "SHOW NODES"

cat <<EOF2

pgkeel is running in front of the cluster (log: $demo/pgkeel.log); db2 is the primary now.
The drill's report: $demo/drill.html (summary: $demo/drill.json)
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
