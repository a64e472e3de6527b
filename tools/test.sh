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

step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
tools/install-deps.sh

step "release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGKEEL_TESTS=ON >/dev/null
cmake --build build -j "$jobs"

step "unit and integration tests (release build)"
(cd build && ctest --output-on-failure)

if ((quick)); then
  exit 0
fi

step "ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPGKEEL_SANITIZE=ON -DPGKEEL_TESTS=ON >/dev/null
cmake --build build-asan -j "$jobs"

step "unit and integration tests under ASan+UBSan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure)

step "fuzzing (bounded)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DPGKEEL_FUZZ=ON -DPGKEEL_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$jobs"
fuzz_seconds=${PGKEEL_FUZZ_SECONDS:-30}
for target in build-fuzz/fuzz/*; do
  [[ -x "$target" ]] || continue
  name=$(basename "$target")
  corpus="tools/fuzz/corpus/$name"  # committed seeds; this run's finds are added to it
  mkdir -p "$corpus"
  log=$(mktemp)
  echo "fuzz: $name for ${fuzz_seconds}s"
  if ! "$target" -max_total_time="$fuzz_seconds" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $name FAILED (crash input saved in the working directory)"
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$log" || true
  rm -f "$log"
done

echo
echo "all tests passed"
