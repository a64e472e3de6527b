#!/usr/bin/env bash
# tools/cluster.sh — a throwaway PostgreSQL streaming-replication cluster on 127.0.0.1 for the
# integration tests, the demo and the benchmarks: primary db1, standbys db2, db3, ... in one
# folder, each on a port the OS picked. Servers run as the `postgres` OS user when we are root.
#
#   tools/cluster.sh up DIR [--standbys N] [--sync|--async] [--max-connections N] [--netns]
#                        [--basebackup]
#   tools/cluster.sh down DIR [--rm]
#   tools/cluster.sh status DIR
#   tools/cluster.sh psql DIR NODE [psql args...]
#   tools/cluster.sh start DIR NODE            start a stopped node again (same port, same log)
#   tools/cluster.sh stop DIR NODE [MODE]      pg_ctl stop; MODE fast (default), immediate, smart
#   tools/cluster.sh promote DIR NODE          pg_ctl promote, waits until it accepts writes
#   tools/cluster.sh partition DIR NODE        (--netns) cut NODE off the network: its link down
#   tools/cluster.sh heal DIR NODE             (--netns) its link up again
#   tools/cluster.sh host DIR NAME             (--netns) one more host on the bridge; prints its address
#
# --netns runs each node's postmaster in a network namespace of its own, pgkeel-cK-NODE, plugged
# by a veth pair into a bridge pkcKbr in this namespace. The cluster takes one /24 of
# ${PGKEEL_NETNS_NET:-10.231}.0.0/16, the first K (1..254) that no other namespace or address on
# this machine uses: the bridge is .1 (how nodes see this namespace), node dbN is .(10+N), and
# every node listens and replicates on that address alone, as hosts on a LAN would. Neighbour
# entries are static, so a cut node is silent: connections to it time out rather than fail
# (no ARP failure turns into "no route to host"). `partition` sets the node's bridge port down
# (both directions drop, replication to and from it included); `heal` sets it up. `down`, and a
# failed `up`, delete the namespaces and the bridge. Needs root (ip netns, from iproute2).
# `host` adds a namespace pgkeel-cK-NAME for something other than a node (a pgkeel instance of a
# test, a client) on the same bridge, the i-th one added at .(100+i), with static neighbours as
# the nodes have; cluster.env then lists it in EXTRA_HOSTS with NAME_ADDR, NAME_NETNS and
# NAME_LINK (NAME in capitals). `down` deletes it with the rest.
#
# `up` copies a prepared, cleanly stopped data directory (roles and databases already created)
# from ${PGKEEL_CACHE:-<repo>/.cache}/pg<major>-template instead of running initdb each time; the
# template is built on first use and rebuilt when the PostgreSQL version or kTemplateRev changes.
# Standbys are cold copies of that same template started with standby.signal: a cleanly shut
# down data directory is a valid base backup, so they share the primary's system identifier and
# start streaming from the template's shutdown checkpoint, faster than pg_basebackup.
#
# --basebackup makes the standbys the way users make theirs, for tests of a cluster that pgkeel
# adopts as it is: each standby is `pg_basebackup -R -X stream -c fast` from the running primary
# (as the postgres user, as replicator over TCP), so what differs from the usual cluster is:
#   - primary_conninfo is what -R writes (host, port, user, password and libpq's defaults): no
#     application_name, and no cluster_name either (PostgreSQL would send it instead), so every
#     standby streams as `walreceiver`;
#   - no replication slot (pg_basebackup's temporary slot ends with the backup; -R names none);
#   - PostgreSQL's default replication timeouts: the template's lowered wal_sender_timeout (2s),
#     wal_receiver_timeout (2s) and wal_receiver_status_interval (1s) are taken out of the
#     primary's postgresql.conf before it starts (so 60s, 60s and 10s, on every node, since the
#     standbys copy that file); nothing else is lowered in either kind of cluster;
#   - the primary has no synchronous_standby_names (--sync is refused).
# Kept: the roles, databases, pg_hba.conf (they come with the copy), listen_addresses, logging,
# checksums, and each node's own pgkeel-node.conf (port, socket folder, max_connections).
#
# Writes DIR/cluster.env (shell-sourceable: PGKEEL_CLUSTER_DIR, PG_BINDIR, SOCKDIR, NODES and
# DB<n>_PORT/_DATA/_PID/_LOG/_HOST; with --netns also NETNS_BRIDGE, NETNS_GATEWAY and
# DB<n>_NETNS/_LINK, the node's namespace and its bridge port) and DIR/users.txt (pgkeel's users
# file, secrets from pg_authid).
#
# Environment: PGKEEL_CACHE (template cache folder), PG_BINDIR (default: pg_config --bindir),
# PGKEEL_CLUSTER_TIMEOUT (seconds for each wait, default 60), PGKEEL_NETNS_NET (--netns: the
# first two octets of the /16 to take a /24 from, default 10.231).
#
# Roles: postgres (superuser, trust on the Unix socket only), pgkeel/pgkeel-pass (superuser over
# TCP: pgkeel's probes, promotion and ALTER SYSTEM), replicator/replicator-pass
# (REPLICATION, scram), app/app-pass (owns database app and its schema public, scram),
# md5user/md5-pass (md5 hash, hba md5), clearuser/clear-pass (scram hash, hba password).
set -euo pipefail

