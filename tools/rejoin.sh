#!/usr/bin/env bash
# tools/rejoin.sh — turns an old primary of a tools/cluster.sh cluster into a streaming standby
# of the new one, as after a failover: stop it (fast) if it runs, pg_rewind it onto the new
# primary's timeline, configure it as cluster.sh configures its standbys, start it and wait until
# the new primary shows it streaming. If rewinding or starting fails, it takes a fresh copy with
# pg_basebackup instead.
#
#   tools/rejoin.sh DIR NODE NEW_PRIMARY     e.g. after promoting db2: tools/rejoin.sh DIR db1 db2
#   tools/rejoin.sh --no-rewind DIR NODE NEW_PRIMARY
#   tools/rejoin.sh DIR                      as pgkeel's rejoin_command (below)
#
# --no-rewind is for after a clean switchover (pgkeel's rejoin_command): the old primary was shut
# down cleanly and the new one received all of its WAL before its promotion, so it can follow
# the new timeline as it is. This mode checks that (`pg_rewind --dry-run` must say "no rewind
# required"), never rewinds and never takes a fresh copy: it fails instead, leaving the node
# stopped and untouched. NODE and NEW_PRIMARY default to $PGKEEL_NODE_NAME and
# $PGKEEL_PRIMARY_NAME, which pgkeel sets for rejoin_command. As rejoin_command without
# --no-rewind, it follows $PGKEEL_REJOIN_REASON: after a switchover ("switchover") it behaves as
# --no-rewind; for a node that returned after a failover ("returned-primary", "old-timeline") it
# rewinds (or takes a fresh copy), which rejoin = "auto" in pgkeel's [failover] asks for.
#
# Standby settings, as cluster.sh writes them: standby.signal; in postgresql.auto.conf
# primary_conninfo (TCP, replicator/replicator-pass, application_name=NODE) and
# primary_slot_name = NODE, a physical slot made on NEW_PRIMARY if missing. pg_rewind and
# pg_basebackup copy the source's configuration files, so the node's own pgkeel-node.conf (its
# port and name) and postgresql.auto.conf are saved first and put back, less the settings of
# its days as primary (synchronous_standby_names) and as a standby (primary_conninfo, slot).
#
# Prints each step; exits non-zero with the tails of the logs on failure. The rejoin log is
# DIR/NODE.rejoin.log. Environment: PG_BINDIR, PGKEEL_CLUSTER_TIMEOUT (seconds per wait, 60).
set -euo pipefail

readonly kTimeout=${PGKEEL_CLUSTER_TIMEOUT:-60}
kRepoRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRepoRoot

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
  PGSSLMODE PGTARGETSESSIONATTRS PGAPPNAME PGCONNECT_TIMEOUT PGDATA

