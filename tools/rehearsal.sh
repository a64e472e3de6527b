#!/usr/bin/env bash
# tools/rehearsal.sh — the rehearsal cluster with one command each way: a primary and N streaming
# standbys (tools/cluster.sh) with pgkeel in front (a read-write listener, the console and the
# status port), ready for pgkeel-drill.
#
#   tools/rehearsal.sh up DIR [--standbys N] [--sync|--async] [--netns] [--instances N]
#                                                                 start everything (default: 1, --sync)
#   tools/rehearsal.sh down DIR [--keep]                          stop everything; remove DIR unless --keep
#   tools/rehearsal.sh restart-proxy DIR                          a new pgkeel takes over (pgkeel --takeover)
#   tools/rehearsal.sh cold-restart-proxy DIR                     SIGTERM pgkeel, start it again (same config)
#   tools/rehearsal.sh status DIR                                 SHOW ROUTES and SHOW NODES on the console
#   tools/rehearsal.sh start-proxy DIR NAME                       (--instances) start instance NAME again
#
# `up` writes DIR/rehearsal.env (shell-sourceable; `pgkeel-drill --env DIR/rehearsal.env` reads it):
#   PGKEEL_CONNINFO          libpq conninfo through pgkeel (user app, database app)
#   PGKEEL_CONSOLE_CONNINFO  the console (user pgkeel)
#   PGKEEL_PORT, PGKEEL_CONSOLE_PORT, PGKEEL_STATUS_PORT
#   PGKEEL_CONFIG, PGKEEL_LOG, PGKEEL_PID_FILE
#   PGKEEL_CLUSTER_ENV       the cluster's cluster.env (node ports, data folders, postmaster pids)
#   PGKEEL_NODE_CONNINFO     how the drill logs in to a node directly (host and port added)
#   PGKEEL_RESTART_COMMAND   what the drill's restart-proxy fault runs
#   PGKEEL_START_COMMAND     how the drill's soak starts a killed node again (the node's name appended)
#
# pgkeel runs with rejoin = "auto": a node that returns after a failover is rewound and rejoined
# by tools/rejoin.sh, so the cluster is whole again by itself (the soak relies on it).
#   PGKEEL_SYNC              1 for a synchronous standby, 0 otherwise
#
# --netns puts every node in a network namespace of its own (tools/cluster.sh up --netns), so that
# the drill's `partition` fault can cut the primary off: pgkeel, the drill and the other nodes
# reach the nodes at their namespace addresses (DB<n>_HOST in the cluster's cluster.env).
#
# --instances N (2..9): N pgkeel instances pk1..pkN sharing a 3-member etcd (tools/etcd.sh, in
# DIR/etcd) through [store], each with its own ports, config DIR/pgkeel-pkI.toml, log and pid file;
# the env adds PGKEEL_INSTANCES (the drill's --instance specs), PGKEEL_PROXY_START_COMMAND and
# ETCD_ENDPOINTS, for the drill's kill-proxy (PGKEEL_CONNINFO and the console are pk1's). The
# instances run on the host, not in namespaces of their own, so partition-proxy is not available.
#
# Environment: PGKEEL_BIN (default <repo>/build/pgkeel), PGKEEL_PROBE_INTERVAL (default 250ms).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

kRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRoot
say() { printf 'rehearsal.sh: %s\n' "$*"; }
die() {
  printf 'rehearsal.sh: error: %s\n' "$*" >&2
  exit 1
}

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

# GET /live on the status port: true when pgkeel answers 200.
live() {
  local port=$1
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'GET /live HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 || exit 1
    [[ "$line" == *" 200 "* ]]
  ) 2>/dev/null
}