readonly kTemplateRev=2  # bump whenever build_template's output changes
kRepoRoot=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly kRepoRoot
readonly kTimeout=${PGKEEL_CLUSTER_TIMEOUT:-60}  # seconds, for every wait below

# The caller's libpq settings must not leak into our own psql calls.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
  PGSSLMODE PGTARGETSESSIONATTRS PGAPPNAME PGCONNECT_TIMEOUT PGDATA

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

say() { printf 'cluster.sh: %s\n' "$*"; }
warn() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
  warn "error: $*"
  exit 1
}

if [[ -z "${PG_BINDIR:-}" ]]; then
  if command -v pg_config >/dev/null 2>&1; then
    PG_BINDIR=$(pg_config --bindir)
  else
    PG_BINDIR=/usr/lib/postgresql/15/bin
  fi
fi
[[ -x "$PG_BINDIR/postgres" ]] || die "no postgres in PG_BINDIR=$PG_BINDIR"
export PG_BINDIR

# Servers refuse to run as root: everything that touches a data directory goes through as_pg.
if ((EUID == 0)); then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user"
  as_pg() { runuser -u postgres -- "$@"; }
  own_pg() { chown postgres: "$@"; }
else
  as_pg() { "$@"; }
  own_pg() { :; }
fi
readonly kCallerPwd=$PWD
cd /  # runuser keeps the working directory; postgres may not be allowed into ours

abs_path() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s' "$kCallerPwd/$1"; fi; }

# Clock in microseconds, from bash itself: polling loops should not fork to tell the time.
now() { printf '%s' "${EPOCHREALTIME/./}"; }
elapsed_since() {
  local us=$(($(now) - $1))
  printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
}
deadline_in() { printf '%s' $(($(now) + $1 * 1000000)); }
past() { (($(now) > $1)); }

python() {
  if [[ -x /usr/bin/python3 ]]; then /usr/bin/python3 "$@"; else python3 "$@"; fi
}

# N distinct free TCP ports on 127.0.0.1: all bound to port 0 at once, so the OS hands out
# different ones, then released for the servers to take.
pick_ports() { "$kRepoRoot/tools/free-ports.sh" "$1"; }

pg_major() { "$PG_BINDIR/postgres" -V | awk '{ split($3, v, "."); print v[1] }'; }
cache_dir() { printf '%s' "${PGKEEL_CACHE:-$kRepoRoot/.cache}"; }
template_stamp() { printf 'rev=%s %s\n' "$kTemplateRev" "$("$PG_BINDIR/postgres" -V)"; }

# psql as the superuser over a node's Unix socket.
psql_at() {  # SOCKDIR PORT [psql args]
  local sock=$1 port=$2
  shift 2
  PGCONNECT_TIMEOUT=5 "$PG_BINDIR/psql" -X -h "$sock" -p "$port" -U postgres -d postgres "$@"
}

# --- the template -----------------------------------------------------------------------------

write_static_conf() {  # DATA
  cat >>"$1/postgresql.conf" <<'EOF'

# --- pgkeel test cluster (tools/cluster.sh); per-node settings are in pgkeel-node.conf ---
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_sender_timeout = 2s
wal_receiver_timeout = 2s
wal_receiver_status_interval = 1s
password_encryption = 'scram-sha-256'
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d app=%a '
include_if_exists = 'pgkeel-node.conf'
EOF
  cat >"$1/pg_hba.conf" <<'EOF'
# pgkeel test cluster (tools/cluster.sh)
# TYPE  DATABASE     USER        ADDRESS        METHOD
local   all          postgres                   trust
local   all          all                        scram-sha-256
host    replication  replicator  127.0.0.1/32   scram-sha-256
host    all          md5user     127.0.0.1/32   md5
host    all          clearuser   127.0.0.1/32   password
host    all          all         127.0.0.1/32   scram-sha-256
EOF
}

# Under --netns the nodes meet each other and pgkeel on the cluster's /24, not on 127.0.0.1.
allow_subnet() {  # DATA
  local net="$kNetnsNet.$NETNS_K.0/24"
  cat >>"$1/pg_hba.conf" <<EOF
host    replication  replicator  $net  scram-sha-256
host    all          md5user     $net  md5
host    all          clearuser   $net  password
host    all          all         $net  scram-sha-256
EOF
}

readonly kTemplateSql="
SET password_encryption = 'scram-sha-256';
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD 'replicator-pass';
CREATE ROLE pgkeel WITH LOGIN SUPERUSER PASSWORD 'pgkeel-pass';
CREATE ROLE app WITH LOGIN PASSWORD 'app-pass';
CREATE ROLE clearuser WITH LOGIN PASSWORD 'clear-pass';
SET password_encryption = 'md5';
CREATE ROLE md5user WITH LOGIN PASSWORD 'md5-pass';
RESET password_encryption;
CREATE DATABASE app OWNER app;
\\connect app
ALTER SCHEMA public OWNER TO app;
GRANT USAGE, CREATE ON SCHEMA public TO md5user, clearuser;
"

