#!/usr/bin/env bash
# The main job: builds Cairn, starts one node (data under ./cairn-data) with the echo, registry,
# train and inference roles, pretrains a small Llama-family model (3.4M parameters) on The Devil's
# Dictionary with configs/train/pretrain-devil.yaml, which registers it as model "devil", then
# downloads the newest version and samples from it, serves it from the node and queries it over
# the OpenAI-compatible API and the protocol, and stops the node.
#
#   scripts/demo.sh                  2 epochs of the corpus (108 steps: a minute or two on 2 cores)
#   DEMO_EPOCHS=4 scripts/demo.sh    the config's own 4 epochs (216 steps)
#   DEMO_STEPS=20 scripts/demo.sh    a quick look (sets max_steps)
#
# CAIRN_BUILD_DIR (default ./build) and CAIRN_DATA_DIR (default ./cairn-data) move the build and
# the node's data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${CAIRN_BUILD_DIR:-$root/build}
data_dir=${CAIRN_DATA_DIR:-$root/cairn-data}
# configs/train/pretrain-devil.yaml reads the corpus and tokenizer from here.
demo_data=$root/cairn-data/demo

"$root/scripts/build.sh" "$build_dir"
cairn=$build_dir/cli/cairn

run=$(mktemp -d)
mkdir -p "$data_dir"
node_log=$data_dir/node.log  # the node's log (stderr), kept off the screen so the progress bar stays on one line
node_pid=""
cleanup() {
  local status=$?
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$run"
  if [ "$status" -ne 0 ]; then echo "demo failed; the node's log ends with:" >&2; tail -n 20 "$node_log" >&2 || true; fi
}
trap cleanup EXIT

echo "== the demo corpus and its tokenizer (cairn train demo-data)"
"$cairn" train demo-data --out "$demo_data"

echo "== starting a node with roles echo, registry, train, inference (config: configs/node.yaml, data: $data_dir)"
mkfifo "$run/ready"
CAIRN_NODE_ROLES=echo,registry,train,inference \
  "$cairn" node --config "$root/configs/node.yaml" --data-dir "$data_dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  > "$run/ready" 2>"$node_log" &
node_pid=$!
exec 3<"$run/ready"
read -r -t 60 ready <&3 || { echo "the node did not start" >&2; exit 1; }
echo "   $ready (log: $node_log)"
export CAIRN_ADDR=$(echo "$ready" | grep -o 'protocol=[^ ]*' | cut -d= -f2)
http=$(echo "$ready" | grep -o 'http=[^ ]*' | cut -d= -f2)
export CAIRN_TOKEN=$(awk '$1 == "admin" { print $2; exit }' "$data_dir/tokens")

echo "== cairn status"
"$cairn" status
echo "== GET /health"
if command -v curl >/dev/null; then curl -s "http://$http/health"; echo; fi

overrides=(--set "num_epochs=${DEMO_EPOCHS:-2}")
[ -n "${DEMO_STEPS:-}" ] && overrides+=(--set "max_steps=$DEMO_STEPS")
echo "== cairn train submit configs/train/pretrain-devil.yaml ${overrides[*]} --watch"
"$cairn" train submit "$root/configs/train/pretrain-devil.yaml" "${overrides[@]}" --watch
echo "== cairn train list"
"$cairn" train list

echo "== the registered model: cairn models show devil"
"$cairn" models show devil
echo "== cairn models download devil@latest"
"$cairn" models download devil@latest --to "$run/devil"
ls "$run/devil"  # weights, config and the job's tokenizer: generate reads them as they are

echo "== cairn generate: samples from the model"
for prompt in "LAWYER, n." "MARRIAGE, n." "PATIENCE, n."; do
  echo "-- $prompt"
  "$cairn" generate --model "$run/devil" --prompt "$prompt" --max-tokens 48 --temperature 0.8 --top-p 0.95 --seed 1
  echo
done

echo "== serving it: cairn serve load devil devil@latest (the inference role, continuous batching)"
"$cairn" serve load devil devil@latest
echo "== POST /v1/completions (OpenAI-compatible, on the node's --http port)"
if command -v curl >/dev/null; then
  curl -s "http://$http/v1/completions" -H "Authorization: Bearer $CAIRN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"model": "devil", "prompt": "CYNIC, n.", "max_tokens": 32, "temperature": 0.8, "seed": 1}'
  echo
fi
echo "== cairn complete (the same over the msgpack protocol, streamed)"
"$cairn" complete --model devil --prompt "POLITICS, n." --max-tokens 32 --temperature 0.8 --seed 2
echo

echo "== cairn admin shutdown"
"$cairn" admin shutdown
wait "$node_pid"
node_pid=""
echo "== done: the node stopped cleanly; its data (the run, its metrics, every version of devil) stays in $data_dir"
echo "   (restart it with the same --data-dir and try: cairn runs list --experiment devil-pretrain)"
