#!/usr/bin/env bash
# tools/bench.sh — pgkeel against a direct connection to the primary and against PgBouncer,
# each proxy in session and in transaction pooling, with pgbench: median TPS and average latency over interleaved rounds, and what
# each proxy costs in CPU time and syscalls per transaction. A tool, not a test: it asserts nothing.
#
#   tools/bench.sh [--duration S] [--rounds N] [--out FILE] [--strace-txns N] [--workers N] [--pin]
#
#   --duration S      seconds per pgbench run (default 10)
#   --rounds N        rounds; each round runs every workload against every target (default 3)
#   --out FILE        write the markdown report there (default: stdout)
#   --strace-txns N   transactions per client in the syscall-counting run (default 2000)
#   --workers N       pgkeel's general.workers (default 0: pgkeel's own default, one per core)
#   --pin             the proxies on CPU 0, PostgreSQL and pgbench on the other CPUs (taskset), as a
#                     deployment that gives the proxy cores of its own (needs 2 CPUs or more)
#
# It starts everything it measures in a temporary folder: a cluster from tools/cluster.sh
# (primary + 1 async standby), pgkeel ($BUILD_DIR/pgkeel, BUILD_DIR defaults to <repo>/build;
# skipped with a message when missing or when it does not come up) and PgBouncer (run as the
# postgres user when we are root, because it refuses to run as root). Everything is stopped by
# pid on exit, Ctrl-C included. Progress goes to stderr; BENCH_KEEP=1 keeps the folder.
#
# Rounds are interleaved (for each round, for each workload: pgkeel, direct, PgBouncer), so drift
# on a shared machine (compiles, thermal, page cache) hits every target alike. Proxy CPU time is
# utime+stime from /proc/<pid>/stat before and after each run; context switches likewise, from
# every thread's /proc status. The syscall run attaches `strace -c -f` to the proxy, which slows
# it a lot: it is for counting only, never for timing.
#
# Each proxy runs in a session of its own (setsid), as a service manager starts a daemon and as
# PgBouncer's own -d does. With the kernel's autogroup scheduling (the default on Debian) a process
# that shares a session with pgbench shares its CPU share too: it is preempted about twice as
# often, and measured 25-70 % more CPU per transaction here for the same work.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

duration=10
rounds=3
out=""
strace_txns=2000
workers=0
pin=0
while (($#)); do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --duration=*) duration=${1#*=}; shift ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --rounds=*) rounds=${1#*=}; shift ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --strace-txns) strace_txns=${2:?--strace-txns needs a number}; shift 2 ;;
    --strace-txns=*) strace_txns=${1#*=}; shift ;;
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --workers=*) workers=${1#*=}; shift ;;
    --pin) pin=1; shift ;;
    -h | --help) usage ;;
    *) printf 'bench.sh: unknown argument %s\n' "$1" >&2; usage ;;
  esac
done
for v in duration rounds strace_txns; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { printf 'bench.sh: --%s wants a positive number\n' "${v//_/-}" >&2; exit 2; }
done
[[ "$workers" =~ ^[0-9]+$ ]] || { printf 'bench.sh: --workers wants a number (0: one per core)\n' >&2; exit 2; }

# The caller's libpq settings must not steer our clients.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
  PGTARGETSESSIONATTRS PGAPPNAME PGDATA
# Plain TCP for every target alike: the comparison is about proxying, not TLS or GSS set-up.
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

kRepoRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRepoRoot
readonly kClusterSh=$kRepoRoot/tools/cluster.sh
readonly kBuildDir=${BUILD_DIR:-$kRepoRoot/build}
readonly kPgkeelBin=$kBuildDir/pgkeel
readonly kUser=app kPassword=app-pass kDatabase=app
readonly kScale=10
readonly kMaxConnections=300
kCores=$(nproc)
readonly kCores
kClkTck=$(getconf CLK_TCK)
readonly kClkTck

