#!/usr/bin/env bash
# tools/bench-memory.sh — what an idle client costs pgkeel and PgBouncer in memory, measured in
# the same run against the same cluster: resident memory (VmRSS from /proc/PID/status; Pss and
# private memory, Private_Clean + Private_Dirty, from /proc/PID/smaps_rollup) before and after
# $BUILD_DIR/pgkeel-hold-clients opens N connections, as KB per client. Private memory is the
# figure to quote: Pss also moves when other processes (the client tool itself) map the same
# shared libraries, so it can even fall. Exits non-zero when any connection failed or was lost.
#
#   tools/bench-memory.sh [--session N] [--idle N[,N...]] [--out FILE] [--concurrency C]
#
#   --session N   case (a), default 2000: N clients log in and run one SELECT 1 each. Both
#                 proxies are in session mode, so each such client holds a server connection:
#                 PostgreSQL gets max_connections = N + 100. 0 skips the case.
#   --idle LIST   case (b), default 2000,10000: N clients stop at AuthenticationOk and never run
#                 a query. PgBouncer has logged them in fully (ReadyForQuery) without a server
#                 connection. pgkeel links a server at login (session mode), so its clients wait
#                 in the pool's queue: max_server_conn_per_node = 1 and wait_timeout = 1h, and the
#                 table says how many server connections each proxy held. 0 or "" skips the case.
#   --out FILE    also write the markdown report there
#
# Each measurement starts the proxy afresh (so no run inherits another's heap), waits until it
# answers SELECT 1, lets it settle, takes the "before" figures, starts the clients, waits until
# every one is held or has failed, waits 2 s, takes the "after" figures, stops the clients and the
# proxy. pgkeel runs with workers = nproc; PgBouncer is one thread. Both get RLIMIT_NOFILE
# (prlimit) 2N + 1024 in case (a), where each client also has a server socket, else N + 1024;
# that must fit under the hard limit unless we may raise it (root outside a container).
#
# Needs: tools/cluster.sh, $BUILD_DIR/pgkeel and $BUILD_DIR/pgkeel-hold-clients (BUILD_DIR
# defaults to <repo>/build; a Release build is what the README's figures use), pgbouncer, prlimit.
# Progress goes to stderr, the report to stdout. MEMBENCH_KEEP=1 keeps the temporary folder.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

session_n=2000
idle_list=2000,10000
out=""
concurrency=100
while (($#)); do
  case "$1" in
    --session) session_n=${2?--session needs a number}; shift 2 ;;
    --session=*) session_n=${1#*=}; shift ;;
    --idle) idle_list=${2?--idle needs a list}; shift 2 ;;
    --idle=*) idle_list=${1#*=}; shift ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --concurrency) concurrency=${2:?--concurrency needs a number}; shift 2 ;;
    --concurrency=*) concurrency=${1#*=}; shift ;;
    -h | --help) usage ;;
    *) printf 'bench-memory.sh: unknown argument %s\n' "$1" >&2; usage ;;
  esac
done
[[ "$session_n" =~ ^[0-9]+$ ]] || { echo "bench-memory.sh: --session wants a number" >&2; exit 2; }
[[ "$idle_list" =~ ^([0-9]+(,[0-9]+)*)?$ ]] || { echo "bench-memory.sh: --idle wants N[,N...]" >&2; exit 2; }
[[ "$concurrency" =~ ^[1-9][0-9]*$ ]] || { echo "bench-memory.sh: --concurrency wants a number" >&2; exit 2; }
IFS=, read -r -a idle_ns <<<"$idle_list"

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
  PGTARGETSESSIONATTRS PGAPPNAME PGDATA
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

kRepoRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRepoRoot
readonly kClusterSh=$kRepoRoot/tools/cluster.sh
readonly kBuildDir=${BUILD_DIR:-$kRepoRoot/build}
readonly kPgkeelBin=$kBuildDir/pgkeel
readonly kHoldBin=$kBuildDir/pgkeel-hold-clients
readonly kUser=app kPassword=app-pass kDatabase=app
kCores=$(nproc)
readonly kCores

say() { printf 'bench-memory.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

for tool in pgbouncer prlimit awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tools/install-deps.sh installs it)"
done
[[ -x "$kPgkeelBin" ]] || die "$kPgkeelBin not found (build it, or set BUILD_DIR)"
[[ -x "$kHoldBin" ]] || die "$kHoldBin not found (build target pgkeel-hold-clients)"