build_template() {  # TEMPLATE_DIR
  local tpl=$1 t0 work port
  t0=$(now)
  say "building the PostgreSQL template in $tpl (once per PostgreSQL version)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/pgkeel-template.XXXXXX")
  chmod 0755 "$work"
  mkdir "$work/sock"
  own_pg "$work" "$work/sock"
  port=$(pick_ports 1)

  local ok=1
  as_pg "$PG_BINDIR/initdb" -D "$work/data" -U postgres -k -E UTF8 --locale=C -A trust -N \
    >"$work/initdb.log" 2>&1 || ok=0
  if ((ok)); then
    write_static_conf "$work/data"
    as_pg "$PG_BINDIR/pg_ctl" -D "$work/data" -l "$work/template.log" -w -t "$kTimeout" \
      -o "-c listen_addresses='' -c unix_socket_directories='$work/sock' -p $port" \
      start >>"$work/initdb.log" 2>&1 || ok=0
  fi
  if ((ok)); then
    printf '%s' "$kTemplateSql" |
      psql_at "$work/sock" "$port" -q -v ON_ERROR_STOP=1 >>"$work/initdb.log" 2>&1 || ok=0
    as_pg "$PG_BINDIR/pg_ctl" -D "$work/data" -m fast -w -t "$kTimeout" stop \
      >>"$work/initdb.log" 2>&1 || ok=0
  fi
  if ((!ok)); then
    tail -n 40 "$work/initdb.log" "$work/template.log" >&2 2>/dev/null || true
    if [[ -f "$work/data/postmaster.pid" ]]; then
      as_pg "$PG_BINDIR/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    die "building the template failed"
  fi
  rm -f "$work/data/postmaster.opts"

  rm -rf "$tpl.new"
  mkdir -p "$tpl.new"
  cp -a "$work/data" "$tpl.new/data"
  template_stamp >"$tpl.new/stamp"
  rm -rf "$tpl"
  mv "$tpl.new" "$tpl"
  rm -rf "$work"
  say "template ready in $(elapsed_since "$t0")s"
}

# Copies the template's data directory to each destination, building the template first if it
# is missing or stale. One lock serialises builders and copiers across processes.
copy_template() {  # DEST...
  local cache tpl lockfd
  cache=$(cache_dir)
  tpl="$cache/pg$(pg_major)-template"
  mkdir -p "$cache"
  exec {lockfd}>"$tpl.lock"
  flock -w "$kTimeout" "$lockfd" || die "timed out waiting for the template lock $tpl.lock"
  if [[ ! -f "$tpl/stamp" || "$(cat "$tpl/stamp")" != "$(template_stamp)" || ! -d "$tpl/data" ]]
  then
    build_template "$tpl"
  fi
  local dest pids=()
  for dest in "$@"; do
    cp -a "$tpl/data" "$dest" &
    pids+=($!)
  done
  local p rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  exec {lockfd}>&-
  ((rc == 0)) || die "copying the template failed"
}

# --- network namespaces (--netns) -------------------------------------------------------------

readonly kNetnsNet=${PGKEEL_NETNS_NET:-10.231}
NETNS_TAG=""  # cK when the cluster's nodes run in namespaces; set by netns_allocate or cluster.env
NETNS_K=0
declare -A HOST=()

