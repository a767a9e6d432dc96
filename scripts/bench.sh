#!/usr/bin/env bash
# Builds a Release tree and runs the benchmarks; each appends a dated section to bench/RESULTS.md.
#
#   scripts/bench.sh [ARGS...]    ARGS go to every benchmark (e.g. --no-results for a trial run)
#
# BUILD_DIR (default build-release) picks the build tree; ccache is used when installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build-release}"

"$root/scripts/setup.sh"

cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_BUILD_BENCH=ON >/dev/null
cmake --build "$build_dir" --target cairn protocol_bench

benches=(protocol_bench)
for bench in "${benches[@]}"; do
  echo "== $bench" >&2
  "$build_dir/bench/$bench" "$@"
done
