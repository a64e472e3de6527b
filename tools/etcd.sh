#!/usr/bin/env bash
# tools/etcd.sh — a throwaway etcd 3.4 cluster on 127.0.0.1 for the [store] tests: N members
# (default 3) in one folder, each on client and peer ports the OS picked. Only the processes this
# script started are ever signalled (their pids are in DIR/etcd.env, checked against their
# command line before a signal).
#
#   tools/etcd.sh up DIR [--members N] [--host ADDR]
#   tools/etcd.sh down DIR [--rm]
#   tools/etcd.sh stop DIR MEMBER        SIGTERM member eN (1-based) and wait for it to exit
#   tools/etcd.sh kill DIR MEMBER        SIGKILL member eN
#   tools/etcd.sh start DIR MEMBER       start a stopped member again (same ports, same data)
#   tools/etcd.sh status DIR             one line per member: name, client URL, running or not
#
# --host: clients reach the members on ADDR, a local address other than loopback (e.g. the bridge
# of tools/cluster.sh up --netns, so that a pgkeel in a network namespace reaches etcd, and a
# firewall rule can cut it off); peers still talk on 127.0.0.1.
#
# Writes DIR/etcd.env (shell-sourceable): ETCD_ENDPOINTS (comma-separated client URLs), ETCD_MEMBERS,
# ETCD_HOST, and E<n>_CLIENT_PORT/_PEER_PORT/_DATA/_LOG/_PID/_URL. Needs the etcd and etcdctl binaries
# (Debian: etcd-server, etcd-client; tools/install-deps.sh). Environment: ETCD_BIN, ETCDCTL_BIN,
# PGKEEL_ETCD_TIMEOUT (seconds to wait for a healthy cluster, default 30).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
etcd_bin=${ETCD_BIN:-$(command -v etcd || true)}
etcdctl_bin=${ETCDCTL_BIN:-$(command -v etcdctl || true)}
timeout_s=${PGKEEL_ETCD_TIMEOUT:-30}

