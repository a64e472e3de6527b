#!/bin/bash
# docker/postgres-entrypoint.sh — one PostgreSQL node of docker/compose.yaml, run as postgres.
#   PGKEEL_ROLE=primary  first start: initdb, the rehearsal's roles (pgkeel: superuser for probes
#                        and promotion; replicator; app, owning database app) and access rules,
#                        written in single-user mode, so the port opens only once all is there.
#   PGKEEL_ROLE=standby  first start: waits for PGKEEL_PRIMARY_HOST, then pg_basebackup -R with a
#                        replication slot (streams as application_name "standby").
# Then the server, with the settings below.
#
# The postmaster runs as this script's child, never as PID 1 (compose.yaml also sets init: true):
# the drill kills it with kill -9 from inside the container, and the kernel ignores SIGKILL sent
# to the PID 1 of a container from inside it. When the postmaster dies, the container stays up
# without a server, as a host whose PostgreSQL died: the node refuses connections, and the
# compose run (--abort-on-container-exit) goes on. SIGTERM (docker stop) stops the server fast.
# PGKEEL_POSTMASTER_AS_PID1=1 execs the server instead (docker/compose.pid1.yaml, used by
# tools/check-docker.sh only to show that the drill then FAILS).
set -euo pipefail

role=${PGKEEL_ROLE:?PGKEEL_ROLE must be primary or standby}
settings=(-c "listen_addresses=*" -c wal_level=replica -c hot_standby=on -c max_wal_senders=10
  -c max_replication_slots=10 -c wal_log_hints=on)
say() { printf 'pgkeel-postgres (%s): %s\n' "$role" "$*" >&2; }
sql_string() { printf "'%s'" "${1//\'/\'\'}"; }

init_primary() {
  local pwfile
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:?}" >"$pwfile"
  initdb -D "$PGDATA" --username=postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf '%s\n' "host all all all scram-sha-256" "host replication replicator all scram-sha-256" \
    >>"$PGDATA/pg_hba.conf"
  postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE ROLE pgkeel LOGIN SUPERUSER PASSWORD $(sql_string "${PGKEEL_PASSWORD:?}");
CREATE ROLE replicator LOGIN REPLICATION PASSWORD $(sql_string "${REPLICATOR_PASSWORD:?}");
CREATE ROLE app LOGIN PASSWORD $(sql_string "${APP_PASSWORD:?}");
CREATE DATABASE app OWNER app;
SQL
  postgres --single -D "$PGDATA" app >/dev/null <<<"ALTER SCHEMA public OWNER TO app;"
  say "initialised $PGDATA with roles pgkeel, replicator and app"
}

init_standby() {
  local primary=${PGKEEL_PRIMARY_HOST:?PGKEEL_PRIMARY_HOST names the primary} deadline=$((SECONDS + 120))
  local said=$SECONDS why
  until why=$(pg_isready -h "$primary" -p 5432 2>&1); do
    if ((SECONDS > deadline)); then
      say "the primary $primary did not accept connections within 120 s: $why"
      exit 1
    fi
    if ((SECONDS - said >= 10)); then
      say "waiting for the primary: $why"
      said=$SECONDS
    fi
    sleep 0.5
  done
  # A fast checkpoint: a spread one makes an idle primary take seconds to start the backup.
  PGPASSWORD=${REPLICATOR_PASSWORD:?} pg_basebackup -D "$PGDATA" -R -X stream -C -S standby --checkpoint=fast \
    -d "host=$primary port=5432 user=replicator application_name=standby"
  say "base backup of $primary taken after $SECONDS s; streaming as standby"
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  case "$role" in
    primary) init_primary ;;
    standby) init_standby ;;
    *) say "PGKEEL_ROLE must be primary or standby"; exit 2 ;;
  esac
fi

if [[ "${PGKEEL_POSTMASTER_AS_PID1:-}" == 1 ]]; then
  say "exec postgres: the postmaster takes this process's PID ($$)"
  exec postgres -D "$PGDATA" "${settings[@]}"
fi

postgres -D "$PGDATA" "${settings[@]}" &
postmaster=$!
trap 'kill -INT "$postmaster" 2>/dev/null || true; wait "$postmaster" || true; exit 0' TERM INT
status=0
wait "$postmaster" || status=$?
say "the postmaster (pid $postmaster) exited with status $status; the container stays up without a server"
trap 'exit 0' TERM INT
sleep infinity &
wait $!
