#!/usr/bin/env bash
# tools/check-docker.sh — the container path of the rehearsal (docker/).
#
#   tools/check-docker.sh         what can be checked without an engine: the compose files are
#                                 valid (Debian's docker-compose, `config`), every service is
#                                 there, no service waits on a health check, the primary's
#                                 postmaster is not PID 1, the only base image is debian:12, the
#                                 Dockerfile builds with the project's own scripts, ships pgkeel
#                                 and pgkeel-drill, checks their libraries and runs as a non-root
#                                 user.
#   tools/check-docker.sh --run   the same, then the compose rehearsal for real on this machine,
#                                 without Docker: podman serves the Docker API on a socket, and
#                                 docker-compose builds the images and runs the drill twice:
#                                   1. with the primary's postmaster as PID 1 of its container
#                                      (docker/compose.pid1.yaml): the kernel ignores the kill -9,
#                                      and the drill must FAIL, saying the kill did not take effect;
#                                   2. as docker/compose.yaml stands: the drill must PASS, with
#                                      the postmaster gone, a detection, a promotion and a measured
#                                      write downtime.
#                                 Exit 0 only when both verdicts are as they must be.
#
# --run installs what is missing (tools/install-deps.sh --containers: podman, runc, catatonit,
# netavark, aardvark-dns, iptables, docker-compose, mmdebstrap), and keeps everything of its own
# under the repository's .cache/ (gitignored): podman's configuration, image store and run state
# (.cache/podman; the system's /etc/containers is neither read for storage nor changed), the
# debian:12 root file system (.cache/docker/debian-12.tar), the drill reports and the logs
# (.cache/docker/run). debian:12 is pulled when a registry answers, else made with mmdebstrap from
# Debian's mirror (PGKEEL_DEBIAN_MIRROR, default http://deb.debian.org/debian) and imported.
# A second run reuses the base image and the images' cached layers.
#
# It cleans up after itself whatever happens: the compose projects' containers and networks are
# removed, and the podman service it started is stopped by its pid. Images stay, as the cache.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
run=0
case "${1:-}" in
  "") ;;
  --run) run=1 ;;
  *)
    echo "usage: tools/check-docker.sh [--run]" >&2
    exit 2
    ;;
esac

compose_file=docker/compose.yaml
pid1_file=docker/compose.pid1.yaml
dockerfile=docker/Dockerfile
pg_dockerfile=docker/postgres.Dockerfile
failures=0
fail() {
  printf 'check-docker: FAIL: %s\n' "$*" >&2
  failures=$((failures + 1))
}
ok() { printf 'check-docker: ok: %s\n' "$*"; }
say() { printf 'check-docker: %s\n' "$*"; }
started=$SECONDS
phase_started=$SECONDS
timings=()
phase() {
  timings+=("$(printf '%4ds  %s' $((SECONDS - phase_started)) "$1")")
  phase_started=$SECONDS
}

if ((run)); then
  tools/install-deps.sh --containers
elif ! command -v docker-compose >/dev/null 2>&1; then
  tools/install-deps.sh
fi
command -v docker-compose >/dev/null 2>&1 || { fail "docker-compose is not installed"; exit 1; }

# ---- 1. Static checks: what the files say ----------------------------------------------------

# The compose file, as docker-compose resolves it (the file alone, and with the PID 1 override).
if resolved=$(docker-compose -f "$compose_file" config 2>&1); then
  ok "docker-compose -f $compose_file config"
else
  printf '%s\n' "$resolved" >&2
  fail "docker-compose -f $compose_file config"
  resolved=""
fi
if pid1_resolved=$(docker-compose -f "$compose_file" -f "$pid1_file" config 2>&1); then
  ok "docker-compose -f $compose_file -f $pid1_file config"
else
  printf '%s\n' "$pid1_resolved" >&2
  fail "docker-compose -f $compose_file -f $pid1_file config"
  pid1_resolved=""
fi
services=$(docker-compose -f "$compose_file" config --services 2>/dev/null || true)
for s in primary standby pgkeel drill; do
  grep -qx "$s" <<<"$services" && ok "service $s" || fail "no service $s in $compose_file"