die() { echo "etcd.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '/^set -euo/d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
shift 2

# The pid in E<n>_PID, if it is still our etcd for this folder.
member_pid() {
  local n=$1 pidvar="E${1}_PID" datavar="E${1}_DATA" pid
  pid=${!pidvar:-}
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--data-dir ${!datavar} " || return 1
  echo "$pid"
}

start_member() {
  local n=$1 cluster=$2 state=$3
  local cport="E${n}_CLIENT_PORT" pport="E${n}_PEER_PORT" data="E${n}_DATA" log="E${n}_LOG"
  # setsid: its own session, so a terminal's signals do not reach it and it outlives this script.
  setsid "$etcd_bin" --name "e$n" --data-dir "${!data}" \
    --listen-client-urls "http://${ETCD_HOST:-127.0.0.1}:${!cport}" --advertise-client-urls "http://${ETCD_HOST:-127.0.0.1}:${!cport}" \
    --listen-peer-urls "http://127.0.0.1:${!pport}" --initial-advertise-peer-urls "http://127.0.0.1:${!pport}" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" --initial-cluster-token "pgkeel-$$" \
    --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-outputs "${!log}" \
    </dev/null >>"${!log}.out" 2>&1 &
  local pid=$!
  sed -i "/^E${n}_PID=/d" "$dir/etcd.env"
  echo "E${n}_PID=$pid" >>"$dir/etcd.env"
  eval "E${n}_PID=$pid"
}

wait_healthy() {
  local endpoints=$1 deadline=$((SECONDS + timeout_s))
  until ETCDCTL_API=3 "$etcdctl_bin" --endpoints "$endpoints" --dial-timeout 1s --command-timeout 2s \
      endpoint health >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

load_env() {
  [[ -r "$dir/etcd.env" ]] || die "$dir/etcd.env: no cluster here"
  # shellcheck disable=SC1091
  source "$dir/etcd.env"
}

case "$cmd" in
  up)
    members=3
    host=127.0.0.1
    while [[ $# -gt 0 ]]; do
      case "$1" in
        --members) members=${2:?}; shift 2 ;;
        --host) host=${2:?}; shift 2 ;;
        *) usage ;;
      esac
    done
    [[ "$host" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--host wants an IPv4 address, got '$host'"
    [[ -x "$etcd_bin" && -x "$etcdctl_bin" ]] || die "etcd and etcdctl are needed (apt-get install etcd-server etcd-client)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ ! -e "$dir/etcd.env" ]] || die "$dir already holds a cluster (tools/etcd.sh down $dir first)"
    read -r -a ports <<<"$("$here/free-ports.sh" $((members * 2)))"
    {
      echo "ETCD_MEMBERS=$members"
      echo "ETCD_HOST=$host"
      for ((n = 1; n <= members; n++)); do
        echo "E${n}_CLIENT_PORT=${ports[$(((n - 1) * 2))]}"
        echo "E${n}_PEER_PORT=${ports[$(((n - 1) * 2 + 1))]}"
        echo "E${n}_DATA=$dir/e$n"
        echo "E${n}_LOG=$dir/e$n.log"
        echo "E${n}_URL=http://$host:${ports[$(((n - 1) * 2))]}"
      done
    } >"$dir/etcd.env"
    source "$dir/etcd.env"
    cluster=""
    endpoints=""
    for ((n = 1; n <= members; n++)); do
      pp="E${n}_PEER_PORT"
      url="E${n}_URL"
      cluster+="${cluster:+,}e$n=http://127.0.0.1:${!pp}"
      endpoints+="${endpoints:+,}${!url}"
    done
    echo "ETCD_ENDPOINTS=$endpoints" >>"$dir/etcd.env"
    echo "ETCD_CLUSTER=$cluster" >>"$dir/etcd.env"
    for ((n = 1; n <= members; n++)); do
      start_member "$n" "$cluster" new
    done
    if ! wait_healthy "$endpoints"; then
      echo "etcd.sh: the cluster did not become healthy within ${timeout_s}s; logs:" >&2
      for ((n = 1; n <= members; n++)); do tail -n 20 "$dir/e$n.log" "$dir/e$n.log.out" >&2 || true; done
      "$0" down "$dir" >/dev/null 2>&1 || true
      exit 1
    fi
    echo "$endpoints"
    ;;
  down)
    load_env
    for ((n = 1; n <= ETCD_MEMBERS; n++)); do
      if pid=$(member_pid "$n"); then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    for ((n = 1; n <= ETCD_MEMBERS; n++)); do
      while pid=$(member_pid "$n"); do sleep 0.05; done
    done
    if [[ "${1:-}" == "--rm" ]]; then
      for ((n = 1; n <= ETCD_MEMBERS; n++)); do
        d="E${n}_DATA"
        rm -rf "${!d}" "$dir/e$n.log" "$dir/e$n.log.out"
      done
      rm -f "$dir/etcd.env"
    fi
    ;;
  stop | kill)
    load_env
    n=${1:?member number}
    [[ "$n" -ge 1 && "$n" -le "$ETCD_MEMBERS" ]] || die "no member $n"
    if pid=$(member_pid "$n"); then
      kill "-$([[ $cmd == stop ]] && echo TERM || echo KILL)" "$pid"
      deadline=$((SECONDS + timeout_s))
      while member_pid "$n" >/dev/null; do
        ((SECONDS < deadline)) || die "member e$n (pid $pid) did not exit"
        sleep 0.05
      done
    fi
    ;;
  start)
    load_env
    n=${1:?member number}
    [[ "$n" -ge 1 && "$n" -le "$ETCD_MEMBERS" ]] || die "no member $n"
    member_pid "$n" >/dev/null && die "member e$n is running"
    start_member "$n" "$ETCD_CLUSTER" existing
    ;;
  status)
    load_env
    for ((n = 1; n <= ETCD_MEMBERS; n++)); do
      url="E${n}_URL"
      if member_pid "$n" >/dev/null; then state=running; else state=stopped; fi
      echo "e$n ${!url} $state"
    done
    ;;
  *) usage ;;
esac
