#!/usr/bin/env bash
# The main job on the embedded default: builds Cairn, starts one node with every role in one
# process (data under ./cairn-data), talks to it with the client, shows its status, and stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${CAIRN_BUILD_DIR:-$root/build}
data_dir=${CAIRN_DATA_DIR:-$root/cairn-data}

"$root/scripts/build.sh" "$build_dir"
cairn=$build_dir/cli/cairn

run=$(mktemp -d)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$run"
}
trap cleanup EXIT

echo "== starting a node (config: configs/node.yaml, data: $data_dir)"
mkfifo "$run/ready"
"$cairn" node --config "$root/configs/node.yaml" --data-dir "$data_dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  > "$run/ready" 2> >(sed 's/^/   node: /' >&2) &
node_pid=$!
exec 3<"$run/ready"
read -r -t 60 ready <&3 || { echo "the node did not start" >&2; exit 1; }
echo "   $ready"
address=$(echo "$ready" | grep -o 'protocol=[^ ]*' | cut -d= -f2)
http=$(echo "$ready" | grep -o 'http=[^ ]*' | cut -d= -f2)
export CAIRN_ADDR=$address
tokens=$data_dir/tokens

echo "== cairn ping"
"$cairn" ping --count 3 --token-file "$tokens"
echo "== cairn status"
"$cairn" status --token-file "$tokens"
echo "== GET /health"
if command -v curl >/dev/null; then curl -s "http://$http/health"; echo; fi
echo "== cairn admin shutdown"
"$cairn" admin shutdown --token-file "$tokens"
wait "$node_pid"
node_pid=""
echo "== done: the node stopped cleanly; its data stays in $data_dir"
