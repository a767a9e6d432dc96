#!/usr/bin/env bash
# Builds a Release tree and runs the benchmarks; each appends a dated section to bench/RESULTS.md.
#
#   scripts/bench.sh [ARGS...]    ARGS go to protocol_bench (e.g. --no-results for a trial run;
#                                 the flags are listed at the top of bench/protocol_bench.cc)
#
# BUILD_DIR (default build-release) picks the build tree; ccache is used when installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build-release}"

"$root/scripts/setup.sh"

# Tests are not needed to benchmark, and leaving them out keeps the Release build short.
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_BUILD_BENCH=ON \
  -DCAIRN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" --target cairn protocol_bench registry_bench allreduce_bench serve_bench dot_linear_bench

# One line per benchmark; each appends its own section to bench/RESULTS.md.
echo "== protocol_bench (issue #2)" >&2
"$build_dir/bench/protocol_bench" "$@"
echo "== tokenizer_bench (issue #4)" >&2
BUILD_DIR="$build_dir" "$root/bench/tokenizer/run.sh"  # builds tokenizer_bench, installs its npm peers
echo "== registry_bench (issue #3)" >&2
"$build_dir/bench/registry_bench"
echo "== allreduce_bench (issue #5)" >&2
# Its peers: torch.distributed gloo (Debian's python3-torch) and iperf3, installed here when missing.
if ! /usr/bin/python3 -c "import torch" 2>/dev/null || ! command -v iperf3 >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-torch iperf3 >/dev/null
fi
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 "$build_dir/bench/allreduce_bench"
echo "== serve_bench (issue #6)" >&2
# Its peer is a plain PyTorch greedy loop (Debian's python3-torch), installed here when missing.
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-torch >/dev/null
fi
OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 "$build_dir/bench/serve_bench"
echo "== dot_linear_bench (issue #6: the engine's projection kernel against OpenBLAS)" >&2
OPENBLAS_NUM_THREADS=1 "$build_dir/bench/dot_linear_bench"
echo "== train_bench (issue #5)" >&2
# Its peers are PyTorch eager and DDP over gloo (Debian's python3-torch), installed here when missing;
# the bench sets the thread and malloc environment for both sides itself.
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-torch >/dev/null
fi
cmake --build "$build_dir" --target train_bench
"$build_dir/bench/train_bench"
