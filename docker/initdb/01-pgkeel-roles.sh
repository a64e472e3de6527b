#!/bin/bash
# Roles and replication access for the rehearsal (run once by the postgres image on an empty
# data directory): pgkeel (superuser: probes, promotion), replicator, app (owns database app).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE pgkeel LOGIN SUPERUSER PASSWORD '${PGKEEL_PASSWORD}';
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${REPLICATOR_PASSWORD}';
CREATE ROLE app LOGIN PASSWORD '${APP_PASSWORD}';
CREATE DATABASE app OWNER app;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname app -c "ALTER SCHEMA public OWNER TO app"
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
