// Byte-level BPE tokenizers as GPT-2 and Llama 3 use them: load Hugging Face tokenizer.json files
// (or GPT-2's encoder.json + vocab.bpe), encode, decode, train a new vocabulary, and save it as a
// tokenizer.json that Hugging Face tokenizers loads.
//
// Supported tokenizer.json shapes (anything else is rejected at load with a message naming it):
//   - model: BPE with merges as "a b" strings or ["a", "b"] pairs; ignore_merges; unk_token, fuse_unk;
//   - normalizer: null;
//   - pre_tokenizer: ByteLevel (use_regex: GPT-2's split pattern), or a Sequence of a Split with a
//     Regex and behavior Isolated followed by ByteLevel(use_regex: false). The Split patterns
//     recognized are GPT-2's, Llama 3's (also cl100k's) and Qwen 2's; each runs as a hand-written
//     scanner with the exact semantics of the regex;
//   - decoder: ByteLevel or null; post_processor: kept for save, never applied (encode adds no
//     special tokens);
//   - added_tokens with single_word, lstrip, rstrip and normalized, split out of the text first,
//     leftmost-longest, as Hugging Face does.
//
// Character classes follow Unicode 15.0 (model/detail/tokenizer_unicode_data.cc): \s is the
// White_Space property, as in Hugging Face tokenizers (Oniguruma) and tiktoken. JavaScript encoders
// such as gpt-3-encoder differ on two code points only: U+0085 (not \s in JS) and U+FEFF (\s in JS).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn {

namespace detail {
struct TokenizerModel;
}
struct BpeTrainOptions;

// An immutable tokenizer. Copies are cheap and share the loaded vocabulary. Every method is safe to
// call from several threads at once. encode() remembers the ids of up to 131072 distinct words
// (some 10 MB, shared by the copies; emptied when full); a call made while another one uses that
// cache works with a cache of its own instead of waiting.
class Tokenizer {
 public:
  // path_or_dir: a tokenizer.json, or a directory holding tokenizer.json, or holding GPT-2's
  // encoder.json and vocab.bpe. bos/eos come from tokenizer_config.json beside it when present (see
  // bos_id()). Fails with not_found when no tokenizer file is there, io_error when one cannot be
  // read, and invalid_argument when its content is malformed or unsupported; the message names the
  // file and the problem.
  static Result<Tokenizer> load(const std::string& path_or_dir);

  // The ids of `text`, without special tokens added. Added and special tokens written in the text
  // are recognized (the text is split on them first). Bytes that are not valid UTF-8 are encoded as
  // their byte tokens, each on its own.
  std::vector<int32_t> encode(std::string_view text) const;

  // The text of `ids`: the bytes of every token joined, with invalid UTF-8 replaced by U+FFFD per
  // maximal subpart (as Rust's from_utf8_lossy and Hugging Face do). Unknown ids are skipped.
  std::string decode(const std::vector<int32_t>& ids) const;

  // Token strings as tokenizer.json writes them: byte-level form for the BPE vocabulary ("Ġthe"),
  // content for added tokens ("<|endoftext|>"). Added tokens are looked up first.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;

  // One past the largest id of the vocabulary and the added tokens.
  size_t vocab_size() const;

  // Begin and end of sequence, looked up in this order: tokenizer_config.json's bos_token/eos_token,
  // generation_config.json's then config.json's bos_token_id/eos_token_id (the first one when a
  // list), and finally well-known special tokens among the added tokens ("<|begin_of_text|>",
  // "<s>", "<|endoftext|>"; "<|end_of_text|>", "</s>", "<|endoftext|>").
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

  // The added tokens (special or not), by ascending id.
  struct AddedToken {
    int32_t id = 0;
    std::string content;
    bool special = false;
    bool single_word = false;  // only matches a whole word
    bool lstrip = false;       // swallows the whitespace on its left
    bool rstrip = false;       // swallows the whitespace on its right
    bool normalized = false;   // matched after the (non-normalized) tokens
  };
  const std::vector<AddedToken>& added_tokens() const;

 private:
  friend Status save_tokenizer_json(const Tokenizer&, const std::string&);
  friend Result<Tokenizer> train_bpe(const std::vector<std::string>&, const BpeTrainOptions&);
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerModel> model) : model_(std::move(model)) {}

  std::shared_ptr<const detail::TokenizerModel> model_;  // never null
};

// Options of train_bpe.
struct BpeTrainOptions {
  // Size of the result, counting the special tokens and the 256 byte tokens: at least
  // special_tokens.size() + 256. Training stops earlier when no pair is frequent enough.
  size_t vocab_size = 8000;
  // Given ids 0, 1, ... in this order, matched as special tokens in text, and never split or learnt
  // from: the corpus is split on them before counting.
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // A pair seen fewer times than this in the corpus is never merged.
  size_t min_frequency = 2;
  // Called with a line of progress now and then (files read, words counted, merges learnt); may be
  // empty. Called on the calling thread.
  std::function<void(const std::string&)> progress;
};

// Learns a byte-level BPE vocabulary from the corpus files, pre-tokenized with GPT-2's pattern.
// Fails with not_found / io_error naming a file that cannot be read, and invalid_argument for bad
// options. Deterministic: the same corpus and options give the same vocabulary.
Result<Tokenizer> train_bpe(const std::vector<std::string>& corpus_files, const BpeTrainOptions& options);

// Writes `tokenizer` as a Hugging Face tokenizer.json (merges as "a b" strings, which every version
// of tokenizers reads). Fails with io_error naming the path.
Status save_tokenizer_json(const Tokenizer& tokenizer, const std::string& path);

}  // namespace cairn