done
block() { awk -v s="  $2:" '$0 == s {p=1; next} /^  [a-z]/ {p=0} p' <<<"$1"; }
# Nothing may wait on a health check: podman without systemd runs none, so such a wait never ends.
grep -q 'service_healthy' <<<"$resolved" && fail "a service waits on a health check (podman runs none without systemd)" ||
  ok "no service waits on a health check"
grep -q -- '--wait-ready' <<<"$(block "$resolved" drill)" && ok "the drill waits for pgkeel itself (--wait-ready)" ||
  fail "the drill does not wait for pgkeel (--wait-ready)"
grep -q '/live' <<<"$(block "$resolved" pgkeel)" && ok "pgkeel's health check asks /live" || fail "pgkeel has no /live health check"
# The primary's postmaster must not be PID 1 (the kernel ignores kill -9 of a container's PID 1
# from inside it): an init process in front, and the entrypoint keeps the server as its child.
grep -q 'init: true' <<<"$(block "$resolved" primary)" && ok "the primary runs under an init process (init: true)" ||
  fail "the primary has no init process: its postmaster would be PID 1 and ignore the drill's kill -9"
grep -q 'init: false' <<<"$(block "$pid1_resolved" primary)" && grep -q 'PGKEEL_POSTMASTER_AS_PID1' <<<"$(block "$pid1_resolved" primary)" &&
  ok "$pid1_file makes the primary's postmaster PID 1 (the kill-ignored run)" ||
  fail "$pid1_file does not make the primary's postmaster PID 1"
grep -q '^postgres -D "$PGDATA" "${settings\[@\]}" &$' docker/postgres-entrypoint.sh &&
  ok "postgres-entrypoint.sh keeps the postmaster as its child" || fail "postgres-entrypoint.sh does not run the postmaster as its child"
# Files the compose files use must exist and parse.
for f in docker/pgkeel.toml docker/users.txt docker/postgres-entrypoint.sh "$pg_dockerfile" "$pid1_file"; do
  [[ -f "$f" ]] && ok "$f present" || fail "$f missing"
done
bash -n docker/postgres-entrypoint.sh && ok "postgres-entrypoint.sh parses" || fail "postgres-entrypoint.sh does not parse"
[[ -x docker/postgres-entrypoint.sh ]] && ok "postgres-entrypoint.sh is executable" || fail "postgres-entrypoint.sh is not executable"

# The config pgkeel gets in the container is one pgkeel accepts (the users file is relative).
bin=${PGKEEL_BIN:-build/pgkeel}
if [[ -x "$bin" ]]; then
  if "$bin" --check-config -c docker/pgkeel.toml >/dev/null; then
    ok "pgkeel --check-config docker/pgkeel.toml"
  else
    "$bin" --check-config -c docker/pgkeel.toml >&2 || true
    fail "docker/pgkeel.toml is not a valid pgkeel config"
  fi
else
  say "skipped --check-config: no $bin"
fi

# The Dockerfiles: debian:12 is the only base image; the pgkeel image builds with the project's
# own scripts (the same commands as the README and tools/test.sh), ships both binaries, checks
# their libraries with ldd, and runs as a non-root user.
bases=$(grep -hE '^FROM ' "$dockerfile" "$pg_dockerfile" | awk '{print $2}' | sort -u)
[[ "$bases" == "debian:12" ]] && ok "the only base image is debian:12" || fail "base images other than debian:12: $(tr '\n' ' ' <<<"$bases")"
run_lines=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -E '^RUN ')
grep -q 'tools/install-deps.sh --build-only' <<<"$run_lines" && ok "Dockerfile runs tools/install-deps.sh" ||
  fail "Dockerfile does not run tools/install-deps.sh --build-only"
grep -qE 'cmake -S \. -B build ' <<<"$run_lines" && grep -q 'cmake --build build' <<<"$run_lines" &&
  ok "Dockerfile runs the CMake build (cmake -S . -B build; cmake --build build)" ||
  fail "Dockerfile does not run the project's CMake build"