say() { printf 'rejoin.sh: %s\n' "$*"; }
warn() { printf 'rejoin.sh: %s\n' "$*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

kNoRewind=0
if [[ "${1:-}" == --no-rewind ]]; then
  kNoRewind=1
  shift
fi
if [[ "${PGKEEL_REJOIN_REASON:-}" == switchover ]]; then
  kNoRewind=1
fi
readonly kNoRewind
(($# == 3 || $# == 1)) || usage
DIR=$1
NODE=${2:-${PGKEEL_NODE_NAME:-}}
NEW=${3:-${PGKEEL_PRIMARY_NAME:-}}
[[ -n "$NODE" && -n "$NEW" ]] || { warn "error: NODE and NEW_PRIMARY needed (or PGKEEL_NODE_NAME, PGKEEL_PRIMARY_NAME)"; exit 2; }
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
[[ -f "$DIR/cluster.env" ]] || { warn "error: $DIR/cluster.env not found"; exit 2; }
# shellcheck disable=SC1091
source "$DIR/cluster.env"
: "${NODES:?}" "${SOCKDIR:?}" "${PG_BINDIR:?}" "${PGKEEL_CLUSTER_DIR:?}"
DIR=$PGKEEL_CLUSTER_DIR
[[ " $NODES " == *" $NODE "* ]] || { warn "error: no node '$NODE' (nodes: $NODES)"; exit 2; }
[[ " $NODES " == *" $NEW "* ]] || { warn "error: no node '$NEW' (nodes: $NODES)"; exit 2; }
[[ "$NODE" != "$NEW" ]] || { warn "error: NODE and NEW_PRIMARY are the same"; exit 2; }

upper() { printf '%s' "$1" | tr '[:lower:]' '[:upper:]'; }
node_var() { local v; v="$(upper "$1")_$2"; printf '%s' "${!v:-}"; }

DATA=$(node_var "$NODE" DATA)
NODE_LOG=$(node_var "$NODE" LOG)
NODE_PORT=$(node_var "$NODE" PORT)
NEW_PORT=$(node_var "$NEW" PORT)
NEW_HOST=$(node_var "$NEW" HOST)  # its address on the cluster's network (cluster.sh up --netns)
NEW_HOST=${NEW_HOST:-127.0.0.1}
REJOIN_LOG="$DIR/$NODE.rejoin.log"
SAVED="$DIR/.$NODE.rejoin-saved"
ASIDE="$DATA.pre-rejoin"

if ((EUID == 0)); then
  as_pg() { runuser -u postgres -- "$@"; }
  own_pg() { chown postgres: "$@"; }
else
  as_pg() { "$@"; }
  own_pg() { :; }
fi
cd /  # runuser keeps the working directory; postgres may not be allowed into ours

now() { printf '%s' "${EPOCHREALTIME/./}"; }
kStart=$(now)
readonly kStart
elapsed() {
  local us=$(($(now) - kStart))
  printf '%d.%02ds' $((us / 1000000)) $((us % 1000000 / 10000))
}
deadline_in() { printf '%s' $(($(now) + $1 * 1000000)); }
past() { (($(now) > $1)); }

psql_at() {  # PORT [psql args]: the superuser over the Unix socket
  local port=$1
  shift
  PGCONNECT_TIMEOUT=5 "$PG_BINDIR/psql" -X -h "$SOCKDIR" -p "$port" -U postgres -d postgres "$@"
}

fail() {
  warn "error: $*"
  local f
  for f in "$REJOIN_LOG" "$NODE_LOG"; do
    [[ -f "$f" ]] || continue
    warn "--- last lines of $f"
    tail -n 25 "$f" >&2 || true
  done
  [[ -d "$ASIDE" ]] && warn "the node's previous data directory is kept in $ASIDE"
  exit 1
}

# Processes whose working directory is the data directory: a postmaster and its children, or
# the orphaned children of a postmaster that was killed, which still hold its shared memory.
pids_in_datadir() {
  local real p
  real=$(readlink -f "$DATA")
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$real" ]] && printf '%s ' "${p#/proc/}"
  done
  return 0
}

stop_node() {  # MODE
  if as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    say "$NODE is running: stopping it ($1)"
    as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -m "$1" -w -t "$kTimeout" stop >>"$REJOIN_LOG" 2>&1 ||
      fail "could not stop $NODE"
  fi
  local deadline left
  deadline=$(deadline_in "$kTimeout")
  left=$(pids_in_datadir)
  [[ -z "$left" ]] || say "waiting for processes of a dead postmaster to exit: $left"
  while [[ -n "$left" ]]; do
    past "$deadline" && fail "processes still use $DATA after ${kTimeout}s: $left"
    sleep 0.05
    left=$(pids_in_datadir)
  done
}

# The node's own settings, which pg_rewind and pg_basebackup overwrite with the source's.
save_node_conf() {
  rm -rf "$SAVED"
  mkdir -p "$SAVED"
  cp -p "$DATA/pgkeel-node.conf" "$SAVED/" || fail "no $DATA/pgkeel-node.conf: not a cluster.sh node?"
  if [[ -f "$DATA/postgresql.auto.conf" ]]; then cp -p "$DATA/postgresql.auto.conf" "$SAVED/"; fi
}

# Puts the node's settings back and makes it a standby of NEW, as cluster.sh does for its own.
configure_standby() {
  # A standby has no use for synchronous_standby_names, and the old value names the peers of
  # the node's days as primary (now the new primary among them): were it promoted again, its
  # commits would wait for them. cluster.sh writes none for standbys; whoever promotes decides.
  grep -v -E '^[[:space:]]*synchronous_standby_names[[:space:]]*=' "$SAVED/pgkeel-node.conf" \
    >"$DATA/pgkeel-node.conf" || true
  local f
  for f in pgkeel-node.conf postgresql.auto.conf; do
    if grep -q -E '^[[:space:]]*synchronous_standby_names[[:space:]]*=' "$SAVED/$f" 2>/dev/null; then
      say "dropped synchronous_standby_names from $NODE's $f (a standby does not use it)"
    fi
  done
  local auto="$DATA/postgresql.auto.conf"
  {
    if [[ -f "$SAVED/postgresql.auto.conf" ]]; then
      grep -v -E \
        '^[[:space:]]*(primary_conninfo|primary_slot_name|synchronous_standby_names)[[:space:]]*=' \
        "$SAVED/postgresql.auto.conf" || true
    else
      echo "# Do not edit this file manually!"
      echo "# It will be overwritten by the ALTER SYSTEM command."
    fi
    echo "primary_conninfo = 'host=$NEW_HOST port=$NEW_PORT user=replicator password=replicator-pass application_name=$NODE'"
    echo "primary_slot_name = '$NODE'"
  } >"$auto.rejoin"
  mv "$auto.rejoin" "$auto"
  rm -f "$DATA/recovery.signal"
  touch "$DATA/standby.signal"
  own_pg "$DATA/pgkeel-node.conf" "$auto" "$DATA/standby.signal"
  chmod 0600 "$auto"
}

# NEW's current timeline, from its WAL file name (right the moment after a promotion).
new_timeline() {
  psql_at "$NEW_PORT" -Atq -c \
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int" 2>/dev/null || true
}

# Starts the node through cluster.sh (which records its pid in cluster.env) and waits until NEW
# reports it streaming and the node receives NEW's current timeline (a node that streamed once
# on the old timeline has not rejoined). Returns non-zero instead of failing, so the caller can
# fall back.
start_and_await() {
  if ! "$kRepoRoot/tools/cluster.sh" start "$DIR" "$NODE" >>"$REJOIN_LOG" 2>&1; then
    warn "$NODE did not start"
    return 1
  fi
  local deadline got
  deadline=$(deadline_in "$kTimeout")
  while :; do
    got=$(psql_at "$NEW_PORT" -Atq -c "SELECT state FROM pg_stat_replication
      WHERE application_name = '$NODE' AND state = 'streaming'" 2>/dev/null || true)
    [[ "$got" == streaming ]] && break
    if past "$deadline"; then
      warn "$NODE started but is not streaming from $NEW after ${kTimeout}s"
      return 1
    fi
    sleep 0.05
  done
  got=$(psql_at "$NODE_PORT" -Atq -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)
  if [[ "$got" != t ]]; then
    warn "$NODE streams but pg_is_in_recovery() says '$got'"
    return 1
  fi
  local want
  want=$(new_timeline)
  while :; do
    got=$(psql_at "$NODE_PORT" -Atq -c "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'" \
      2>/dev/null || true)
    [[ -n "$want" && "$got" == "$want" ]] && break
    if past "$deadline"; then
      warn "$NODE streams from $NEW but on timeline '${got:-?}', not $NEW's ${want:-?}"
      return 1
    fi
    sleep 0.05
  done
}

rewind() {
  # pg_rewind reads the source's timeline from its control file, which names the new timeline
  # only after the promotion's checkpoint: without this one it may see the old timeline, find
  # "no rewind required", and leave a node that cannot follow.
  psql_at "$NEW_PORT" -Atq -c "CHECKPOINT" >>"$REJOIN_LOG" 2>&1 || { warn "CHECKPOINT on $NEW failed"; return 1; }
  say "pg_rewind $NODE onto $NEW (source: the superuser over $SOCKDIR)"
  if ! as_pg "$PG_BINDIR/pg_rewind" --target-pgdata="$DATA" \
    --source-server="host=$SOCKDIR port=$NEW_PORT user=postgres dbname=postgres connect_timeout=5" \
    >>"$REJOIN_LOG" 2>&1; then
    local why
    why=$(grep -m 1 -E 'error:|fatal:' "$REJOIN_LOG" || tail -n 1 "$REJOIN_LOG")
    warn "pg_rewind failed: $why"
    return 1
  fi
  local what
  what=$(grep -E 'servers diverged|rewinding from|no rewind required|Done!' "$REJOIN_LOG" |
    sed 's/^pg_rewind: //' | paste -sd ';' - || true)
  say "pg_rewind: ${what:-done}"
}

# After a clean switchover: is the node's WAL a prefix of the new primary's history? A checkpoint
# on the new primary first, so its control file names its new timeline (pg_rewind reads it).
check_no_rewind() {
  psql_at "$NEW_PORT" -Atq -c "CHECKPOINT" >>"$REJOIN_LOG" 2>&1 || fail "CHECKPOINT on $NEW failed"
  local state
  state=$(LC_ALL=C as_pg "$PG_BINDIR/pg_controldata" "$DATA" | sed -n 's/^Database cluster state:[[:space:]]*//p')
  [[ "$state" == "shut down" ]] || fail "$NODE is '$state', not cleanly shut down: it may need a rewind (run without --no-rewind)"
  local out
  out=$(as_pg "$PG_BINDIR/pg_rewind" --dry-run --target-pgdata="$DATA" \
    --source-server="host=$SOCKDIR port=$NEW_PORT user=postgres dbname=postgres connect_timeout=5" 2>&1) ||
    { printf '%s\n' "$out" >>"$REJOIN_LOG"; fail "pg_rewind --dry-run failed"; }
  printf '%s\n' "$out" >>"$REJOIN_LOG"
  grep -q 'no rewind required' <<<"$out" ||
    fail "$NODE has WAL that $NEW lacks: a rewind would be needed (run without --no-rewind): $(grep -m 1 'diverged' <<<"$out" || true)"
  say "pg_rewind --dry-run: no rewind required"
}

basebackup() {
  say "fresh copy: pg_basebackup from $NEW into $DATA (the old one moves to $ASIDE)"
  stop_node immediate
  rm -rf "$ASIDE"
  mv "$DATA" "$ASIDE"
  as_pg env PGPASSWORD=replicator-pass "$PG_BINDIR/pg_basebackup" -D "$DATA" -X stream -c fast \
    -d "host=$NEW_HOST port=$NEW_PORT user=replicator application_name=$NODE-basebackup" \
    >>"$REJOIN_LOG" 2>&1 || fail "pg_basebackup failed"
  chmod 0700 "$DATA"
}

# --- main ---------------------------------------------------------------------------------------

: >"$REJOIN_LOG"
own_pg "$REJOIN_LOG"
role=$(psql_at "$NEW_PORT" -Atq -c "SELECT pg_is_in_recovery()" 2>>"$REJOIN_LOG") ||
  fail "cannot reach $NEW on port $NEW_PORT"
if [[ "$role" != f ]]; then
  warn "error: $NEW is in recovery: it is not a primary (promote it first)"
  exit 1
fi

stop_node fast
save_node_conf

slot=$(psql_at "$NEW_PORT" -Atq -v ON_ERROR_STOP=1 -c \
  "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$NODE'" 2>>"$REJOIN_LOG") ||
  fail "cannot read the replication slots of $NEW"
if [[ "$slot" == 0 ]]; then
  psql_at "$NEW_PORT" -Atq -v ON_ERROR_STOP=1 \
    -c "SELECT pg_create_physical_replication_slot('$NODE', true)" >/dev/null 2>>"$REJOIN_LOG" ||
    fail "could not create the replication slot $NODE on $NEW"
  slot=created
else
  slot="kept (it exists)"
fi
say "replication slot $NODE on $NEW: $slot"

how=""
if ((kNoRewind)); then
  check_no_rewind
  configure_standby
  start_and_await || fail "$NODE does not stream from $NEW (no rewind was attempted)"
  rm -rf "$SAVED"
  say "$NODE is a standby of $NEW, streaming (no rewind needed, in $(elapsed)); log: $REJOIN_LOG"
  exit 0
fi
if rewind; then
  configure_standby
  if start_and_await; then
    how="pg_rewind"
  else
    warn "falling back to a fresh copy"
  fi
fi
if [[ -z "$how" ]]; then
  basebackup
  configure_standby
  start_and_await || fail "$NODE does not stream from $NEW even after a fresh copy"
  how="pg_basebackup"
  rm -rf "$ASIDE"
fi
rm -rf "$SAVED"
say "$NODE is a standby of $NEW, streaming (by $how, in $(elapsed)); log: $REJOIN_LOG"
