#!/usr/bin/env bash
# tools/check-docker.sh — what can be checked of docker/ without a Docker engine: the compose file
# is valid (Debian's docker-compose, `config`), every service the rehearsal needs is there with
# its health check, and the Dockerfile builds with the project's own scripts (tools/install-deps.sh
# and the CMake build), ships pgkeel and pgkeel-drill, and runs as a non-root user. Nothing is
# built or started: the README says so.
#
#   tools/check-docker.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
compose=docker/compose.yaml
dockerfile=docker/Dockerfile
failures=0
fail() {
  printf 'check-docker: FAIL: %s\n' "$*" >&2
  failures=$((failures + 1))
}
ok() { printf 'check-docker: ok: %s\n' "$*"; }

if ! command -v docker-compose >/dev/null 2>&1; then
  tools/install-deps.sh
fi
command -v docker-compose >/dev/null 2>&1 || { fail "docker-compose is not installed"; exit 1; }

# 1. The compose file, as docker-compose resolves it.
if resolved=$(docker-compose -f "$compose" config 2>&1); then
  ok "docker-compose -f $compose config"
else
  printf '%s\n' "$resolved" >&2
  fail "docker-compose -f $compose config"
  resolved=""
fi
services=$(docker-compose -f "$compose" config --services 2>/dev/null || true)
for s in primary standby pgkeel drill; do
  grep -qx "$s" <<<"$services" && ok "service $s" || fail "no service $s in $compose"
done
# pgkeel's health check asks /live on the status port, and the drill waits for it.
pgkeel_block=$(awk '/^  pgkeel:$/{p=1; next} /^  [a-z]/{p=0} p' <<<"$resolved")
grep -q '/live' <<<"$pgkeel_block" && ok "pgkeel health check asks /live" || fail "pgkeel has no /live health check"
drill_block=$(awk '/^  drill:$/{p=1; next} /^  [a-z]/{p=0} p' <<<"$resolved")
grep -q 'condition: service_healthy' <<<"$drill_block" && ok "drill waits for a healthy pgkeel" ||
  fail "drill does not wait for pgkeel's health check"
# Files the compose file mounts must exist.
for f in docker/pgkeel.toml docker/users.txt docker/standby-entrypoint.sh docker/initdb/01-pgkeel-roles.sh; do
  [[ -f "$f" ]] && ok "$f present" || fail "$f missing"
done
bash -n docker/standby-entrypoint.sh docker/initdb/01-pgkeel-roles.sh && ok "entrypoint scripts parse" ||
  fail "entrypoint scripts do not parse"

# 2. The config pgkeel gets in the container is one pgkeel accepts (the users file is relative).
bin=${PGKEEL_BIN:-build/pgkeel}
if [[ -x "$bin" ]]; then
  if "$bin" --check-config -c docker/pgkeel.toml >/dev/null; then
    ok "pgkeel --check-config docker/pgkeel.toml"
  else
    "$bin" --check-config -c docker/pgkeel.toml >&2 || true
    fail "docker/pgkeel.toml is not a valid pgkeel config"
  fi
else
  printf 'check-docker: skipped --check-config: no %s\n' "$bin"
fi

# 3. The Dockerfile builds with the project's own scripts, the same commands as the README and
#    tools/test.sh, and ships both binaries to a non-root runtime.
run_lines=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -E '^RUN ')
grep -q 'tools/install-deps.sh --build-only' <<<"$run_lines" && ok "Dockerfile runs tools/install-deps.sh" ||
  fail "Dockerfile does not run tools/install-deps.sh --build-only"
grep -qE 'cmake -S \. -B build ' <<<"$run_lines" && grep -q 'cmake --build build' <<<"$run_lines" &&
  ok "Dockerfile runs the CMake build (cmake -S . -B build; cmake --build build)" ||
  fail "Dockerfile does not run the project's CMake build"
grep -q 'cmake -S \. -B build' tools/test.sh && ok "tools/test.sh builds the same way" ||
  fail "tools/test.sh no longer runs cmake -S . -B build: update the Dockerfile"
for t in pgkeel pgkeel-drill; do
  grep -qE -- "--target .*\b$t\b" <<<"$run_lines" && grep -q "COPY --from=build /src/build/$t " "$dockerfile" &&
    ok "image carries $t" || fail "image does not build and copy $t"
done
grep -q '^USER pgkeel' "$dockerfile" && ok "runtime runs as user pgkeel" || fail "runtime image runs as root"
[[ -f docker/Dockerfile.dockerignore ]] && grep -qx 'build' docker/Dockerfile.dockerignore &&
  ok "host build trees stay out of the build context" || fail "docker/Dockerfile.dockerignore must exclude build"

if ((failures)); then
  printf 'check-docker: %d check(s) failed\n' "$failures" >&2
  exit 1
fi
echo "check-docker: all checks passed (no image was built and no container started: there is no Docker engine here)"