max_n=$session_n
for n in "${idle_ns[@]}"; do ((n > max_n)) && max_n=$n; done
((max_n > 0)) || die "nothing to measure"
fds_for() {  # CASE N: the open-file limit a proxy gets
  if [[ "$1" == session ]]; then echo $((2 * $2 + 1024)); else echo $(($2 + 1024)); fi
}
need_fds=$(fds_for session "$session_n")
for n in "${idle_ns[@]}"; do (($(fds_for idle "$n") > need_fds)) && need_fds=$(fds_for idle "$n"); done
if (($(ulimit -Hn) < need_fds)) && ! prlimit --nofile="$need_fds:$need_fds" true 2>/dev/null; then
  die "the hard limit on open files ($(ulimit -Hn)) is below $need_fds and cannot be raised here"
fi
ports_needed=$((2 * max_n + 1000))
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
((hi - lo >= ports_needed)) || say "warning: ip_local_port_range $lo-$hi may run out of ports"

work=$(mktemp -d "${TMPDIR:-/tmp}/pgkeel-membench.XXXXXX")
chmod 0755 "$work"
cluster_dir=$work/cluster
results=$work/results.tsv  # case, n, proxy, rss0, rss1, pss0, pss1, uss0, uss1, held, failed, servers, s
: >"$results"
cluster_up=0
proxy_pid=""
hold_pid=""
failures=0