# name|pgbench arguments (besides -T and connection options)
readonly kWorkloads=(
  "select-only simple|-S -c 50 -j 2 -M simple"
  "select-only extended|-S -c 50 -j 2 -M extended"
  "select-only prepared|-S -c 50 -j 2 -M prepared"
  "tpcb-like|-c 20 -j 2"
  "select-only connect-per-txn|-S -C -c 20 -j 2"
)
readonly kStraceArgs="-S -c 20 -j 2 -M simple"

say() { printf 'bench.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

for tool in pgbouncer strace awk setsid taskset; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tools/install-deps.sh installs it)"
done
[[ -x "$kClusterSh" ]] || die "$kClusterSh not found or not executable"
if ((pin)) && ((kCores < 2)); then die "--pin needs 2 CPUs or more (this machine has $kCores)"; fi
# --pin: the proxies' CPU, and everything else's.
readonly kProxyCpus=0
readonly kOtherCpus=1-$((kCores - 1))
proxy_prefix=()
client_prefix=()
if ((pin)); then
  proxy_prefix=(taskset -c "$kProxyCpus")
  client_prefix=(taskset -c "$kOtherCpus")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pgkeel-bench.XXXXXX")
chmod 0755 "$work"  # the postgres user must reach the cluster and PgBouncer folders inside
cluster_dir=$work/cluster
results=$work/results.tsv  # workload, target, round, tps, latency ms, transactions, cpu ms / 1k txn, context switches / txn
: >"$results"
cluster_up=0
pgkeel_pid=""
pgbouncer_pid=""
pgbouncer_tx_pid=""
strace_pid=""
client_pid=""