start_proxy() {  # DIR [INSTANCE]: starts pgkeel from DIR/pgkeel[-INSTANCE].toml and waits for /live
  local dir=$1 name=${2:+-$2} bin=${PGKEEL_BIN:-$kRoot/build/pgkeel} pid status_port
  # shellcheck disable=SC1091
  source "$dir/rehearsal.env"
  [[ -x "$bin" ]] || die "no pgkeel binary at $bin (build it, or set PGKEEL_BIN)"
  status_port=$(sed -n '/^\[status\]/,/^port/s/^port = //p' "$dir/pgkeel$name.toml")
  setsid "$bin" -c "$dir/pgkeel$name.toml" >>"$dir/pgkeel$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/pgkeel$name.pid"
  for _ in $(seq 1 100); do
    live "$status_port" && { say "pgkeel${2:+ $2} $pid is live"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$dir/pgkeel$name.log" >&2 || true
  die "pgkeel did not come up (log: $dir/pgkeel$name.log)"
}

takeover_proxy() {  # DIR [INSTANCE]: a new pgkeel takes over from the running one; waits for the old to exit
  local dir=$1 name=${2:+-$2} bin=${PGKEEL_BIN:-$kRoot/build/pgkeel} old pid status_port
  old=$(cat "$dir/pgkeel$name.pid")
  status_port=$(sed -n '/^\[status\]/,/^port/s/^port = //p' "$dir/pgkeel$name.toml")
  setsid "$bin" --takeover -c "$dir/pgkeel$name.toml" >>"$dir/pgkeel$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/pgkeel$name.pid"
  # The old process hands over, drains its sessions (shutdown_timeout at most) and exits.
  for _ in $(seq 1 400); do
    [[ "$(awk '{print $3}' "/proc/$old/stat" 2>/dev/null)" =~ ^(|Z)$ ]] && break
    kill -0 "$pid" 2>/dev/null || die "the new pgkeel exited (log: $dir/pgkeel$name.log)"
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && live "$status_port" || die "the new pgkeel does not serve (log: $dir/pgkeel$name.log)"
  [[ "$(awk '{print $3}' "/proc/$old/stat" 2>/dev/null)" =~ ^(|Z)$ ]] || die "the old pgkeel $old did not exit"
  say "pgkeel${2:+ $2} $pid took over from $old"
}

stop_proxy() {  # DIR [INSTANCE]: SIGTERM, then SIGKILL after 10 s; only the pid we started
  local dir=$1 name=${2:+-$2} pid
  [[ -f "$dir/pgkeel$name.pid" ]] || return 0
  pid=$(cat "$dir/pgkeel$name.pid")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/pgkeel$name.toml"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pgkeel$name.pid"
}

write_config() {  # DIR SYNC PORT CONSOLE_PORT STATUS_PORT [INSTANCE ETCD_ENDPOINTS]; nodes from the cluster's env
  local dir=$1 sync=$2 port=$3 console_port=$4 status_port=$5 name=${6:-} endpoints=${7:-} n u h e
  local suffix=${name:+-$name}
  # shellcheck disable=SC1091
  source "$dir/cluster/cluster.env"
  {
    cat <<TOML
# written by tools/rehearsal.sh
[general]
workers = 0
log_level = "info"
users_file = "$dir/cluster/users.txt"
state_file = "$dir/pgkeel$suffix.state"
shutdown_timeout = "5s"

[health]
user = "pgkeel"
password = "pgkeel-pass"
probe_interval = "${PGKEEL_PROBE_INTERVAL:-250ms}"
probe_timeout = "500ms"

[failover]
synchronous_mode = "$( ((sync)) && echo on || echo off)"
replication_password = "replicator-pass"
hold_timeout = "15s"
switchover_drain_timeout = "2s"
stop_command = "$kRoot/tools/stop-node.sh $dir/cluster"
rejoin_command = "$kRoot/tools/rejoin.sh $dir/cluster"
rejoin = "auto"

[console]
port = $console_port
admin_users = ["pgkeel"]

[status]
port = $status_port

[cluster]
initial_primary = "db1"

[[listener]]
name = "rw"
host = "127.0.0.1"
port = $port
intent = "read-write"

[databases]
"*" = {}
TOML
    if [[ -n "$name" ]]; then
      e=""
      for u in ${endpoints//,/ }; do e+="${e:+, }\"$u\""; done
      printf '\n[store]\nendpoints = [%s]\nprefix = "/pgkeel/rehearsal"\nname = "%s"\nlease_ttl = "3s"\n' "$e" "$name"
    fi
    for n in $NODES; do
      u=$(printf '%s' "$n" | tr '[:lower:]' '[:upper:]')
      h=${u}_HOST
      u=${u}_PORT
      printf '\n[[node]]\nname = "%s"\nhost = "%s"\nport = %s\n' "$n" "${!h:-127.0.0.1}" "${!u}"
    done
  } >"$dir/pgkeel$suffix.toml"
}

cmd=${1:-}
[[ -n "$cmd" && -n "${2:-}" ]] || usage
dir=$(abs_dir "$2")
shift 2

case "$cmd" in
  up)
    standbys=1
    sync=1
    instances=0
    netns=()
    while (($#)); do
      case "$1" in
        --standbys) standbys=${2:?--standbys needs a number}; shift 2 ;;
        --sync) sync=1; shift ;;
        --async) sync=0; shift ;;
        --netns) netns=(--netns); shift ;;
        --instances) instances=${2:?--instances needs a number}; shift 2 ;;
        *) usage ;;
      esac
    done
    [[ "$standbys" =~ ^[1-9]$ ]] || die "--standbys wants 1..9"
    [[ "$instances" == 0 || "$instances" =~ ^[2-9]$ ]] || die "--instances wants 2..9"
    [[ -f "$dir/rehearsal.env" ]] && die "$dir already holds a rehearsal: tools/rehearsal.sh down $dir first"
    "$kRoot/tools/cluster.sh" up "$dir/cluster" --standbys "$standbys" "$( ((sync)) && echo --sync || echo --async)" \
      "${netns[@]+"${netns[@]}"}"
    read -r port console_port status_port < <("$kRoot/tools/free-ports.sh" 3)
    if ((instances)); then
      "$kRoot/tools/etcd.sh" up "$dir/etcd" >/dev/null
      etcd_endpoints=$(sed -n 's/^ETCD_ENDPOINTS=//p' "$dir/etcd/etcd.env")
      specs=""
      for ((i = 1; i <= instances; i++)); do
        if ((i > 1)); then read -r port console_port status_port < <("$kRoot/tools/free-ports.sh" 3); fi
        write_config "$dir" "$sync" "$port" "$console_port" "$status_port" "pk$i" "$etcd_endpoints"
        specs+="${specs:+ }pk$i=127.0.0.1:$port,console=$console_port,pidfile=$dir/pgkeel-pk$i.pid"
        ((i > 1)) || { first_port=$port; first_console=$console_port; first_status=$status_port; }
      done
      port=$first_port console_port=$first_console status_port=$first_status
    else
      write_config "$dir" "$sync" "$port" "$console_port" "$status_port"
    fi
    cat >"$dir/rehearsal.env" <<ENV
