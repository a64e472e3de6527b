#!/usr/bin/env bash
# tools/install-deps.sh — installs the Debian 12 packages pgkeel builds and tests with, and only
# those that are missing. Safe to run again: with everything present it changes nothing.
#
# Runs as root, or as a user with sudo. pgkeel never uses the distribution's PostgreSQL or
# PgBouncer services (tools/cluster.sh and the benchmarks start private instances on free ports),
# so while this script installs packages it asks invoke-rc.d not to start any service, and it
# never stops or disables a service that was already there.
set -euo pipefail

# --build-only: just what compiling pgkeel needs (the Docker build stage uses this).
# --containers: what tools/check-docker.sh --run needs to build the images and run the compose
# rehearsal without Docker: podman (with runc, catatonit as the containers' init, netavark and
# aardvark-dns for the network and its names, iptables), docker-compose to drive podman's Docker
# API, and mmdebstrap to make the debian:12 base image when no registry answers.
if [[ "${1:-}" == "--build-only" ]]; then
  kPackages=(build-essential cmake pkg-config libevent-dev libpq-dev libssl-dev libtoml11-dev catch2)
elif [[ "${1:-}" == "--containers" ]]; then
  kPackages=(podman runc catatonit netavark aardvark-dns iptables docker-compose mmdebstrap)
else
  kPackages=(
    build-essential cmake pkg-config
    libevent-dev libpq-dev libssl-dev libtoml11-dev catch2
    postgresql-15 postgresql-client-15 pgbouncer
    openjdk-17-jdk-headless libpostgresql-jdbc-java
    libhikaricp-java libslf4j-java  # tests/jdbc/HikariFailover.java: HikariCP.jar, slf4j-api.jar, slf4j-nop.jar
    strace iproute2 clang libclang-rt-14-dev procps python3 openssl
    stress-ng                   # the no-harm tests keep every core busy, as a user's own load does
    python3-asyncpg             # a cancel request over TLS; prepared statements from many connections; the driver matrix
    python3-psycopg             # the driver matrix (tests/drivers/psycopg_suite.py, cross_suite.py): psycopg 3 and libpq's own calls
    chromium fonts-dejavu-core  # the status page test renders the page in headless Chromium
    docker-compose              # tools/check-docker.sh validates docker/compose.yaml (no engine needed)
    etcd-server etcd-client     # [store] tests: tools/etcd.sh starts a private 3-member etcd 3.4 on free loopback ports
    iptables                    # the [partition] test: firewall rules inside the netns cluster's namespaces cut a pgkeel off from etcd
  )
fi
readonly kPackages

missing=()
for pkg in "${kPackages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  as_root=(false)
fi

# node-pg: node-postgres for the driver matrix (tests/drivers/node_suite.js). Debian's node-*
# packages need Debian's nodejs; beside another one (NodeSource's, which Debian's node-acorn does
# not accept as `nodejs:any`) apt cannot install them, and this script does not replace a node
# someone installed on purpose. Then node-pg and the pure-JavaScript packages it loads are
# unpacked from Debian's archive, without dpkg, into <repo>/.cache/node-pg (git-ignored), where
# tests/integration/drivers_test.cc looks as well as in /usr/share/nodejs.
install_node_pg() {
  local status cache debs
  status=$(dpkg-query -W -f='${db:Status-Status}' node-pg 2>/dev/null || true)
  [[ "$status" == "installed" ]] && return 0
  if apt-get install -s --no-install-recommends node-pg >/dev/null 2>&1; then
    if [[ "${as_root[*]}" == false ]]; then
      echo "install-deps: missing: node-pg; not root and sudo is not available; install it as root" >&2
      return 1
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends node-pg
    return
  fi
  cache="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/node-pg"
  if [[ -f "$cache/usr/share/nodejs/pg/package.json" ]]; then
    echo "install-deps: node-pg: apt cannot install it beside this nodejs; using the copy in $cache"
    return 0
  fi
  echo "install-deps: node-pg: apt cannot install it beside this nodejs; unpacking it into $cache"
  debs=$(mktemp -d)
  local kNodePg=(node-pg node-split2 node-xtend node-readable-stream node-async)
  if ! (cd "$debs" && apt-get download "${kNodePg[@]}" 2>/dev/null); then
    "${as_root[@]}" apt-get update
    (cd "$debs" && apt-get download "${kNodePg[@]}")
  fi
  mkdir -p "$cache"
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$cache"
  done
  rm -rf "$debs"
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#kPackages[@]} packages are installed"
  [[ "${1:-}" == "--build-only" ]] || install_node_pg
  exit 0
fi

if [[ "${as_root[*]}" == false ]]; then
  echo "install-deps: missing: ${missing[*]}" >&2
  echo "install-deps: not root and sudo is not available; install them as root" >&2
  exit 1
fi

echo "install-deps: installing: ${missing[*]}"

# policy-rc.d exit code 101 means "action forbidden": package scripts then neither start the
# postgresql "main" cluster on 5432 nor pgbouncer on 6432. Only a file we created is removed.
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
  if ((created_policy)); then
    "${as_root[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\n# written by pgkeel tools/install-deps.sh while it installs packages\nexit 101\n' |
    "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 0755 "$policy"
  created_policy=1
fi

"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"

still_missing=()
for pkg in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || still_missing+=("$pkg")
done
if ((${#still_missing[@]} > 0)); then
  echo "install-deps: still missing after apt-get: ${still_missing[*]}" >&2
  exit 1
fi
[[ "${1:-}" == "--build-only" ]] || install_node_pg
echo "install-deps: done"
