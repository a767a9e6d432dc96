#!/usr/bin/env bash
# Installs the packages (idempotent), configures and builds Cairn with ccache.
#   scripts/build.sh [BUILD_DIR] [BUILD_TYPE]     defaults: build RelWithDebInfo
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-$root/build}
build_type=${2:-RelWithDebInfo}

"$root/scripts/setup.sh"
# Paths relative to the checkout in ccache's keys, so another clone (CI's) reuses the cache.
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=true
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
fi
# Two cores and ~40 s for a torch translation unit: building with more jobs only thrashes.
cmake --build "$build_dir" -j "${CAIRN_BUILD_JOBS:-$(nproc)}"
