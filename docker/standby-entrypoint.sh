#!/bin/bash
# The standby: on first start, a base backup of the primary with a replication slot and
# standby.signal (-R); afterwards, the postgres image's own entrypoint with the same settings.
set -euo pipefail
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  mkdir -p "$PGDATA"
  chown postgres: "$PGDATA"
  chmod 0700 "$PGDATA"
  export PGPASSWORD=$REPLICATOR_PASSWORD
  gosu postgres pg_basebackup -D "$PGDATA" -R -X stream -C -S standby \
    -d "host=primary port=5432 user=replicator application_name=standby"
fi
exec docker-entrypoint.sh postgres -c hot_standby=on -c wal_level=replica -c max_wal_senders=10 \
  -c max_replication_slots=10 -c wal_log_hints=on