stop_pid() {  # PID NAME: TERM, then KILL after 5 s
  local pid=$1 name=$2 i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
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
  stop_pid "$client_pid" pgbench
  if [[ -n "$strace_pid" ]]; then kill -INT "$strace_pid" 2>/dev/null; wait "$strace_pid" 2>/dev/null; fi
  stop_pid "$pgkeel_pid" pgkeel
  stop_pid "$pgbouncer_pid" pgbouncer
  stop_pid "$pgbouncer_tx_pid" pgbouncer-tx
  if ((cluster_up)); then
    "$kClusterSh" down "$cluster_dir" --rm >/dev/null 2>&1 || say "cluster.sh down failed; see $cluster_dir"
  fi
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    say "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT
trap 'say terminated; exit 143' TERM

# N distinct free TCP ports on 127.0.0.1, bound to port 0 together so the OS picks different ones.
pick_ports() { "$kRepoRoot/tools/free-ports.sh" "$1"; }

# Waits until PORT accepts a query as the benchmark user; false after 20 s or if PID dies.
await_ready() {  # PORT PID
  local port=$1 pid=$2 i
  for ((i = 0; i < 200; i++)); do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    if PGPASSWORD=$kPassword "$PG_BINDIR/psql" -X -q -At -h 127.0.0.1 -p "$port" -U "$kUser" \
      -d "$kDatabase" -c 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# utime + stime of a process and all its threads, in clock ticks.
cpu_ticks() {  # PID
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }  # the command name may hold spaces; fields resume after the last ')'
  awk '{ print $12 + $13 }' <<<"$stat"  # fields 14 and 15 of the full line
}

# Context switches (voluntary and not) of all of a process's threads.
ctx_switches() {  # PID
  cat "/proc/$1/task/"*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'
}

median() {  # numbers on stdin; "n/a" if none
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print "n/a";
    else if (NR % 2) print v[(NR + 1) / 2];
    else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- cluster ----------------------------------------------------------------------------------

say "starting the cluster (primary + 1 async standby, max_connections=$kMaxConnections)"
cluster_up=1  # set before `up`, so a half-made cluster is torn down too
"$kClusterSh" up "$cluster_dir" --standbys 1 --async --max-connections "$kMaxConnections" >&2 ||
  die "tools/cluster.sh up failed"
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"
[[ -n "${DB1_PORT:-}" && -n "${DB2_PORT:-}" ]] || die "cluster.env lacks DB1_PORT or DB2_PORT"
[[ -f "$cluster_dir/users.txt" ]] || die "the cluster wrote no users.txt"
if ((pin)); then
  # Every PostgreSQL process (and the backends the postmasters fork from now on) off the proxies' CPU.
  for node_pid in "$DB1_PID" "$DB2_PID"; do
    for p in "$node_pid" $(pgrep -P "$node_pid" || true); do
      taskset -a -p -c "$kOtherCpus" "$p" >/dev/null || die "taskset of PostgreSQL process $p failed"
    done
  done
  say "pinned: proxies on CPU $kProxyCpus, PostgreSQL and pgbench on CPUs $kOtherCpus"
fi
pgbench_bin=$PG_BINDIR/pgbench
[[ -x "$pgbench_bin" ]] || pgbench_bin=$(command -v pgbench) || die "pgbench not found"

read -r -a free_ports <<<"$(pick_ports 4)"
pgkeel_port=${free_ports[0]}
pgbouncer_port=${free_ports[1]}
pgkeel_tx_port=${free_ports[2]}
pgbouncer_tx_port=${free_ports[3]}

# --- pgkeel -----------------------------------------------------------------------------------

targets=()
pgkeel_note=""
if [[ ! -x "$kPgkeelBin" ]]; then
  pgkeel_note="pgkeel skipped: $kPgkeelBin does not exist (build it, or set BUILD_DIR)"
  say "$pgkeel_note"
else
  mkdir "$work/pgkeel"
  cat >"$work/pgkeel/pgkeel.toml" <<EOF
# written by tools/bench.sh
[general]
workers = $workers
max_client_conn = 2000
log_level = "warning"
users_file = "$cluster_dir/users.txt"

[cluster]
initial_primary = "db1"

[health]
user = "pgkeel"
password = "pgkeel-pass"

[failover]
replication_password = "replicator-pass"

[pool]
pool_size = 100
max_server_conn_per_node = 200

[[listener]]
name = "rw"
host = "127.0.0.1"
port = $pgkeel_port
intent = "read-write"

[[listener]]
name = "rw-tx"
host = "127.0.0.1"
port = $pgkeel_tx_port
intent = "read-write"
pool_mode = "transaction"

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
EOF
  # How the binary takes its config file: ask its --help, else pass the path alone.
  pgkeel_help=$(timeout 5 "$kPgkeelBin" --help 2>&1 || true)
  if [[ "$pgkeel_help" == *--config* ]]; then
    pgkeel_cmd=("$kPgkeelBin" --config "$work/pgkeel/pgkeel.toml")
  elif [[ "$pgkeel_help" =~ (^|[[:space:]])-c[[:space:],] ]]; then
    pgkeel_cmd=("$kPgkeelBin" -c "$work/pgkeel/pgkeel.toml")
  else
    pgkeel_cmd=("$kPgkeelBin" "$work/pgkeel/pgkeel.toml")
  fi
  say "starting pgkeel on 127.0.0.1:$pgkeel_port: ${pgkeel_cmd[*]}"
  # setsid execs pgkeel in place (a new session, see the head of this file), so $! is pgkeel's pid.
  "${proxy_prefix[@]}" setsid "${pgkeel_cmd[@]}" >"$work/pgkeel/pgkeel.log" 2>&1 </dev/null &
  pgkeel_pid=$!
  if await_ready "$pgkeel_port" "$pgkeel_pid"; then
    targets+=(pgkeel pgkeel-tx)
  else
    if kill -0 "$pgkeel_pid" 2>/dev/null; then
      pgkeel_note="pgkeel skipped: it did not answer SELECT 1 on port $pgkeel_port within 20 s"
    else
      pgkeel_rc=0
      wait "$pgkeel_pid" || pgkeel_rc=$?
      pgkeel_note="pgkeel skipped: it exited with status $pgkeel_rc before answering SELECT 1"
    fi
    say "$pgkeel_note; last lines of its log:"
    tail -n 20 "$work/pgkeel/pgkeel.log" >&2 || true
    stop_pid "$pgkeel_pid" pgkeel
    pgkeel_pid=""
  fi
fi
targets+=(direct)

# --- PgBouncer --------------------------------------------------------------------------------

mkdir "$work/pgbouncer"
# Same `"name" "secret"` lines, without the '#' comments, which PgBouncer 1.18 rejects as a
# "broken auth file" (it then knows no user at all).
grep -v '^[[:space:]]*#' "$cluster_dir/users.txt" >"$work/pgbouncer/users.txt"
chmod 0600 "$work/pgbouncer/users.txt"
# One instance per pool mode; both read the same auth file.
start_pgbouncer() {  # MODE PORT DIR -> sets started_pid
  local mode=$1 port=$2 dir=$3
  mkdir -p "$dir"
  cat >"$dir/pgbouncer.ini" <<EOF
; written by tools/bench.sh
[databases]
* = host=127.0.0.1 port=$DB1_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/pgbouncer/users.txt
pool_mode = $mode
max_client_conn = 2000
default_pool_size = 100
max_db_connections = 200
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
  local cmd=(pgbouncer -q "$dir/pgbouncer.ini")  # -q: log to logfile only
  if ((EUID == 0)); then
    chown -R postgres: "$dir" "$work/pgbouncer"
    # setpriv execs PgBouncer in place, so $! is PgBouncer's own pid.
    cmd=(setpriv --reuid=postgres --regid=postgres --init-groups "${cmd[@]}")
  fi
  # A session of its own, as pgkeel's (and as PgBouncer's own -d would make, which forks).
  cmd=("${proxy_prefix[@]}" setsid "${cmd[@]}")
  say "starting PgBouncer on 127.0.0.1:$port ($mode mode)"
  (cd / && exec "${cmd[@]}") >"$dir/stdout.log" 2>&1 </dev/null &
  started_pid=$!
  if ! await_ready "$port" "$started_pid"; then
    say "PgBouncer ($mode) did not come up; last lines of its log:"
    tail -n 20 "$dir/pgbouncer.log" "$dir/stdout.log" >&2 || true
    die "PgBouncer failed to start"
  fi
}
start_pgbouncer session "$pgbouncer_port" "$work/pgbouncer"
pgbouncer_pid=$started_pid
targets+=(pgbouncer)
start_pgbouncer transaction "$pgbouncer_tx_port" "$work/pgbouncer-tx"
pgbouncer_tx_pid=$started_pid
targets+=(pgbouncer-tx)

# --- data -------------------------------------------------------------------------------------

say "pgbench -i -s $kScale on database $kDatabase"
PGPASSWORD=$kPassword "$pgbench_bin" -i -q -s "$kScale" -h 127.0.0.1 -p "$DB1_PORT" -U "$kUser" \
  "$kDatabase" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; die "pgbench -i failed"; }

target_port() {
  case "$1" in
    pgkeel) echo "$pgkeel_port" ;;
    pgkeel-tx) echo "$pgkeel_tx_port" ;;
    direct) echo "$DB1_PORT" ;;
    pgbouncer) echo "$pgbouncer_port" ;;
    pgbouncer-tx) echo "$pgbouncer_tx_port" ;;
  esac
}
target_pid() {
  case "$1" in
    pgkeel | pgkeel-tx) echo "$pgkeel_pid" ;;
    pgbouncer) echo "$pgbouncer_pid" ;;
    pgbouncer-tx) echo "$pgbouncer_tx_pid" ;;
    *) echo "" ;;
  esac
}

