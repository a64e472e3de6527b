#!/usr/bin/env bash
# tools/fuzz.sh — builds every libFuzzer target (tools/fuzz/*.cc, with clang) and runs each for
# PGKEEL_FUZZ_SECONDS (60 by default) from its committed corpus, one target per core at a time.
# tools/test.sh calls this as its last step; it runs alone too.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cores=$(nproc)
fuzz_seconds=${PGKEEL_FUZZ_SECONDS:-30}

# Only the fuzz targets are built (not the rest of the tree).
targets=()
for src in tools/fuzz/*.cc; do targets+=("$(basename "$src" .cc)"); done
for name in "${targets[@]}"; do
  [[ -d "tools/fuzz/corpus/$name" ]] || { echo "fuzz: tools/fuzz/corpus/$name is missing"; exit 1; }
done
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DPGKEEL_FUZZ=ON -DPGKEEL_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGKEEL_WERROR=ON >/dev/null
cmake --build build-fuzz -j "$cores" --target "${targets[@]}"

logs=build-fuzz/logs
rm -rf "$logs"
mkdir -p "$logs"
run_one() {
  local name=$1 rc=0
  # New finds go to a scratch folder, so a CI run never dirties the work tree; add them with
  # -merge=1 (tools/fuzz/README.md) when they are worth keeping.
  mkdir -p "build-fuzz/finds/$name"
  "build-fuzz/fuzz/$name" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/$name-" "build-fuzz/finds/$name" "tools/fuzz/corpus/$name" \
    >"$logs/$name.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$name.rc"
}
# Each target still gets its full time; running one per core halves the step.
for name in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= cores)); do wait -n || true; done
  echo "fuzz: $name for ${fuzz_seconds}s"
  run_one "$name" &
done
wait

failed=0
for name in "${targets[@]}"; do
  if [[ "$(cat "$logs/$name.rc" 2>/dev/null)" == 0 ]]; then
    echo "fuzz: $name passed: $(grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$logs/$name.log" | tr -s '\n ' ' ')"
  else
    tail -60 "$logs/$name.log"
    echo "fuzz: $name FAILED (the crashing input is build-fuzz/$name-*)"
    failed=1
  fi
done
exit "$failed"