stop_pid() {  # PID NAME: TERM, then KILL after 10 s
  local pid=$1 name=$2 i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name ($pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$hold_pid" pgkeel-hold-clients
  stop_pid "$proxy_pid" proxy
  if ((cluster_up)); then
    "$kClusterSh" down "$cluster_dir" --rm >/dev/null 2>&1 || say "cluster.sh down failed; see $cluster_dir"
  fi
  if [[ "${MEMBENCH_KEEP:-0}" == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT
trap 'say terminated; exit 143' TERM

await_ready() {  # PORT PID: SELECT 1 as the benchmark user within 20 s, while PID lives
  local port=$1 pid=$2 i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if PGPASSWORD=$kPassword "$PG_BINDIR/psql" -X -q -At -h 127.0.0.1 -p "$port" -U "$kUser" \
      -d "$kDatabase" -c 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

kb_of() {  # PID FILE FIELD: a "Field:   123 kB" line of /proc/PID/FILE, in KB
  awk -v f="$3:" '$1 == f { print $2; exit }' "/proc/$1/$2"
}
private_kb() {  # PID: memory no other process shares (USS)
  awk '$1 == "Private_Clean:" || $1 == "Private_Dirty:" { kb += $2 } END { print kb + 0 }' \
    "/proc/$1/smaps_rollup"
}

# Server connections the benchmark user holds on the primary right now.
app_backends() {
  "$kClusterSh" psql "$cluster_dir" db1 -X -At -c \
    "SELECT count(*) FROM pg_stat_activity WHERE usename = '$kUser' AND backend_type = 'client backend'" \
    2>/dev/null || echo "?"
}

await_no_backends() {  # so one measurement's server connections are gone before the next
  local i
  for ((i = 0; i < 300; i++)); do
    [[ "$(app_backends)" == 0 ]] && return 0
    sleep 0.1
  done
  say "warning: $(app_backends) server connections of $kUser still open"
}

# --- cluster ----------------------------------------------------------------------------------

max_connections=$((session_n + 100))
((max_connections >= 200)) || max_connections=200
say "starting the cluster (primary only, max_connections=$max_connections)"
cluster_up=1
"$kClusterSh" up "$cluster_dir" --standbys 0 --async --max-connections "$max_connections" >&2 ||
  die "tools/cluster.sh up failed"
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"
[[ -n "${DB1_PORT:-}" ]] || die "cluster.env lacks DB1_PORT"
read -r -a free_ports <<<"$("$kRepoRoot/tools/free-ports.sh" 2)"
pgkeel_port=${free_ports[0]}
pgbouncer_port=${free_ports[1]}

mkdir "$work/pgkeel" "$work/pgbouncer"
# PgBouncer 1.18 rejects the '#' comments of pgkeel's users file (see tools/bench.sh).
grep -v '^[[:space:]]*#' "$cluster_dir/users.txt" >"$work/pgbouncer/users.txt"
chmod 0600 "$work/pgbouncer/users.txt"
((EUID == 0)) && chown -R postgres: "$work/pgbouncer"

# The proxies' configs, as tools/bench.sh writes them, sized for N clients. CASE is session or
# idle (see the header for what differs).
write_pgkeel_conf() {  # CASE N
  local max_server=$(($2 + 50)) pool_size=20 wait_timeout='"30s"'
  if [[ "$1" == idle ]]; then max_server=1 pool_size=1 wait_timeout='"1h"'; fi
  cat >"$work/pgkeel/pgkeel.toml" <<EOF
# written by tools/bench-memory.sh ($1, $2 clients)
[general]
workers = $kCores
max_client_conn = $(($2 + 100))
log_level = "warning"
users_file = "$cluster_dir/users.txt"
login_timeout = "60s"

[cluster]
initial_primary = "db1"

[health]
user = "pgkeel"
password = "pgkeel-pass"

[failover]
replication_password = "replicator-pass"

[pool]
pool_size = $pool_size
max_server_conn_per_node = $max_server
wait_timeout = $wait_timeout

[[listener]]
name = "rw"
host = "127.0.0.1"
port = $pgkeel_port
intent = "read-write"

[[node]]
name = "db1"
host = "127.0.0.1"
port = $DB1_PORT

[databases]
"*" = {}
EOF
}

write_pgbouncer_conf() {  # CASE N
  local pool=$(($2 + 50))
  [[ "$1" == idle ]] && pool=20
  cat >"$work/pgbouncer/pgbouncer.ini" <<EOF
; written by tools/bench-memory.sh ($1, $2 clients)
[databases]
* = host=127.0.0.1 port=$DB1_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
listen_backlog = 4096
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/pgbouncer/users.txt
pool_mode = session
max_client_conn = $(($2 + 100))
default_pool_size = $pool
max_db_connections = $pool
client_login_timeout = 120
logfile = $work/pgbouncer/pgbouncer.log
pidfile = $work/pgbouncer/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
  ((EUID == 0)) && chown postgres: "$work/pgbouncer/pgbouncer.ini"
  return 0
}

start_proxy() {  # PROXY CASE N: sets proxy_pid and proxy_port
  local fds cmd
  fds=$(fds_for "$2" "$3")
  case "$1" in
    pgkeel)
      write_pgkeel_conf "$2" "$3"
      proxy_port=$pgkeel_port
      cmd=(prlimit "--nofile=$fds:$fds" "$kPgkeelBin" -c "$work/pgkeel/pgkeel.toml")
      "${cmd[@]}" >>"$work/pgkeel/pgkeel.log" 2>&1 </dev/null &
      ;;
    pgbouncer)
      write_pgbouncer_conf "$2" "$3"
      proxy_port=$pgbouncer_port
      cmd=(prlimit "--nofile=$fds:$fds")
      # PgBouncer refuses to run as root; setpriv and prlimit exec in place, so $! is its pid.
      ((EUID == 0)) && cmd+=(setpriv --reuid=postgres --regid=postgres --init-groups)
      cmd+=(pgbouncer -q "$work/pgbouncer/pgbouncer.ini")
      (cd / && exec "${cmd[@]}") >>"$work/pgbouncer/stdout.log" 2>&1 </dev/null &
      ;;
  esac
  proxy_pid=$!
  if ! await_ready "$proxy_port" "$proxy_pid"; then
    say "$1 did not answer SELECT 1; last lines of its log:"
    tail -n 20 "$work/$1/"*.log >&2 || true
    die "$1 failed to start"
  fi
}

# One measurement: PROXY CASE N -> a line in $results.
measure() {
  local proxy=$1 kind=$2 n=$3 mode rss0 rss1 pss0 pss1 uss0 uss1 servers rc=0 line held failed i
  mode=query
  [[ "$kind" == idle ]] && mode=auth
  await_no_backends
  start_proxy "$proxy" "$kind" "$n"
  sleep 2  # let the health keeper's first probes and the warm-up settle
  rss0=$(kb_of "$proxy_pid" status VmRSS)
  pss0=$(kb_of "$proxy_pid" smaps_rollup Pss)
  uss0=$(private_kb "$proxy_pid")
  say "$kind $n $proxy (pid $proxy_pid): before VmRSS=${rss0} kB Pss=${pss0} kB private=${uss0} kB; connecting"
  rm -f "$work/ready"
  local t0=$SECONDS
  "$kHoldBin" --port "$proxy_port" --clients "$n" --mode "$mode" --concurrency "$concurrency" \
    --connect-timeout 120 --ready-file "$work/ready" >"$work/hold.out" 2>"$work/hold.err" &
  hold_pid=$!
  for ((i = 0; i < 6000; i++)); do  # 10 min at most
    [[ -f "$work/ready" ]] && break
    kill -0 "$hold_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -f "$work/ready" ]] || { tail -n 20 "$work/hold.err" >&2; die "pgkeel-hold-clients did not finish connecting"; }
  local connect_s=$((SECONDS - t0))
  sleep 2
  rss1=$(kb_of "$proxy_pid" status VmRSS)
  pss1=$(kb_of "$proxy_pid" smaps_rollup Pss)
  uss1=$(private_kb "$proxy_pid")
  servers=$(app_backends)
  kill -TERM "$hold_pid" 2>/dev/null || true
  wait "$hold_pid" || rc=$?
  hold_pid=""
  line=$(grep -m1 '^hold-clients: target=' "$work/hold.out" || true)
  held=$(sed -n 's/.* held=\([0-9]*\).*/\1/p' <<<"$line")
  failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
  [[ -n "$held" ]] || held=0
  [[ -n "$failed" ]] || failed=$n
  if ((rc != 0 || failed != 0 || held != n)); then
    failures=$((failures + 1))
    say "$kind $n $proxy: $failed failed, $held held (exit $rc):"
    grep '^hold-clients: error' "$work/hold.out" >&2 || tail -n 5 "$work/hold.err" >&2
  fi
  say "$kind $n $proxy: after VmRSS=${rss1} kB Pss=${pss1} kB private=${uss1} kB; held=$held failed=$failed" \
    "server connections=$servers; connected in ${connect_s}s"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$n" "$proxy" "$rss0" "$rss1" \
    "$pss0" "$pss1" "$uss0" "$uss1" "$held" "$failed" "$servers" "$connect_s" >>"$results"
  stop_pid "$proxy_pid" "$proxy"
  proxy_pid=""
}

if ((session_n > 0)); then
  for proxy in pgkeel pgbouncer; do measure "$proxy" session "$session_n"; done
fi
for n in "${idle_ns[@]}"; do
  ((n > 0)) || continue
  for proxy in pgkeel pgbouncer; do measure "$proxy" idle "$n"; done
done

# --- report -----------------------------------------------------------------------------------

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
report() {
  echo "# pgkeel memory per idle client"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); machine: nproc=$kCores, ${cpu_model:-unknown CPU}, $(uname -sr)"
  echo "- versions: $("$PG_BINDIR/postgres" --version); $(pgbouncer --version 2>/dev/null | head -n 1);" \
    "$("$kPgkeelBin" --version 2>&1 | head -n 1) ($kPgkeelBin)"
  echo "- pgkeel: workers=$kCores, session pooling; PgBouncer: session mode, one thread; SCRAM as $kUser over TCP"
  echo "- session: each client logged in and ran SELECT 1, so it holds a server connection in both proxies"
  echo "- idle: each client stopped at AuthenticationOk and sent no query; PgBouncer logged it in" \
    "without a server; pgkeel queued it for a server (max_server_conn_per_node=1)"
  echo "- KB per client = (after - before) / clients. private = Private_Clean + Private_Dirty" \
    "(smaps_rollup): the figure to quote. Pss shares library pages with the client tool, so it drifts"
  echo
  echo "| case | clients | proxy | private before → after (kB) | KB/client (private) | VmRSS before → after (kB) | KB/client (RSS) | Pss before → after (kB) | KB/client (Pss) | held | failed | server conns | connect s |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{
    printf "| %s | %d | %s | %d → %d | %.1f | %d → %d | %.1f | %d → %d | %.1f | %d | %d | %s | %s |\n",
      $1, $2, $3, $8, $9, ($9 - $8) / $2, $4, $5, ($5 - $4) / $2, $6, $7, ($7 - $6) / $2,
      $10, $11, $12, $13 }' "$results"
  echo
  if ((failures)); then echo "**$failures measurement(s) had failed or lost connections.**"; else echo "Every connection was held; none failed."; fi
}
if [[ -n "$out" ]]; then report | tee "$out"; else report; fi
((failures == 0))
