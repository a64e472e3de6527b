#!/usr/bin/env bash
# tools/test.sh — the README's test command: installs what is missing, builds, and runs every
# test (unit, integration against real PostgreSQL, sanitizers, fuzzing). CI runs exactly this.
#
#   tools/test.sh            everything
#   tools/test.sh --quick    release build + unit + integration only (for development)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
jobs=$(nproc)

# Each step's wall time, printed at the end (CI budget: the whole run must stay well under 45 min).
timings=()
step_name=""
step_started=$SECONDS
end_step() {
  [[ -n "$step_name" ]] && timings+=("$(printf '%5ds  %s' $((SECONDS - step_started)) "$step_name")")
  step_name=""
}
step() {
  end_step
  step_name=$*
  step_started=$SECONDS
  printf '\n=== %s\n' "$*"
}
print_timings() {
  end_step
  printf '\n=== timings\n'
  printf '%s\n' "${timings[@]}"
  printf '%5ds  total\n' "$SECONDS"
}

step "dependencies"
tools/install-deps.sh

step "docker files (compose config and Dockerfile checks; no engine)"
tools/check-docker.sh

step "release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPGKEEL_TESTS=ON -DPGKEEL_WERROR=ON >/dev/null
cmake --build build -j "$jobs"

step "unit and integration tests (release build)"
(cd build && ctest --output-on-failure)

if ((quick)); then
  print_timings
  exit 0
fi

step "ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPGKEEL_SANITIZE=ON -DPGKEEL_TESTS=ON -DPGKEEL_WERROR=ON >/dev/null
cmake --build build-asan -j "$jobs"

step "unit and integration tests under ASan+UBSan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure)

step "TSan build"
# GCC's ThreadSanitizer. pgkeel itself is built with it too: the integration tests run that binary.
# Only what the TSan step runs (the drill, ledger and benchmark tools are not run under it), at
# -O1 with line tables only (-g1): enough for TSan and its stacks, in about half the build time
# of -O2 -g.
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -g1 -DNDEBUG" \
  -DPGKEEL_TSAN=ON -DPGKEEL_TESTS=ON -DPGKEEL_WERROR=ON >/dev/null
cmake --build build-tsan -j "$jobs" --target pgkeel pgkeel_unit_tests pgkeel_integration_tests

step "unit tests and threaded integration tests ([proxy], [console], [status]) under TSan"
# Reports from every instrumented process (the tests and each pgkeel they start) go to files, so
# a race inside a pgkeel child is caught even when the test around it passes.
tsan_logs=$root/build-tsan/tsan-logs
rm -rf "$tsan_logs"
mkdir -p "$tsan_logs"
export TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:history_size=4:log_path=$tsan_logs/tsan"
# Known false positives from uninstrumented libraries, one reason per entry.
[[ -f tools/tsan.supp ]] && TSAN_OPTIONS+=":suppressions=$root/tools/tsan.supp"
# TSan's runtime needs a layout that some kernels break (vm.mmap_rnd_bits > 28: "unexpected
# memory mapping" at start-up). Then every instrumented process runs without ASLR: setarch -R
# (personality ADDR_NO_RANDOMIZE is inherited by the pgkeel children the tests start).
tsan_run=()
if ! build-tsan/tests/pgkeel_unit_tests --help >/dev/null 2>"$tsan_logs/probe.err"; then
  if grep -q 'unexpected memory mapping' "$tsan_logs/probe.err" "$tsan_logs"/tsan.* 2>/dev/null; then
    echo "tsan: this kernel's mmap layout needs setarch -R"
    tsan_run=(setarch "$(uname -m)" -R)
    rm -f "$tsan_logs"/tsan.*
  else
    cat "$tsan_logs/probe.err" "$tsan_logs"/tsan.* 2>/dev/null || true
    echo "tsan: the unit test binary does not start"
    exit 1
  fi
fi
rm -f "$tsan_logs/probe.err"
tsan_failed=0
"${tsan_run[@]}" build-tsan/tests/pgkeel_unit_tests || tsan_failed=1
"${tsan_run[@]}" build-tsan/tests/pgkeel_integration_tests \
  '[proxy]~[release-only],[console]~[release-only],[status]~[release-only]' || tsan_failed=1
unset TSAN_OPTIONS
if compgen -G "$tsan_logs/tsan.*" >/dev/null; then
  for f in "$tsan_logs"/tsan.*; do
    echo "--- $f"
    cat "$f"
  done
  echo "tsan: $(cat "$tsan_logs"/tsan.* | grep -c '^WARNING: ThreadSanitizer' || true) report(s) above"
  tsan_failed=1
fi
((tsan_failed == 0)) || { echo "TSan step FAILED"; exit 1; }

step "fuzzing (bounded)"
tools/fuzz.sh

step "docker: images built and the compose drill run under podman (tools/check-docker.sh --run)"
# Last, so the containers' network rules never meet the other tests. It fails unless the drill
# FAILS with the primary's postmaster as PID 1 (the kill ignored) and PASSES as shipped.
tools/check-docker.sh --run

print_timings
echo
echo "all tests passed"