# written by tools/rehearsal.sh up; shell-sourceable, and read by pgkeel-drill --env
PGKEEL_CONNINFO="host=127.0.0.1 port=$port user=app password=app-pass dbname=app"
PGKEEL_CONSOLE_CONNINFO="host=127.0.0.1 port=$console_port user=pgkeel password=pgkeel-pass dbname=pgkeel"
PGKEEL_PORT=$port
PGKEEL_CONSOLE_PORT=$console_port
PGKEEL_STATUS_PORT=$status_port
PGKEEL_CONFIG=$dir/pgkeel.toml
PGKEEL_LOG=$dir/pgkeel.log
PGKEEL_PID_FILE=$dir/pgkeel.pid
PGKEEL_CLUSTER_ENV=$dir/cluster/cluster.env
PGKEEL_NODE_CONNINFO="user=pgkeel password=pgkeel-pass dbname=postgres"
PGKEEL_RESTART_COMMAND="$kRoot/tools/rehearsal.sh restart-proxy $dir"
PGKEEL_START_COMMAND="$kRoot/tools/cluster.sh start $dir/cluster"
PGKEEL_SYNC=$sync
ENV
    if ((instances)); then
      cat >>"$dir/rehearsal.env" <<ENV
PGKEEL_INSTANCES="$specs"
PGKEEL_PROXY_START_COMMAND="$kRoot/tools/rehearsal.sh start-proxy $dir"
ETCD_ENDPOINTS=$etcd_endpoints
ENV
      for ((i = 1; i <= instances; i++)); do
        "${PGKEEL_BIN:-$kRoot/build/pgkeel}" --check-config -c "$dir/pgkeel-pk$i.toml"
        start_proxy "$dir" "pk$i"
      done
    else
      "${PGKEEL_BIN:-$kRoot/build/pgkeel}" --check-config -c "$dir/pgkeel.toml"
      start_proxy "$dir"
    fi
    say "up: $standbys standby(s), $( ((sync)) && echo synchronous || echo asynchronous); env: $dir/rehearsal.env"
    say "drill: build/pgkeel-drill --env $dir/rehearsal.env --fault kill@5s --out $dir"
    ;;
  down)
    keep=0
    [[ "${1:-}" == "--keep" ]] && keep=1
    stop_proxy "$dir"
    for f in "$dir"/pgkeel-pk*.toml; do
      [[ -f "$f" ]] || continue
      f=${f##*/pgkeel-}
      stop_proxy "$dir" "${f%.toml}"
      ((keep)) || rm -f "$dir/pgkeel-${f%.toml}".{toml,state,log}
    done
    if [[ -f "$dir/etcd/etcd.env" ]]; then
      if ((keep)); then "$kRoot/tools/etcd.sh" down "$dir/etcd"; else "$kRoot/tools/etcd.sh" down "$dir/etcd" --rm; rmdir "$dir/etcd" 2>/dev/null || true; fi
    fi
    if [[ -f "$dir/cluster/cluster.env" ]]; then
      if ((keep)); then "$kRoot/tools/cluster.sh" down "$dir/cluster"; else "$kRoot/tools/cluster.sh" down "$dir/cluster" --rm; fi
    fi
    if ((!keep)); then
      rm -f "$dir/rehearsal.env" "$dir/pgkeel.toml" "$dir/pgkeel.state" "$dir/pgkeel.log"
      rmdir "$dir" 2>/dev/null || true
    fi
    say "down"
    ;;
  start-proxy)
    [[ -f "$dir/rehearsal.env" ]] || die "no rehearsal in $dir"
    name=${1:?start-proxy needs an instance name}
    [[ -f "$dir/pgkeel-$name.toml" ]] || die "no instance $name in $dir"
    # The drill kills an instance and calls this: a pid file naming a dead process is ours.
    # (a killed process can linger as a zombie until its parent reaps it: not running)
    pid=$(cat "$dir/pgkeel-$name.pid" 2>/dev/null || true)
    if [[ -n "$pid" && -r "/proc/$pid/stat" ]] && ! sed 's/.*) //' "/proc/$pid/stat" | grep -q '^[ZX]'; then
      die "instance $name is running"
    fi
    start_proxy "$dir" "$name"
    ;;
  restart-proxy)
    [[ -f "$dir/rehearsal.env" ]] || die "no rehearsal in $dir"
    takeover_proxy "$dir"
    ;;
  cold-restart-proxy)
    [[ -f "$dir/rehearsal.env" ]] || die "no rehearsal in $dir"
    stop_proxy "$dir"
    start_proxy "$dir"
    ;;
  status)
    # shellcheck disable=SC1091
    source "$dir/rehearsal.env"
    for q in "SHOW ROUTES" "SHOW NODES"; do
      PGPASSWORD=pgkeel-pass psql -X -h 127.0.0.1 -p "$PGKEEL_CONSOLE_PORT" -U pgkeel pgkeel -c "$q"
    done
    ;;
  *) usage ;;
esac
