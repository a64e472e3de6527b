#!/usr/bin/env bash
# tools/stop-node.sh — pgkeel's stop_command for a node of a tools/cluster.sh cluster: stops the
# node cleanly (pg_ctl stop -m fast, as the postgres user), then prints the location of its
# shutdown checkpoint from pg_controldata, for pgkeel to confirm the switchover target has it:
#
#   tools/stop-node.sh DIR [NODE]      NODE defaults to $PGKEEL_NODE_NAME (set by pgkeel)
#
# In pgkeel.toml:  [failover] stop_command = "tools/stop-node.sh /path/to/cluster"
#
# stdout carries exactly one line, `checkpoint_lsn=X/Y`, and only after a clean shutdown; the
# progress goes to stderr. Exits non-zero if the node did not stop or did not shut down cleanly
# (a fast shutdown always ends with a checkpoint; anything else would need a rewind).
# Environment: PG_BINDIR, PGKEEL_CLUSTER_TIMEOUT (seconds for pg_ctl, 60).
set -euo pipefail

kRepoRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRepoRoot

say() { printf 'stop-node.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

(($# == 1 || $# == 2)) || {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}
DIR=$1
NODE=${2:-${PGKEEL_NODE_NAME:-}}
[[ -n "$NODE" ]] || die "no NODE given and PGKEEL_NODE_NAME is not set"
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
[[ -f "$DIR/cluster.env" ]] || die "$DIR/cluster.env not found"
# shellcheck disable=SC1091
source "$DIR/cluster.env"
: "${NODES:?}" "${PG_BINDIR:?}"
[[ " $NODES " == *" $NODE "* ]] || die "no node '$NODE' (nodes: $NODES)"
var="$(printf '%s' "$NODE" | tr '[:lower:]' '[:upper:]')_DATA"
DATA=${!var:-}
[[ -n "$DATA" ]] || die "no data directory for $NODE in $DIR/cluster.env"

if ((EUID == 0)); then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
cd /  # runuser keeps the working directory; postgres may not be allowed into ours

say "stopping $NODE (fast)"
"$kRepoRoot/tools/cluster.sh" stop "$DIR" "$NODE" fast >&2 || die "could not stop $NODE"

control=$(LC_ALL=C as_pg "$PG_BINDIR/pg_controldata" "$DATA") || die "pg_controldata $DATA failed"
state=$(sed -n 's/^Database cluster state:[[:space:]]*//p' <<<"$control")
lsn=$(sed -n 's/^Latest checkpoint location:[[:space:]]*//p' <<<"$control")
[[ "$state" == "shut down" ]] || die "$NODE is '$state', not cleanly shut down"
[[ "$lsn" =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || die "no checkpoint location in pg_controldata's output"
say "$NODE shut down cleanly; shutdown checkpoint at $lsn"
printf 'checkpoint_lsn=%s\n' "$lsn"
