// What a loaded Tokenizer holds, shared by loading (tokenizer.cc), training (tokenizer_train.cc)
// and saving.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/detail/tokenizer_bpe.h"
#include "model/detail/tokenizer_pretokenize.h"
#include "model/tokenizer.h"

namespace cairn::detail {

// Finds added tokens in text: leftmost match first, the longest one at that position (Hugging
// Face's Aho-Corasick with MatchKind::LeftmostLongest). A byte trie; constant after build().
class AddedTokenMatcher {
 public:
  struct Match {
    size_t begin;
    size_t end;
    size_t token;  // index given to build()
  };
  // tokens[i] is matched as index i. Empty strings are ignored.
  void build(const std::vector<std::string>& tokens);
  bool empty() const { return nodes_.size() <= 1; }
  // The first match that starts at or after `from`, or nullopt.
  std::optional<Match> find(std::string_view text, size_t from) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;
  };
  int32_t child(int32_t node, uint8_t byte) const;

  std::vector<Node> nodes_;
  bool starts_[256] = {};  // bytes that begin some token
};

// How text becomes pieces before BPE, and how that is written back to tokenizer.json.
struct PreTokenizerConfig {
  SplitPattern pattern = SplitPattern::kGpt2;
  // true: one ByteLevel pre-tokenizer splits with GPT-2's pattern (use_regex), or not at all
  // (kNone). false: a Sequence of Split(pattern) and ByteLevel(use_regex: false).
  bool byte_level_splits = true;
  // ByteLevel's add_prefix_space: a space is put before each text segment (byte_level_splits) or
  // each piece (Sequence form) that does not start with one.
  bool add_prefix_space = false;
  bool trim_offsets = true;  // only written back; offsets are not computed
};

// The post_processor written for tokenizers made here (GPT-2 files, training): Hugging Face's
// ByteLevel one, which only trims offsets.
inline constexpr const char* kByteLevelPostProcessorJson =
    R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true})";

// Filled by loading or training, then finish(); constant from then on (Tokenizer holds it const).
struct TokenizerModel {
  PreTokenizerConfig pre_tokenizer;
  BpeRules rules;
  std::vector<std::pair<int32_t, int32_t>> merges;  // in rank order, as in the file
  std::vector<std::string> vocab;                    // model vocabulary by id; "" where no token
  StringIndex vocab_ids;                             // token -> id, over `vocab`
  bool ignore_merges = false;                        // a word found whole in the vocabulary is one token
  StringIndex vocab_by_bytes;                        // raw bytes -> id, over `id_bytes` (ignore_merges)
  std::optional<std::string> unk_token;
  std::vector<Tokenizer::AddedToken> added;          // by ascending id
  std::unordered_map<std::string, int32_t> added_ids;
  AddedTokenMatcher match_raw;                       // normalized == false, matched first
  AddedTokenMatcher match_normalized;                // normalized == true
  std::vector<size_t> raw_index, normalized_index;   // matcher index -> index in `added`
  std::vector<std::string> id_bytes;                 // what decode() writes for each id
  std::vector<bool> id_known;
  size_t vocab_size = 0;
  std::optional<int32_t> bos_id, eos_id;
  std::string post_processor_json = "null";          // kept verbatim for save

  // The word cache of one encode() at a time: a call that finds it taken uses a cache of its own.
  static constexpr size_t kSharedCacheWords = 1 << 17;
  mutable std::mutex cache_mutex;
  mutable WordCache shared_cache{kSharedCacheWords};  // guarded by cache_mutex

  // Derives id_bytes, id_known, vocab_size, rules.byte_ids, vocab_by_bytes and the matchers from
  // vocab, added and merges. Called once, after those are set.
  void finish();

  void encode(std::string_view text, std::vector<int32_t>* out) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::optional<int32_t> token_id(std::string_view token) const;
  std::optional<int32_t> vocab_id(std::string_view token) const { return vocab_ids.find(token, vocab); }

  // Sets bos_id/eos_id for a tokenizer loaded from `dir` ("" for none; see Tokenizer::bos_id()).
  // Fails with invalid_argument naming a config file there that is not valid JSON.
  Status resolve_bos_eos(const std::string& dir);
};

}  // namespace cairn::detail