# Runs pgbench in the background (so Ctrl-C reaches our trap promptly) and waits for it.
run_pgbench() {  # LOGFILE TIMEOUT ARGS...
  local log=$1 limit=$2 rc=0
  shift 2
  PGPASSWORD=$kPassword timeout --kill-after=10 "$limit" "${client_prefix[@]}" "$pgbench_bin" "$@" \
    >"$log" 2>&1 </dev/null &
  client_pid=$!
  wait "$client_pid" || rc=$?
  client_pid=""
  return "$rc"
}

# --- interleaved rounds -----------------------------------------------------------------------

total_runs=$((rounds * ${#kWorkloads[@]} * ${#targets[@]}))
say "$total_runs runs of ${duration}s: $rounds rounds x ${#kWorkloads[@]} workloads x targets ${targets[*]}"
run_no=0
for ((round = 1; round <= rounds; round++)); do
  for wl in "${kWorkloads[@]}"; do
    name=${wl%%|*}
    read -r -a wl_args <<<"${wl#*|}"
    for target in "${targets[@]}"; do
      run_no=$((run_no + 1))
      if [[ "$target" == pgbouncer-tx && "$name" == *prepared* ]]; then
        # PgBouncer 1.18 has no protocol-level prepared statements in transaction pooling
        # (max_prepared_statements came in 1.21): pgbench -M prepared fails there.
        printf '%s\t%s\t%s\tn/a\tn/a\t0\tn/a\tn/a\n' "$name" "$target" "$round" >>"$results"
        say "[$run_no/$total_runs] round $round $name $target: skipped (unsupported by PgBouncer 1.18)"
        continue
      fi
      port=$(target_port "$target")
      pid=$(target_pid "$target")
      log="$work/run-$run_no.log"
      before=""
      csw_before=""
      [[ -n "$pid" ]] && before=$(cpu_ticks "$pid") && csw_before=$(ctx_switches "$pid")
      rc=0
      run_pgbench "$log" $((duration * 3 + 60)) "${wl_args[@]}" -T "$duration" -n \
        -h 127.0.0.1 -p "$port" -U "$kUser" "$kDatabase" || rc=$?
      after=""
      csw_after=""
      [[ -n "$pid" ]] && after=$(cpu_ticks "$pid") && csw_after=$(ctx_switches "$pid")
      tps=$(awk '/^tps = / { print $3; exit }' "$log")
      lat=$(awk '/^latency average = / { print $4; exit }' "$log")
      txns=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$log")
      failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$log")
      if ((rc != 0)) || [[ -z "$tps" || -z "$txns" || "$txns" == 0 ]]; then
        say "[$run_no/$total_runs] round $round $name $target: pgbench failed (exit $rc); last lines:"
        tail -n 5 "$log" >&2 || true
        printf '%s\t%s\t%s\tn/a\tn/a\t0\tn/a\tn/a\n' "$name" "$target" "$round" >>"$results"
        continue
      fi
      cpu="n/a"
      csw="n/a"
      if [[ -n "$pid" ]]; then
        cpu=$(awk -v b="$before" -v a="$after" -v n="$txns" -v hz="$kClkTck" \
          'BEGIN { printf "%.3f", (a - b) / hz * 1000 / n * 1000 }')
        csw=$(awk -v b="$csw_before" -v a="$csw_after" -v n="$txns" 'BEGIN { printf "%.3f", (a - b) / n }')
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$target" "$round" "$tps" "$lat" "$txns" "$cpu" "$csw" \
        >>"$results"
      say "[$run_no/$total_runs] round $round $name $target: tps=$tps latency=${lat}ms txns=$txns" \
        "failed=${failed:-0} cpu_ms_per_1k=$cpu csw_per_txn=$csw"
    done
  done
done

# --- syscalls per transaction -----------------------------------------------------------------

declare -A sys_txns=() sys_calls=() sys_top=()
read -r -a strace_wl <<<"$kStraceArgs"
for target in "${targets[@]}"; do
  pid=$(target_pid "$target")
  [[ -n "$pid" ]] || continue
  port=$(target_port "$target")
  trace="$work/strace-$target.txt"
  say "counting syscalls of $target ($pid): pgbench $kStraceArgs -t $strace_txns under strace -c -f"
  strace -c -f -S calls -o "$trace" -p "$pid" 2>"$work/strace-$target.err" &
  strace_pid=$!
  # strace reports each attached thread on stderr; wait for the first, then a moment for the rest.
  for ((i = 0; i < 50; i++)); do
    grep -q 'attached' "$work/strace-$target.err" 2>/dev/null && break
    sleep 0.1
  done
  sleep 0.5
  log="$work/strace-$target.pgbench.log"
  rc=0
  run_pgbench "$log" 600 "${strace_wl[@]}" -t "$strace_txns" -n -h 127.0.0.1 -p "$port" \
    -U "$kUser" "$kDatabase" || rc=$?
  kill -INT "$strace_pid" 2>/dev/null || true
  wait "$strace_pid" 2>/dev/null || true
  strace_pid=""
  txns=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$log")
  calls=$(awk '$NF == "total" { print $4 }' "$trace" 2>/dev/null)
  if ((rc != 0)) || [[ -z "$txns" || "$txns" == 0 || -z "$calls" ]]; then
    say "syscall run for $target failed (pgbench exit $rc)"
    tail -n 5 "$log" "$work/strace-$target.err" >&2 || true
    continue
  fi
  sys_txns[$target]=$txns
  sys_calls[$target]=$calls
  # The three most frequent syscalls (the table is sorted by calls), as name×calls-per-txn.
  sys_top[$target]=$(awk -v n="$txns" '
    /^-+/ { sep++; next }
    sep == 1 && NF >= 5 { printf "%s%s %.2f", (k++ ? ", " : ""), $NF, $4 / n; if (k == 3) exit }' "$trace")
  say "$target: $calls syscalls for $txns transactions"
done

# --- report -----------------------------------------------------------------------------------

stat_of() {  # WORKLOAD TARGET COLUMN(4=tps 5=latency 7=cpu 8=context switches) -> median over rounds
  awk -F'\t' -v w="$1" -v t="$2" -v c="$3" '$1 == w && $2 == t && $c != "n/a" { print $c }' \
    "$results" | median
}
ratio() {  # A B -> A/B with 2 decimals, or n/a
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "n/a" || b == "n/a" || a == "" || b == "" || b + 0 == 0) print "n/a";
    else printf "%.2f", a / b }'
}
fmt() {  # NUMBER DECIMALS
  awk -v x="$1" -v d="$2" 'BEGIN { if (x == "n/a" || x == "") print "n/a"; else printf "%.*f", d, x }'
}

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
pg_version=$("$PG_BINDIR/postgres" --version)
pgbench_version=$("$pgbench_bin" --version)
pgbouncer_version=$(pgbouncer --version 2>/dev/null | head -n 1)
pgkeel_version="not run"
if [[ -n "$pgkeel_pid" ]]; then
  pgkeel_version="$kPgkeelBin, source $(git -C "$kRepoRoot" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$kRepoRoot" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    pgkeel_version+=" (work tree modified)"
  fi
fi

report() {
  echo "# pgkeel benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: nproc=$kCores, CPU: ${cpu_model:-unknown}, $(uname -sr)"
  echo "- versions: $pg_version; $pgbench_version; $pgbouncer_version; pgkeel: $pgkeel_version"
  echo "- setup: tools/cluster.sh primary + 1 async standby (max_connections=$kMaxConnections)," \
    "pgbench scale $kScale on database $kDatabase as $kUser (SCRAM), TCP on 127.0.0.1, sslmode=disable"
  echo "- pgkeel: workers=$workers$( ((workers == 0)) && echo " (one per core: $kCores)"), pool_size=100, one listener per pool mode (pgkeel, pgkeel-tx);" \
    "PgBouncer: one instance per pool mode (pgbouncer, pgbouncer-tx), auth_type scram-sha-256," \
    "default_pool_size=100 (one thread each); each proxy in a session of its own (setsid)"
  if ((pin)); then
    echo "- pinned (taskset): the proxies on CPU $kProxyCpus; PostgreSQL and pgbench on CPUs $kOtherCpus"
  else
    echo "- not pinned: clients, proxies and servers share the same $kCores cores"
  fi
  echo "- select-only prepared is not run against pgbouncer-tx: PgBouncer 1.18 has no prepared" \
    "statements in transaction pooling"
  echo "- method: rounds: $rounds, interleaved (per workload: ${targets[*]}), ${duration} s per run;" \
    "medians over rounds"
  if [[ -n "$pgkeel_note" ]]; then echo "- **$pgkeel_note**"; fi
  echo
  echo "## Throughput and latency (median over rounds: $rounds)"
  echo
  echo "| workload | target | TPS | avg latency (ms) | proxy CPU (ms per 1k txn) | proxy context switches per txn |"
  echo "|---|---|---:|---:|---:|---:|"
  local wl name target
  for wl in "${kWorkloads[@]}"; do
    name=${wl%%|*}
    for target in "${targets[@]}"; do
      echo "| $name | $target | $(fmt "$(stat_of "$name" "$target" 4)" 0) |" \
        "$(fmt "$(stat_of "$name" "$target" 5)" 3) |" \
        "$(fmt "$(stat_of "$name" "$target" 7)" 1) |" \
        "$(fmt "$(stat_of "$name" "$target" 8)" 2) |"
    done
  done
  echo
  echo "Workloads:"
  # shellcheck disable=SC2016  # the backticks are markdown
  for wl in "${kWorkloads[@]}"; do printf -- '- %s: `pgbench %s -T %s`\n' "${wl%%|*}" "${wl#*|}" "$duration"; done
  echo
  echo "## pgkeel relative to direct and to PgBouncer (medians)"
  echo
  echo "| workload | TPS pgkeel/direct | TPS pgkeel/PgBouncer | latency pgkeel/direct | latency pgkeel/PgBouncer | TPS pgkeel-tx/direct | TPS pgkeel-tx/PgBouncer-tx | CPU pgkeel/PgBouncer | CPU pgkeel-tx/PgBouncer-tx | CPU pgkeel-tx/pgkeel |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  local kt kl kc dt dl bt bl bc xt xc yt yc
  for wl in "${kWorkloads[@]}"; do
    name=${wl%%|*}
    kt=$(stat_of "$name" pgkeel 4); kl=$(stat_of "$name" pgkeel 5); kc=$(stat_of "$name" pgkeel 7)
    dt=$(stat_of "$name" direct 4); dl=$(stat_of "$name" direct 5)
    bt=$(stat_of "$name" pgbouncer 4); bl=$(stat_of "$name" pgbouncer 5); bc=$(stat_of "$name" pgbouncer 7)
    xt=$(stat_of "$name" pgkeel-tx 4); xc=$(stat_of "$name" pgkeel-tx 7)
    yt=$(stat_of "$name" pgbouncer-tx 4); yc=$(stat_of "$name" pgbouncer-tx 7)
    echo "| $name | $(ratio "$kt" "$dt") | $(ratio "$kt" "$bt") | $(ratio "$kl" "$dl") | $(ratio "$kl" "$bl") |" \
      "$(ratio "$xt" "$dt") | $(ratio "$xt" "$yt") | $(ratio "$kc" "$bc") | $(ratio "$xc" "$yc") | $(ratio "$xc" "$kc") |"
  done
  echo
  echo "## Syscalls per transaction"
  echo
  echo "One run per proxy of \`pgbench $kStraceArgs -t $strace_txns\` with \`strace -c -f -p <proxy pid>\`" \
    "attached (all threads). strace slows the proxy severely: this run counts, it does not time."
  echo
  echo "| target | transactions | syscalls | syscalls per txn | most frequent (calls per txn) |"
  echo "|---|---:|---:|---:|---|"
  for target in "${targets[@]}"; do
    [[ "$target" == direct ]] && continue
    if [[ -n "${sys_calls[$target]:-}" ]]; then
      echo "| $target | ${sys_txns[$target]} | ${sys_calls[$target]} |" \
        "$(ratio "${sys_calls[$target]}" "${sys_txns[$target]}") | ${sys_top[$target]} |"
    else
      echo "| $target | n/a | n/a | n/a | run failed |"
    fi
  done
  echo
  echo "## Every run"
  echo
  echo "| round | workload | target | TPS | avg latency (ms) | transactions | proxy CPU (ms per 1k txn) | context switches per txn |"
  echo "|---:|---|---|---:|---:|---:|---:|---:|"
  sort -t$'\t' -k3,3n -s "$results" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $3, $1, $2, ($4 == "n/a" ? $4 : sprintf("%.0f", $4)), $5, $6, $7, $8 }'
}

if [[ -n "$out" ]]; then
  report >"$out"
  say "report written to $out"
else
  report
fi
