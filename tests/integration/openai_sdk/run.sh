#!/bin/bash
# Runs sdk_test.mjs (the official `openai` npm SDK, 6.x) against a fresh `cairn node --serve`.
# Usage: run.sh CAIRN_BINARY FIXTURE_DIR. Installs the SDK into this folder's node_modules when it is
# missing (npm's cache makes that work offline once it has been fetched); exits 77, which ctest
# reports as skipped, only when npm is missing or cannot install it.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cairn="$1"
fixture="$2"

if [ ! -f "$here/node_modules/openai/package.json" ]; then
  if ! command -v npm >/dev/null; then
    echo "SKIPPED: npm is not installed, so the openai SDK cannot be installed"
    exit 77
  fi
  if ! (cd "$here" && npm install --no-audit --no-fund --prefer-offline openai@6 >"$here/npm-install.log" 2>&1); then
    echo "SKIPPED: npm install openai@6 failed (offline and not in npm's cache?):"
    tail -5 "$here/npm-install.log"
    exit 77
  fi
fi

work="$(mktemp -d)"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/ready"
env -u CAIRN_ADDR -u CAIRN_TOKEN "$cairn" node --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$work/data" \
  --serve "tiny=$fixture" >"$work/ready" 2>"$work/node.log" &
node_pid=$!
exec 3<"$work/ready"  # held open until exit, so the node never writes to a closed pipe
# "cairn node ready protocol=HOST:PORT http=HOST:PORT pid=N"
if ! read -r -t 30 line <&3; then
  echo "the node did not become ready:"; cat "$work/node.log"; exit 1
fi
http="$(sed -n 's/.* http=\([^ ]*\) .*/\1/p' <<<"$line")"
token="$(awk '$1 == "client" { print $2; exit }' "$work/data/tokens")"
if [ -z "$http" ] || [ -z "$token" ]; then
  echo "cannot read the node's address or token from: $line"; exit 1
fi

CAIRN_OPENAI_URL="http://$http/v1" CAIRN_TOKEN="$token" node "$here/sdk_test.mjs"
status=$?
if [ $status -ne 0 ]; then echo "--- node log ---"; tail -20 "$work/node.log"; fi
exit $status