# The build stage copies only what CMake reads: every folder the CMakeLists add (tests are off),
# and every file or folder tools/CMakeLists.txt names (the fuzz targets are off too).
needed=$(sed -n 's/^add_subdirectory(\([a-z_]*\)).*/\1/p' CMakeLists.txt | grep -vx tests || true)
needed+=" tools/CMakeLists.txt"
needed+=" $(grep -oE '(CMAKE_CURRENT_SOURCE_DIR\}/[a-z_.-]+|add_subdirectory\([a-z_]+)' tools/CMakeLists.txt |
  sed -E 's/^CMAKE_CURRENT_SOURCE_DIR\}\//tools\//; s/^add_subdirectory\(/tools\//' | grep -vx tools/fuzz | sort -u | tr '\n' ' ')"
# the sources of the build stage's COPY lines (all words but COPY and the destination)
copied=$(awk '/^FROM /{n++} n==1 && /^COPY [^-]/ {for (i = 2; i < NF; i++) print $i}' "$dockerfile")
missing=""
for path in $needed; do
  covered=0
  for src in $copied; do
    src=${src%/}
    [[ "$path" == "$src" || "$path" == "$src"/* ]] && covered=1
  done
  # a folder is covered when all of it that CMake reads is (tools: its CMakeLists and sources)
  [[ $covered == 0 && " $needed " == *" $path/"* ]] && covered=1
  ((covered)) || missing+=" $path"
done
[[ -z "$missing" ]] && ok "the build stage copies everything the CMake build reads ($(wc -w <<<"$needed") paths)" ||
  fail "the build stage of $dockerfile does not copy:$missing"
grep -q 'cmake -S \. -B build' tools/test.sh && ok "tools/test.sh builds the same way" ||
  fail "tools/test.sh no longer runs cmake -S . -B build: update the Dockerfile"
for t in pgkeel pgkeel-drill; do
  grep -qE -- "--target .*\b$t\b" <<<"$run_lines" && grep -q "COPY --from=build /src/build/$t " "$dockerfile" &&
    ok "image carries $t" || fail "image does not build and copy $t"
done
grep -q 'ldd /usr/local/bin/pgkeel /usr/local/bin/pgkeel-drill' <<<"$run_lines" && grep -q "not found" <<<"$run_lines" &&
  ok "the image build fails when ldd finds a library missing" || fail "the image build does not check the binaries' libraries"
grep -q 'libevent-extra-2.1-7' "$dockerfile" && ok "runtime installs libevent-extra (evhttp, evdns)" ||
  fail "runtime image lacks libevent-extra-2.1-7 (pgkeel links libevent_extra)"
grep -q '^USER pgkeel' "$dockerfile" && ok "runtime runs as user pgkeel" || fail "runtime image runs as root"
grep -q '^USER postgres' "$pg_dockerfile" && ok "the PostgreSQL image runs as user postgres" || fail "the PostgreSQL image runs as root"
for f in .dockerignore docker/Dockerfile.dockerignore; do
  [[ -f "$f" ]] && grep -qx 'build' "$f" && grep -qx '.cache' "$f" && ok "$f keeps host build trees and .cache out of the context" ||
    fail "$f must exclude build and .cache"
done
[[ "$(grep -v '^#' .dockerignore)" == "$(grep -v '^#' docker/Dockerfile.dockerignore)" ]] &&
  ok ".dockerignore and docker/Dockerfile.dockerignore agree" || fail ".dockerignore and docker/Dockerfile.dockerignore differ"

if ((failures)); then
  say "$failures check(s) failed"
  exit 1
fi
if ((!run)); then
  say "all static checks passed (no image was built and no container started; tools/check-docker.sh --run does both)"
  exit 0
fi

# ---- 2. The compose rehearsal under podman ---------------------------------------------------

for tool in podman runc docker-compose mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || { say "FAIL: $tool is not installed"; exit 1; }
done
phase "packages (tools/install-deps.sh --containers) and the static checks"

# podman's configuration, all of it under .cache/podman. The settings a sandboxed host needs:
# runc and cgroupfs (no systemd to manage cgroups), events in a file (no journald), logs in
# files, and explicit limits on open files and processes: podman's defaults (1048576 files,
# pid_max processes) may be above the hard limits root has here, and raising a hard limit needs
# CAP_SYS_RESOURCE, which root may lack (seen: "error setting rlimit type 6: operation not
# permitted"). So: the hard limits this script runs under, processes capped at pid_max too.
cache=$root/.cache
pod=$cache/podman
out=$cache/docker/run
mkdir -p "$pod" "$out" "$cache/docker"
nofile=$(ulimit -Hn)
[[ "$nofile" == unlimited ]] && nofile=1048576
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
if [[ "$nproc" == unlimited ]] || ((nproc > pid_max)); then
  nproc=$pid_max
fi
cat >"$pod/containers.conf" <<EOF
# written by tools/check-docker.sh --run
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$pod/events.log"
tmp_dir = "$pod/tmp"

[network]
network_backend = "netavark"
network_config_dir = "$pod/networks"
EOF
storage_driver=${PGKEEL_PODMAN_STORAGE_DRIVER:-overlay}
cat >"$pod/storage.conf" <<EOF
# written by tools/check-docker.sh --run
[storage]
driver = "$storage_driver"
graphroot = "$pod/storage"
runroot = "$pod/run"
EOF
cat >"$pod/registries.conf" <<EOF
# written by tools/check-docker.sh --run: short names (debian:12) mean Docker Hub's, found in the
# local store first, so an imported debian:12 serves without a registry.
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
export CONTAINERS_CONF=$pod/containers.conf
export CONTAINERS_STORAGE_CONF=$pod/storage.conf
export CONTAINERS_REGISTRIES_CONF=$pod/registries.conf

# The Docker API on a socket of our own; its path must fit a sockaddr_un (108 bytes).
sock_dir=$pod/sock
[[ ${#sock_dir} -gt 90 ]] && sock_dir=$(mktemp -d)
mkdir -p "$sock_dir"
sock=$sock_dir/podman.sock
export DOCKER_HOST=unix://$sock
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0 COMPOSE_INTERACTIVE_NO_CLI=1
remote=(podman --remote --url "$DOCKER_HOST")
project=pgkeel-check-docker
compose=(docker-compose --project-name "$project" -f "$compose_file")
service_pid=""
# netavark leaves its iptables chains (and net.ipv4.ip_forward = 1) behind when its last network
# goes. When this run brought them, cleanup takes them away again; rules that were here before
# (another podman's, say) are left alone.
netavark_before=$( (iptables -S; iptables -t nat -S) 2>/dev/null | grep -c NETAVARK || true)
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo 1)
remove_netavark_rules() {
  local table rule chain
  for table in filter nat; do
    # the jumps from the built-in chains first, then netavark's own chains
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j NETAVARK' | sed 's/^-A /-D /' |
      while IFS= read -r rule; do eval "iptables -t $table $rule"; done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N NETAVARK/ {print $2}'); do
      iptables -t "$table" -F "$chain"
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N NETAVARK/ {print $2}'); do
      iptables -t "$table" -X "$chain"
    done
  done
}
cleanup() {
  local rc=$?
  set +e
  if [[ -n "$service_pid" ]]; then
    # Both file sets: the PID 1 run and the normal one share the project (containers, network).
    "${compose[@]}" -f "$pid1_file" down --remove-orphans --timeout 5 >>"$out/cleanup.log" 2>&1
    "${compose[@]}" down --remove-orphans --timeout 5 >>"$out/cleanup.log" 2>&1
    left=$("${remote[@]}" ps -a --filter "label=com.docker.compose.project=$project" --format '{{.ID}}' 2>/dev/null)
    [[ -n "$left" ]] && "${remote[@]}" rm -f $left >>"$out/cleanup.log" 2>&1
    # Untagged layers are the build cache; only those unused for a week go.
    "${remote[@]}" image prune -f --filter until=168h >>"$out/cleanup.log" 2>&1
    kill "$service_pid" 2>/dev/null
    wait "$service_pid" 2>/dev/null
    if ((netavark_before == 0)) && [[ -z "$(podman ps -q 2>/dev/null)" ]]; then
      remove_netavark_rules >>"$out/cleanup.log" 2>&1
      [[ "$ip_forward_before" == 0 ]] && echo 0 >/proc/sys/net/ipv4/ip_forward
    fi
    left=$(podman ps -a --format '{{.Names}}' 2>/dev/null | tr '\n' ' ')
    [[ -n "${left// /}" ]] && say "containers left in .cache/podman: $left"
    podman network ls --format '{{.Name}}' 2>/dev/null | grep -q "^${project}_" &&
      say "a network of $project is left: $(podman network ls --format '{{.Name}}' | tr '\n' ' ')"
  fi
  [[ "$sock_dir" != "$pod/sock" ]] && rm -rf "$sock_dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! podman info >"$out/podman-info.txt" 2>&1; then
  cat "$out/podman-info.txt" >&2
  say "FAIL: podman cannot start with the configuration in $pod (PGKEEL_PODMAN_STORAGE_DRIVER=vfs if overlay is the problem)"
  exit 1
fi
rm -f "$sock"
podman system service --time=0 "$DOCKER_HOST" >"$out/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do
  "${remote[@]}" version >/dev/null 2>&1 && break
  kill -0 "$service_pid" 2>/dev/null || { cat "$out/podman-service.log" >&2; say "FAIL: podman system service exited"; exit 1; }
  sleep 0.2
done
"${remote[@]}" version >/dev/null || { say "FAIL: the Docker API does not answer on $sock"; exit 1; }
say "podman $(podman version --format '{{.Client.Version}}') serves the Docker API at $DOCKER_HOST (pid $service_pid)"
# Leftovers of an interrupted run.
"${compose[@]}" -f "$pid1_file" down --remove-orphans --timeout 5 >"$out/cleanup.log" 2>&1 || true
phase "podman's Docker API up"

# debian:12: in the store already; else from a registry; else from the cached root file system;
# else made by mmdebstrap (minbase, as Docker's official image; without man pages, docs and
# translations, as its -slim variant) from Debian's mirror, and imported.
base=docker.io/library/debian:12
rootfs=$cache/docker/debian-12.tar
mirror=${PGKEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$base"; then
  say "$base: in the image store"
elif timeout 30 podman pull -q "$base" >"$out/pull.log" 2>&1; then
  say "$base: pulled from a registry"
else
  say "$base: no registry answered ($(tail -n 1 "$out/pull.log")); making it"
  if [[ ! -s "$rootfs" ]]; then
    mmdebstrap --mode=root --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      bookworm "$rootfs.tmp" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
      "deb ${mirror%/debian}/debian-security bookworm-security main" >"$out/mmdebstrap.log" 2>&1 ||
      { tail -n 20 "$out/mmdebstrap.log" >&2; rm -f "$rootfs.tmp"; say "FAIL: mmdebstrap"; exit 1; }
    mv "$rootfs.tmp" "$rootfs"
    say "root file system made by mmdebstrap from $mirror ($(du -h "$rootfs" | cut -f1))"
  else
    say "root file system from $rootfs"
  fi
  podman import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debian:12 made by tools/check-docker.sh with mmdebstrap (minbase)" "$rootfs" "$base" >/dev/null
fi
phase "base image debian:12"

# Free ports on 127.0.0.1 for what compose publishes.
read -r PGKEEL_CLIENT_PORT PGKEEL_CONSOLE_PORT PGKEEL_STATUS_PORT < <(tools/free-ports.sh 3)
export PGKEEL_CLIENT_PORT PGKEEL_CONSOLE_PORT PGKEEL_STATUS_PORT

say "building the images (docker-compose build --parallel primary pgkeel; log: .cache/docker/run/build.log)"
# The PostgreSQL image once (the standby's is the same image, by name) beside pgkeel's. Each
# line of the log starts with the seconds since the build began.
if ! "${compose[@]}" build --parallel primary pgkeel 2>&1 | (t0=$SECONDS; while IFS= read -r line; do
  printf '%4d %s\n' $((SECONDS - t0)) "$line"
done) >"$out/build.log"; then
  tail -n 40 "$out/build.log" >&2
  say "FAIL: docker-compose build"
  exit 1
fi
grep -E 'libevent_extra|not found' "$out/build.log" | head -n 3 | sed 's/^/check-docker: ldd in the image: /'
phase "images built (pgkeel and drill, PostgreSQL)"

# One compose rehearsal: up until the drill exits; its exit status, its report and every
# container's log kept under .cache/docker/run/NAME; then down.
drill_run() {
  local name=$1
  shift
  local files=(-f "$compose_file" "$@") dir=$out/$name rc=0 id
  rm -rf "$dir"
  mkdir -p "$dir"
  docker-compose --project-name "$project" "${files[@]}" up --force-recreate --no-color --exit-code-from drill drill \
    >"$dir/compose.log" 2>&1 || rc=$?
  id=$(docker-compose --project-name "$project" "${files[@]}" ps -q drill 2>/dev/null || true)
  [[ -n "$id" ]] && "${remote[@]}" cp "$id:/drill/." "$dir/" >/dev/null 2>&1 || true
  for s in primary standby pgkeel; do
    docker-compose --project-name "$project" "${files[@]}" logs --no-color "$s" >"$dir/$s.log" 2>&1 || true
  done
  docker-compose --project-name "$project" "${files[@]}" down --remove-orphans --timeout 5 >>"$dir/compose.log" 2>&1 || true
  echo "$rc" >"$dir/exit_code"
  return 0
}
# What a run printed as its verdict, from the drill's own lines in the compose log.
verdict_lines() { grep -E 'drill_1 +\| +(fault |  effect:|write downtime|lost acknowledged|FAILED|PASSED)' "$1/compose.log" | sed 's/^[^|]*| //'; }

# 1. The kill the kernel ignores: the drill must fail, and say why.
say "run 1: the primary's postmaster as PID 1 (docker/compose.pid1.yaml): the drill must FAIL"
drill_run pid1 -f "$pid1_file"
verdict_lines "$out/pid1" | sed 's/^/check-docker:   | /'
pid1_rc=$(cat "$out/pid1/exit_code")
if [[ "$pid1_rc" == 1 ]] && grep -q 'FAILED: fault kill at .* did not take effect' "$out/pid1/compose.log" &&
  grep -q '"effect_seen": false' "$out/pid1/drill.json" 2>/dev/null && grep -q '"passed": false' "$out/pid1/drill.json"; then
  ok "the kill-ignored run FAILED (exit 1): the drill saw the postmaster survive its kill -9"
else
  tail -n 60 "$out/pid1/compose.log" >&2
  fail "the kill-ignored run did not fail as it must (exit $pid1_rc; log: .cache/docker/run/pid1)"
fi
phase "run 1: kill ignored (PID 1), must fail"

# 2. The rehearsal as shipped: the drill must pass, having seen its fault and pgkeel's answer.
say "run 2: docker/compose.yaml as it stands: the drill must PASS"
drill_run normal
verdict_lines "$out/normal" | sed 's/^/check-docker:   | /'
normal_rc=$(cat "$out/normal/exit_code")
if [[ "$normal_rc" == 0 ]] && grep -qE 'drill_1 +\| PASSED' "$out/normal/compose.log" &&
  grep -q '"effect_seen": true' "$out/normal/drill.json" 2>/dev/null && grep -q '"passed": true' "$out/normal/drill.json"; then
  ok "the compose drill PASSED (exit 0); report: .cache/docker/run/normal/drill.html"
else
  tail -n 60 "$out/normal/compose.log" >&2
  for s in primary standby pgkeel; do
    printf -- '--- %s (last lines)\n' "$s" >&2
    tail -n 15 "$out/normal/$s.log" >&2
  done
  fail "the compose drill did not pass (exit $normal_rc; logs: .cache/docker/run/normal)"
fi
phase "run 2: the compose drill, must pass"

printf 'check-docker: timings\n'
printf 'check-docker: %s\n' "${timings[@]}"
printf 'check-docker: %4ds  total (cleanup follows)\n' $((SECONDS - started))
if ((failures)); then
  say "$failures check(s) failed"
  exit 1
fi
say "the container path works: images built, the kill-ignored run failed, the compose drill passed"
