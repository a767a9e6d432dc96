// Encodes a text file with Hugging Face tokenizers (the npm package "tokenizers") and prints
// {"ids": [...], "decoded": "...", "vocab_size": N} on stdout. Used by tokenizer_test.cc to check
// that a tokenizer.json written by Cairn loads in Hugging Face tokenizers and encodes the same.
//   NODE_PATH=PEERS/node_modules node hf_encode.js TOKENIZER_JSON TEXT_FILE
"use strict";
const fs = require("fs");
const { Tokenizer } = require("tokenizers");

(async () => {
  const tokenizer = Tokenizer.fromFile(process.argv[2]);
  const text = fs.readFileSync(process.argv[3], "utf8");
  const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
  const ids = Array.from(encoding.getIds());
  const decoded = await tokenizer.decode(ids, false);
  process.stdout.write(JSON.stringify({ ids, decoded, vocab_size: tokenizer.getVocabSize(true) }) + "\n");
})().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
