# The PostgreSQL nodes of docker/compose.yaml: Debian 12's own postgresql-15 on debian:12 (the
# rehearsal's only base image), a primary or a streaming standby as PGKEEL_ROLE says, set up and
# run by the project's entrypoint (docker/postgres-entrypoint.sh) as the postgres user. The data
# directory lives in the container: every rehearsal starts from an empty cluster.
FROM debian:12
# No "main" cluster and no service started while the package installs (as tools/install-deps.sh).
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY postgres-entrypoint.sh /usr/local/bin/pgkeel-postgres-entrypoint
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/pgkeel-postgres-entrypoint"]
