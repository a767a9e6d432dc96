#!/usr/bin/env bash
# Installs the build into a scratch prefix, builds tests/package/consumer against it with
# find_package(cairn), and pings a real node with it.
set -euo pipefail
build_dir=$1
cairn=$2
source_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
node_pid=""
cleanup() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/consumer" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "$work/build" >/dev/null

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "client $token" > "$work/tokens"
mkfifo "$work/ready"
"$cairn" node --listen 127.0.0.1:0 --http off --data-dir "$work/data" --token-file "$work/tokens" \
  > "$work/ready" 2> "$work/node.err" &
node_pid=$!
exec 3<"$work/ready"  # held open so the node's stdout never breaks
if ! read -r -t 30 ready <&3; then
  echo "the node did not become ready:" >&2
  cat "$work/node.err" >&2
  exit 1
fi
address=$(echo "$ready" | grep -o 'protocol=[^ ]*' | cut -d= -f2)
"$work/build/consumer" "$address" "$token"