netns_name() { printf 'pgkeel-%s-%s' "$NETNS_TAG" "$1"; }
netns_link() { printf 'pk%s-%s' "$NETNS_TAG" "$1"; }  # the node's bridge port, in our namespace
netns_bridge() { printf 'pk%sbr' "$NETNS_TAG"; }
netns_gateway() { printf '%s.%s.1' "$kNetnsNet" "$NETNS_K"; }
netns_host() { printf '%s.%s.%s' "$kNetnsNet" "$NETNS_K" $((10 + ${1#db})); }  # db3 -> .13
netns_mac() { printf '02:70:6b:%02x:%02x:02' "$NETNS_K" "${1#db}"; }
netns_bridge_mac() { printf '02:70:6b:%02x:00:01' "$NETNS_K"; }

# Picks the first /24 that no namespace or address of this machine uses, and builds the bridge
# and one namespace per node while holding a lock, so concurrent `up --netns` never share one.
netns_allocate() {  # NODE...
  ((EUID == 0)) || die "--netns needs root (ip netns)"
  command -v ip >/dev/null 2>&1 || die "--netns needs ip (iproute2)"
  [[ "$kNetnsNet" =~ ^[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "PGKEEL_NETNS_NET wants two octets, e.g. 10.231"
  local lockfd used k
  exec {lockfd}>"${TMPDIR:-/tmp}/pgkeel-netns.lock"
  flock -w "$kTimeout" "$lockfd" || die "timed out waiting for the namespace lock"
  used="$(ip -o -4 addr show) $(ip -o link show) $(ip netns list)"
  for ((k = 1; k <= 254; k++)); do
    [[ "$used" == *"pgkeel-c$k-"* || "$used" == *"inet $kNetnsNet.$k."* || "$used" == *" pkc$k-"* ||
      "$used" == *" pkc${k}br"* ]] && continue
    NETNS_TAG=c$k
    NETNS_K=$k
    break
  done
  [[ -n "$NETNS_TAG" ]] || die "no free /24 left in $kNetnsNet.0.0/16"
  trap 'netns_teardown' EXIT
  netns_create "$@"
  exec {lockfd}>&-
}

netns_create() {  # NODE...
  local br n m ns link
  br=$(netns_bridge)
  ip link add "$br" address "$(netns_bridge_mac)" type bridge
  ip addr add "$(netns_gateway)/24" dev "$br"
  ip link set "$br" up
  for n in "$@"; do
    ns=$(netns_name "$n")
    link=$(netns_link "$n")
    ip netns add "$ns"
    ip link add "$link" type veth peer name "${link}p"
    ip link set "${link}p" netns "$ns"
    ip -n "$ns" link set "${link}p" name eth0 address "$(netns_mac "$n")"
    ip -n "$ns" addr add "$(netns_host "$n")/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip link set "$link" master "$br" up
  done
  # Static neighbours: a cut-off node must not turn into an ARP failure ("no route to host").
  for n in "$@"; do
    ns=$(netns_name "$n")
    ip neigh replace "$(netns_host "$n")" lladdr "$(netns_mac "$n")" dev "$br" nud permanent
    ip -n "$ns" neigh replace "$(netns_gateway)" lladdr "$(netns_bridge_mac)" dev eth0 nud permanent
    for m in "$@"; do
      [[ "$m" == "$n" ]] ||
        ip -n "$ns" neigh replace "$(netns_host "$m")" lladdr "$(netns_mac "$m")" dev eth0 nud permanent
    done
  done
}

# Deletes every veth, namespace and the bridge of this cluster. Safe to run twice. A namespace
# still holding a process (a postmaster not stopped yet) lives on, unnamed and without a link,
# until that process exits.
netns_teardown() {
  [[ -n "$NETNS_TAG" ]] || return 0
  local ns link
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }'); do
    link=${link%@*}
    [[ "$link" == "pk$NETNS_TAG-"* ]] && ip link del "$link" 2>/dev/null
  done
  for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
    [[ "$ns" == "pgkeel-$NETNS_TAG-"* ]] && ip netns del "$ns" 2>/dev/null
  done
  ip link del "$(netns_bridge)" 2>/dev/null || true
}

# A command as the postgres user, inside the node's namespace under --netns.
as_pg_in() {  # NODE COMMAND...
  local n=$1
  shift
  if [[ -n "$NETNS_TAG" ]]; then
    ip netns exec "$(netns_name "$n")" runuser -u postgres -- "$@"
  else
    as_pg "$@"
  fi
}

# --- cluster.env ------------------------------------------------------------------------------

upper() { printf '%s' "$1" | tr '[:lower:]' '[:upper:]'; }

load_env() {  # DIR
  local dir
  dir=$(abs_path "$1")
  [[ -f "$dir/cluster.env" ]] || die "$dir/cluster.env not found (not a cluster made by 'up'?)"
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
}

node_var() {  # NODE FIELD -> value of e.g. DB2_PORT
  local v
  v="$(upper "$1")_$2"
  printf '%s' "${!v:-}"
}

set_env_value() {  # DIR KEY VALUE: rewrite one line of cluster.env in place
  local file="$1/cluster.env"
  sed "s|^$2=.*|$2=$3|" "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}

write_env() {  # DIR; reads SOCKDIR, NODES, PORT_/PID_ associative arrays
  local dir=$1 n u
  {
    echo "# written by tools/cluster.sh; shell-sourceable"
    echo "PGKEEL_CLUSTER_DIR=$dir"
    echo "PG_BINDIR=$PG_BINDIR"
    echo "SOCKDIR=$SOCKDIR"
    echo "NODES=\"${NODE_LIST[*]}\""
    if [[ -n "$NETNS_TAG" ]]; then
      echo "NETNS_TAG=$NETNS_TAG"
      echo "NETNS_K=$NETNS_K"
      echo "NETNS_BRIDGE=$(netns_bridge)"
      echo "NETNS_GATEWAY=$(netns_gateway)"
    fi
    for n in "${NODE_LIST[@]}"; do
      u=$(upper "$n")
      echo "${u}_PORT=${PORT[$n]}"
      echo "${u}_DATA=$dir/$n"
      echo "${u}_PID=${PID[$n]:-0}"
      echo "${u}_LOG=$dir/$n.log"
      echo "${u}_HOST=${HOST[$n]:-127.0.0.1}"
      if [[ -n "$NETNS_TAG" ]]; then
        echo "${u}_NETNS=$(netns_name "$n")"
        echo "${u}_LINK=$(netns_link "$n")"
      fi
    done
  } >"$dir/cluster.env.tmp"
  mv "$dir/cluster.env.tmp" "$dir/cluster.env"
}

postmaster_pid() {  # DATA -> pid from postmaster.pid, or nothing
  if [[ -f "$1/postmaster.pid" ]]; then head -n 1 "$1/postmaster.pid" 2>/dev/null || true; fi
}

# A zombie is not alive: our init may take a moment to reap a postmaster that pg_ctl left.
alive() {
  [[ -n "$1" && "$1" != 0 && -r "/proc/$1/stat" ]] || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat%% *}" != Z ]]
}

# --- up ---------------------------------------------------------------------------------------

declare -A PORT=() PID=()
NODE_LIST=()
BASEBACKUP=0  # up --basebackup
UP_DIR=""

up_failed() {
  local msg=$1 f
  warn "error: $msg"
  for f in "$UP_DIR"/*.log; do
    [[ -f "$f" ]] || continue
    warn "--- last lines of $f"
    tail -n 30 "$f" >&2 || true
  done
  stop_nodes "$UP_DIR" immediate >/dev/null 2>&1 || true
  warn "the folder is kept for inspection; remove it with: $0 down $UP_DIR --rm"
  exit 1
}

write_node_conf() {  # DIR NODE [extra lines]
  local dir=$1 n=$2
  shift 2
  {
    echo "# per-node settings written by tools/cluster.sh"
    echo "port = ${PORT[$n]}"
    echo "unix_socket_directories = '$SOCKDIR'"
    ((BASEBACKUP)) || echo "cluster_name = '$n'"  # a walreceiver names itself after it
    echo "max_connections = $MAX_CONNECTIONS"
    [[ -z "$NETNS_TAG" ]] || echo "listen_addresses = '${HOST[$n]}'"
    local line
    for line in "$@"; do echo "$line"; done
  } >"$dir/$n/pgkeel-node.conf"
  own_pg "$dir/$n/pgkeel-node.conf"
}

# Starts the node's postmaster; await_start waits for it. pg_ctl -w runs in the background: it
# notices a postmaster that dies during start-up, while we poll postmaster.pid more often than
# its 100 ms to learn sooner that the node is ready.
declare -A STARTER=()
launch_node() {  # DIR NODE
  as_pg_in "$2" "$PG_BINDIR/pg_ctl" -D "$1/$2" -l "$1/$2.log" -w -t "$kTimeout" start >/dev/null 2>&1 &
  STARTER[$2]=$!
}

# Waits until every named node accepts connections. A node whose port was taken in the meantime
# gets a new port and another try (twice at most); any other failed start ends `up`.
await_start() {  # DIR NODE...
  local dir=$1
  shift
  local pending=("$@") deadline n status retries
  declare -A tries=()
  deadline=$(deadline_in "$kTimeout")
  while ((${#pending[@]} > 0)); do
    local still=()
    for n in "${pending[@]}"; do
      status=$(sed -n 8p "$dir/$n/postmaster.pid" 2>/dev/null | tr -d ' ' || true)
      if [[ "$status" == ready || "$status" == standby ]]; then
        PID[$n]=$(postmaster_pid "$dir/$n")
        continue
      fi
      if ! kill -0 "${STARTER[$n]}" 2>/dev/null; then
        if wait "${STARTER[$n]}"; then
          PID[$n]=$(postmaster_pid "$dir/$n")  # ready between our look and pg_ctl's
          continue
        fi
        retries=${tries[$n]:-0}
        if ((retries < 2)) && grep -q 'could not bind\|Address already in use' "$dir/$n.log"; then
          tries[$n]=$((retries + 1))
          PORT[$n]=$(pick_ports 1)
          warn "$n: port taken, retrying on ${PORT[$n]}"
          mv "$dir/$n.log" "$dir/$n.log.bind-failure-$retries"
          rewrite_port "$dir" "$n"
          launch_node "$dir" "$n"
        else
          up_failed "$n did not start"
        fi
      fi
      still+=("$n")
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]} == 0)) && break
    past "$deadline" && up_failed "timed out after ${kTimeout}s waiting for ${pending[*]} to start"
    sleep 0.02
  done
}

rewrite_port() {  # DIR NODE
  local f="$1/$2/pgkeel-node.conf"
  sed "s/^port = .*/port = ${PORT[$2]}/" "$f" >"$f.tmp" && cat "$f.tmp" >"$f" && rm -f "$f.tmp"
}

# --basebackup: the template's lowered replication timeouts go, so PostgreSQL's defaults apply.
default_replication_timeouts() {  # DATA
  local conf="$1/postgresql.conf"
  sed -E '/^(wal_sender_timeout|wal_receiver_timeout|wal_receiver_status_interval)[[:space:]]*=/d' \
    "$conf" >"$conf.tmp" && cat "$conf.tmp" >"$conf" && rm -f "$conf.tmp"
}

# --basebackup: a standby as users make one, `pg_basebackup -R` from the running primary. It
# copies the primary's pgkeel-node.conf too, which then gets the standby's own.
basebackup_standby() {  # DIR NODE
  local dir=$1 n=$2
  as_pg env PGPASSWORD=replicator-pass "$PG_BINDIR/pg_basebackup" \
    -D "$dir/$n" -R -X stream -c fast -d "host=${HOST[db1]} port=${PORT[db1]} user=replicator" \
    >"$dir/$n.basebackup.log" 2>&1 || up_failed "pg_basebackup for $n failed"
  write_node_conf "$dir" "$n"
}

standby_conninfo() {  # NODE
  printf "host=%s port=%s user=replicator password=replicator-pass application_name=%s" \
    "${HOST[db1]}" "${PORT[db1]}" "$1"
}

cmd_up() {
  local dir="" standbys=1 sync=0 netns=0
  MAX_CONNECTIONS=100
  while (($#)); do
    case "$1" in
      --standbys) standbys=${2:?--standbys needs a number}; shift 2 ;;
      --standbys=*) standbys=${1#*=}; shift ;;
      --sync) sync=1; shift ;;
      --async) sync=0; shift ;;
      --netns) netns=1; shift ;;
      --basebackup) BASEBACKUP=1; shift ;;
      --max-connections) MAX_CONNECTIONS=${2:?--max-connections needs a number}; shift 2 ;;
      --max-connections=*) MAX_CONNECTIONS=${1#*=}; shift ;;
      -*) die "up: unknown option $1" ;;
      *) [[ -z "$dir" ]] || die "up: more than one DIR"; dir=$1; shift ;;
    esac
  done
  [[ -n "$dir" ]] || usage
  [[ "$standbys" =~ ^[0-9]+$ ]] || die "--standbys wants a number, got '$standbys'"
  [[ "$MAX_CONNECTIONS" =~ ^[0-9]+$ ]] || die "--max-connections wants a number"
  ((sync == 0 || standbys > 0)) || die "--sync needs at least one standby"
  ((sync == 0 || BASEBACKUP == 0)) ||
    die "--basebackup leaves synchronous replication to whoever adopts the cluster; drop --sync"
  [[ "$dir" != *[[:space:]\'\"\\\$]* ]] || die "DIR must not contain spaces, quotes, \\ or \$"

  local t0
  t0=$(now)
  dir=$(abs_path "$dir")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  [[ ! -e "$dir/cluster.env" ]] || die "$dir already holds a cluster; run: $0 down $dir --rm"
  [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty"
  UP_DIR=$dir
  touch "$dir/.pgkeel-cluster"  # marks the folder as ours, so `down --rm` may delete it
  own_pg "$dir"
  as_pg test -w "$dir" || die "the postgres user cannot write to $dir (check its parents' modes)"

  # Unix socket paths are limited to 107 bytes; fall back to a short private folder.
  SOCKDIR="$dir/sock"
  local socket_name="/.s.PGSQL.65535"
  if ((${#SOCKDIR} + ${#socket_name} > 100)); then
    SOCKDIR=$(mktemp -d /tmp/pgkeel-sock.XXXXXX)
  else
    mkdir "$SOCKDIR"
  fi
  chmod 0755 "$SOCKDIR"
  own_pg "$SOCKDIR"

  NODE_LIST=(db1)
  local i
  for ((i = 2; i <= standbys + 1; i++)); do NODE_LIST+=("db$i"); done
  local ports
  read -r -a ports <<<"$(pick_ports "${#NODE_LIST[@]}")"
  for i in "${!NODE_LIST[@]}"; do PORT[${NODE_LIST[$i]}]=${ports[$i]}; done
  local n
  if ((netns)); then
    trap 'exit 130' INT TERM HUP  # so that the EXIT trap tears the namespaces down
    netns_allocate "${NODE_LIST[@]}"
    for n in "${NODE_LIST[@]}"; do HOST[$n]=$(netns_host "$n"); done
  else
    for n in "${NODE_LIST[@]}"; do HOST[$n]=127.0.0.1; done
  fi
  write_env "$dir"

  local dests=()
  for n in "${NODE_LIST[@]}"; do dests+=("$dir/$n"); done
  if ((BASEBACKUP)); then
    copy_template "$dir/db1"  # the standbys are copied from the running primary below
    default_replication_timeouts "$dir/db1"
  else
    copy_template "${dests[@]}"
  fi
  if ((netns)); then
    for n in "${NODE_LIST[@]}"; do
      if [[ -d "$dir/$n" ]]; then allow_subnet "$dir/$n"; fi
    done
  fi

  # Primary.
  local sync_line=()
  if ((sync)); then
    local names
    names=$(printf '%s, ' "${NODE_LIST[@]:1}")
    sync_line=("synchronous_standby_names = 'ANY 1 (${names%, })'")
  fi
  write_node_conf "$dir" db1 "${sync_line[@]+"${sync_line[@]}"}"
  launch_node "$dir" db1
  await_start "$dir" db1
  write_env "$dir"

  local standby_nodes=("${NODE_LIST[@]:1}")
  if ((${#standby_nodes[@]} > 0 && BASEBACKUP)); then
    for n in "${standby_nodes[@]}"; do
      basebackup_standby "$dir" "$n"
      launch_node "$dir" "$n"
    done
    await_start "$dir" "${standby_nodes[@]}"
    write_env "$dir"
    await_streaming "$dir" 0 "'walreceiver'" "${#standby_nodes[@]}"
  elif ((${#standby_nodes[@]} > 0)); then
    # Standbys: one physical slot each, then all started together.
    local sql="" 
    for n in "${standby_nodes[@]}"; do
      sql+="SELECT pg_create_physical_replication_slot('$n', true);"
    done
    psql_at "$SOCKDIR" "${PORT[db1]}" -q -v ON_ERROR_STOP=1 -c "$sql" >/dev/null 2>>"$dir/db1.log" ||
      up_failed "creating replication slots failed"
    for n in "${standby_nodes[@]}"; do
      write_node_conf "$dir" "$n"
      {
        echo "primary_conninfo = '$(standby_conninfo "$n")'"
        echo "primary_slot_name = '$n'"
      } >>"$dir/$n/postgresql.auto.conf"
      as_pg touch "$dir/$n/standby.signal"
      launch_node "$dir" "$n"
    done
    await_start "$dir" "${standby_nodes[@]}"
    # A standby whose port was re-picked changed nothing the primary needs; but db1's own port
    # is what standbys dial, and it is fixed by now.
    write_env "$dir"
    local names
    names=$(printf "'%s'," "${standby_nodes[@]}")
    await_streaming "$dir" "$sync" "${names%,}" "${#standby_nodes[@]}"
  fi

  write_users "$dir"
  write_env "$dir"
  trap - EXIT INT TERM HUP
  say "up in $(elapsed_since "$t0")s: $dir ($(describe_nodes)); source $dir/cluster.env"
}

describe_nodes() {
  local n out=()
  for n in "${NODE_LIST[@]}"; do out+=("$n:${HOST[$n]}:${PORT[$n]}"); done
  printf '%s' "${out[*]}"
}

# Waits until the primary shows WANT standbys streaming under the listed application names
# (SQL literals, comma-separated; with --basebackup every standby is 'walreceiver').
await_streaming() {  # DIR SYNC NAMES WANT
  local dir=$1 sync=$2 names=$3 want=$4 deadline got=""
  local sql="SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'
    AND application_name IN ($names)"
  ((sync)) && sql+=" AND sync_state IN ('sync', 'quorum')"
  deadline=$(deadline_in "$kTimeout")
  while :; do
    got=$(psql_at "$SOCKDIR" "${PORT[db1]}" -Atq -c "$sql" 2>/dev/null || true)
    [[ "$got" == "$want" ]] && return 0
    past "$deadline" && up_failed "timed out after ${kTimeout}s: $got of $want standbys streaming"
    sleep 0.02
  done
}

write_users() {  # DIR
  local dir=$1 rows name secret
  rows=$(psql_at "$SOCKDIR" "${PORT[db1]}" -Atq -F '|' -v ON_ERROR_STOP=1 -c \
    "SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL ORDER BY rolname") ||
    up_failed "reading pg_authid failed"
  # One `"name" "secret"` line per role with a password, nothing else (PgBouncer's auth_file
  # reads it too). Secrets are pg_authid.rolpassword, except clearuser's: the server asks for it
  # in cleartext, so pgkeel must hold the password itself.
  {
    while IFS='|' read -r name secret; do
      [[ -n "$name" ]] || continue
      [[ "$name" == clearuser ]] && secret=clear-pass
      printf '"%s" "%s"\n' "${name//\"/\"\"}" "${secret//\"/\"\"}"
    done <<<"$rows"
  } >"$dir/users.txt.tmp"
  mv "$dir/users.txt.tmp" "$dir/users.txt"
}

# --- down, status and single-node commands ----------------------------------------------------

# Stops every node listed in cluster.env. Only postmasters that this cluster started are
# signalled: pg_ctl reads the pid from the node's own postmaster.pid, and the fallback kill
# checks that the recorded pid is a postgres whose command line names the node's data folder.
stop_nodes() {  # DIR MODE
  local dir=$1 mode=$2 n data pid rc=0
  load_env "$dir"
  for n in $NODES; do
    data=$(node_var "$n" DATA)
    if [[ -f "$data/postmaster.pid" ]]; then
      as_pg "$PG_BINDIR/pg_ctl" -D "$data" -m "$mode" -w -t "$kTimeout" stop >/dev/null 2>&1 ||
        warn "$n: pg_ctl stop failed"
    fi
    for pid in "$(postmaster_pid "$data")" "$(node_var "$n" PID)"; do
      if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$data"; then
        warn "$n: postmaster $pid still running; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || rc=1
      fi
    done
  done
  return $rc
}

cmd_down() {
  local dir="" rm=0
  while (($#)); do
    case "$1" in
      --rm) rm=1; shift ;;
      -*) die "down: unknown option $1" ;;
      *) dir=$1; shift ;;
    esac
  done
  [[ -n "$dir" ]] || usage
  dir=$(abs_path "$dir")
  if [[ ! -d "$dir" ]]; then
    say "$dir does not exist; nothing to stop"
    return 0
  fi
  dir=$(cd "$dir" && pwd -P)
  [[ -f "$dir/.pgkeel-cluster" ]] || die "$dir was not made by '$0 up'; refusing to touch it"
  if [[ -f "$dir/cluster.env" ]]; then
    stop_nodes "$dir" immediate || true
    load_env "$dir"
    netns_teardown
  fi
  if ((rm)); then
    local sock=""
    if [[ -f "$dir/cluster.env" ]]; then sock=$(load_env "$dir" && echo "$SOCKDIR"); fi
    if [[ "$sock" == /tmp/pgkeel-sock.* ]]; then rm -rf "$sock"; fi
    rm -rf "$dir"
  fi
}

cmd_status() {
  local dir=${1:?status needs DIR} n port data pid live role
  load_env "$dir"
  for n in $NODES; do
    port=$(node_var "$n" PORT)
    data=$(node_var "$n" DATA)
    pid=$(postmaster_pid "$data")
    [[ -n "$pid" ]] || pid=$(node_var "$n" PID)
    if alive "$pid"; then live=yes; else live=no; fi
    role=$(psql_at "$SOCKDIR" "$port" -Atq -c \
      "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END" 2>/dev/null ||
      echo unreachable)
    printf '%s port=%s pid=%s alive=%s role=%s\n' "$n" "$port" "$pid" "$live" "$role"
  done
}

node_known() {  # NODE
  [[ " $NODES " == *" $1 "* ]] || die "no node '$1' in this cluster (nodes: $NODES)"
}

cmd_psql() {
  local dir=${1:?psql needs DIR} n=${2:?psql needs NODE}
  shift 2
  load_env "$dir"
  node_known "$n"
  # Environment rather than -h/-p/-U/-d, so that the caller's own -d or positional DBNAME wins.
  PGHOST=$SOCKDIR PGPORT=$(node_var "$n" PORT) PGUSER=postgres PGDATABASE=postgres \
    exec "$PG_BINDIR/psql" -X "$@"
}

cmd_start() {
  local dir=${1:?start needs DIR} n=${2:?start needs NODE} data log
  dir=$(abs_path "$dir")
  load_env "$dir"
  node_known "$n"
  data=$(node_var "$n" DATA)
  log=$(node_var "$n" LOG)
  as_pg_in "$n" "$PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t "$kTimeout" start >/dev/null ||
    { tail -n 30 "$log" >&2; die "$n did not start"; }
  set_env_value "$dir" "$(upper "$n")_PID" "$(postmaster_pid "$data")"
}

cmd_stop() {
  local dir=${1:?stop needs DIR} n=${2:?stop needs NODE} mode=${3:-fast}
  load_env "$dir"
  node_known "$n"
  as_pg "$PG_BINDIR/pg_ctl" -D "$(node_var "$n" DATA)" -m "$mode" -w -t "$kTimeout" stop >/dev/null
  set_env_value "$(abs_path "$dir")" "$(upper "$n")_PID" 0
}

cmd_promote() {
  local dir=${1:?promote needs DIR} n=${2:?promote needs NODE}
  load_env "$dir"
  node_known "$n"
  as_pg "$PG_BINDIR/pg_ctl" -D "$(node_var "$n" DATA)" -w -t "$kTimeout" promote >/dev/null
}

# partition / heal: the node's bridge port down or up. Down, nothing crosses it either way and
# nothing answers: no RST, no ICMP, no ARP failure (the neighbour entries are static).
cmd_link() {  # down|up DIR NODE
  local state=$1 dir=${2:?partition and heal need DIR} n=${3:?partition and heal need NODE} link
  load_env "$dir"
  node_known "$n"
  link=$(node_var "$n" LINK)
  [[ -n "$link" ]] || die "$n is not in a network namespace (the cluster was not made with up --netns)"
  ip link set dev "$link" "$state"
  say "$n: link $link $state"
}

cmd_host() {
  local dir=${1:?host needs DIR} name=${2:?host needs NAME} i addr mac ns link n
  dir=$(abs_path "$dir")
  load_env "$dir"
  [[ -n "$NETNS_TAG" ]] || die "host needs a cluster made with up --netns"
  [[ "$name" =~ ^[a-z][a-z0-9]{0,5}$ && ! "$name" =~ ^db[0-9]+$ ]] ||
    die "host NAME: a lower-case letter, then up to five letters or digits, not dbN (got '$name')"
  [[ " ${EXTRA_HOSTS:-} " != *" $name "* ]] || die "there is a host $name already"
  i=$(($(wc -w <<<"${EXTRA_HOSTS:-}") + 1))
  ((i <= 99)) || die "no more than 99 hosts"
  addr="${NETNS_GATEWAY%.*}.$((100 + i))"
  mac=$(printf '02:70:6b:%02x:%02x:02' "$NETNS_K" $((100 + i)))
  ns=$(netns_name "$name")
  link=$(netns_link "$name")
  ip netns add "$ns"
  ip link add "$link" type veth peer name "${link}p"
  ip link set "${link}p" netns "$ns"
  ip -n "$ns" link set "${link}p" name eth0 address "$mac"
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip link set "$link" master "$NETNS_BRIDGE" up
  ip neigh replace "$addr" lladdr "$mac" dev "$NETNS_BRIDGE" nud permanent
  ip -n "$ns" neigh replace "$NETNS_GATEWAY" lladdr "$(netns_bridge_mac)" dev eth0 nud permanent
  for n in $NODES; do
    ip -n "$ns" neigh replace "$(node_var "$n" HOST)" lladdr "$(netns_mac "$n")" dev eth0 nud permanent
    ip -n "$(netns_name "$n")" neigh replace "$addr" lladdr "$mac" dev eth0 nud permanent
  done
  if [[ -z "${EXTRA_HOSTS:-}" ]]; then
    echo "EXTRA_HOSTS=\"$name\"" >>"$dir/cluster.env"
  else
    set_env_value "$dir" EXTRA_HOSTS "\"$EXTRA_HOSTS $name\""
  fi
  {
    echo "$(upper "$name")_ADDR=$addr"
    echo "$(upper "$name")_NETNS=$ns"
    echo "$(upper "$name")_LINK=$link"
  } >>"$dir/cluster.env"
  echo "$addr"
}

main() {
  (($#)) || usage
  local cmd=$1
  shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    psql) cmd_psql "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    promote) cmd_promote "$@" ;;
    partition) cmd_link down "$@" ;;
    heal) cmd_link up "$@" ;;
    host) cmd_host "$@" ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd' (up, down, status, psql, start, stop, promote, partition, heal, host)" ;;
  esac
}

main "$@"
