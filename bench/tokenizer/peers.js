// The JavaScript side of tokenizer_bench: encodes the bench text with npm's tiktoken (the WASM
// build of OpenAI's Rust tokenizer, encoding "gpt2") and gpt-tokenizer (pure JavaScript, r50k_base,
// which is GPT-2's), timing encode() alone: one untimed encode of the whole text first (JIT, caches),
// then RUNS timed ones. Run by tokenizer_bench once per round. Writes into OUT_DIR:
//   <name>.ids    the ids, little-endian int32
//   peers.json    [{"name", "version", "runs_mb_per_s": [...], "ids_file", "count"}]
//   node peers.js TEXT_FILE OUT_DIR RUNS
"use strict";
const fs = require("fs");
const path = require("path");

const [textFile, outDir, runsArg] = process.argv.slice(2);
const runs = Number(runsArg || 5);
const buffer = fs.readFileSync(textFile);
const text = buffer.toString("utf8");
const megabytes = buffer.length / 1e6;

function version(name) {
  return JSON.parse(fs.readFileSync(path.join(__dirname, "node_modules", name, "package.json"), "utf8")).version;
}

function measure(name, encode) {
  const perRun = [];
  let ids = encode(text);
  for (let i = 0; i < runs; ++i) {
    const start = process.hrtime.bigint();
    ids = encode(text);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    perRun.push(megabytes / seconds);
  }
  const file = path.join(outDir, name + ".ids");
  fs.writeFileSync(file, Buffer.from(Int32Array.from(ids).buffer));
  return { name, version: version(name), runs_mb_per_s: perRun, ids_file: file, count: ids.length };
}

fs.mkdirSync(outDir, { recursive: true });
const results = [];
{
  const { get_encoding } = require("tiktoken");
  const encoding = get_encoding("gpt2");
  results.push(measure("tiktoken", (t) => encoding.encode(t)));
  encoding.free();
}
{
  const { encode } = require("gpt-tokenizer/cjs/encoding/r50k_base");
  results.push(measure("gpt-tokenizer", (t) => encode(t)));
}
fs.writeFileSync(path.join(outDir, "peers.json"), JSON.stringify(results, null, 2) + "\n");
