#!/usr/bin/env bash
# Builds Cairn and runs the whole test suite (unit, integration with real nodes, Python client,
# package consumer). GPU tests skip themselves on machines without a GPU.
#   scripts/test.sh [extra ctest arguments, e.g. -R supervisor]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${CAIRN_BUILD_DIR:-$root/build}

"$root/scripts/build.sh" "$build_dir"
cd "$build_dir"
ctest --output-on-failure -j "${CAIRN_TEST_JOBS:-2}" "$@"
