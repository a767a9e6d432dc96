// Byte-level BPE training: count the GPT-2 pre-tokenized words of a corpus, then repeatedly merge
// the most frequent adjacent pair, updating pair counts incrementally (only the words that hold
// the merged pair are revisited).
#include <algorithm>
#include <fstream>
#include <queue>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "model/detail/tokenizer_model.h"
#include "model/tokenizer.h"

namespace cairn {
namespace {

using detail::AddedTokenMatcher;
using detail::PieceScanner;
using detail::SplitPattern;

// Corpus files are read in blocks of about this size, cut after a newline, so that memory stays
// bounded for any file size. A piece never spans a block boundary; that only matters for a run of
// whitespace across the cut, which is too rare to change what is learnt.
constexpr size_t kReadBlockBytes = 16 << 20;
constexpr size_t kProgressEveryMerges = 1000;

uint64_t pack(int32_t left, int32_t right) {
  return uint64_t{static_cast<uint32_t>(left)} << 32 | static_cast<uint32_t>(right);
}
int32_t left_of(uint64_t pair) { return static_cast<int32_t>(pair >> 32); }
int32_t right_of(uint64_t pair) { return static_cast<int32_t>(pair & 0xFFFFFFFFu); }

// Counts the words of the text between special tokens.
void count_words(std::string_view text, const AddedTokenMatcher& specials,
                 std::unordered_map<std::string, uint64_t>* counts) {
  auto count_segment = [&](std::string_view segment) {
    PieceScanner scanner(SplitPattern::kGpt2, segment);
    std::string_view piece;
    while (scanner.next(&piece)) ++(*counts)[std::string(piece)];
  };
  size_t from = 0;
  while (auto match = specials.find(text, from)) {
    if (match->begin > from) count_segment(text.substr(from, match->begin - from));
    from = match->end;
  }
  if (from < text.size()) count_segment(text.substr(from));
}

Status count_file(const std::string& path, const AddedTokenMatcher& specials,
                  std::unordered_map<std::string, uint64_t>* counts, uint64_t* bytes_read) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return error(Code::not_found, path + ": cannot open corpus file");
  std::string block, carry;
  block.resize(kReadBlockBytes);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (in.bad()) return error(Code::io_error, path + ": read failed");
    *bytes_read += got;
    std::string text = std::move(carry);
    text.append(block, 0, got);
    carry.clear();
    if (in) {  // more to come: keep the tail after the last newline for the next block
      const size_t newline = text.rfind('\n');
      if (newline != std::string::npos) {
        carry = text.substr(newline + 1);
        text.resize(newline + 1);
      }
    }
    count_words(text, specials, counts);
  }
  if (!carry.empty()) count_words(carry, specials, counts);
  return {};
}

struct Word {
  std::vector<int32_t> symbols;
  uint64_t count;
};

// Max-heap entry: most frequent pair first; among equal counts, the smaller (left, right) ids.
struct Candidate {
  int64_t count;
  uint64_t pair;
  bool operator<(const Candidate& other) const {
    return count != other.count ? count < other.count : pair > other.pair;
  }
};

}  // namespace

Result<Tokenizer> train_bpe(const std::vector<std::string>& corpus_files, const BpeTrainOptions& options) {
  auto progress = [&](const std::string& line) {
    if (options.progress) options.progress(line);
  };
  if (corpus_files.empty()) return error(Code::invalid_argument, "train_bpe: no corpus files");
  std::set<std::string> distinct_specials;
  for (const auto& special : options.special_tokens) {
    if (special.empty()) return error(Code::invalid_argument, "train_bpe: a special token is empty");
    if (!distinct_specials.insert(special).second) {
      return error(Code::invalid_argument, "train_bpe: special token \"" + special + "\" is given twice");
    }
  }
  const size_t base = options.special_tokens.size() + 256;
  if (options.vocab_size < base) {
    return error(Code::invalid_argument, "train_bpe: vocab_size " + std::to_string(options.vocab_size) +
                                             " is below the " + std::to_string(base) +
                                             " special and byte tokens");
  }
  if (options.vocab_size > INT32_MAX) return error(Code::invalid_argument, "train_bpe: vocab_size is too large");

  // 1. Word counts.
  AddedTokenMatcher specials;
  specials.build(options.special_tokens);
  std::unordered_map<std::string, uint64_t> counts;
  for (const auto& path : corpus_files) {
    uint64_t bytes = 0;
    CAIRN_RETURN_IF_ERROR(count_file(path, specials, &counts, &bytes));
    progress("read " + path + ": " + std::to_string(bytes) + " bytes, " + std::to_string(counts.size()) +
             " distinct words so far");
  }

  // 2. The base vocabulary: special tokens, then the 256 bytes in byte order.
  auto model = std::make_shared<detail::TokenizerModel>();
  std::vector<std::string> token_bytes;  // raw bytes of each id (specials: their content)
  for (const auto& special : options.special_tokens) {
    model->added.push_back({static_cast<int32_t>(token_bytes.size()), special, /*special=*/true, false, false, false,
                            /*normalized=*/false});
    model->vocab.push_back(special);
    token_bytes.push_back(special);
  }
  for (int b = 0; b < 256; ++b) {
    token_bytes.emplace_back(1, static_cast<char>(b));
    model->vocab.push_back(detail::bytes_to_token(token_bytes.back()));
  }
  for (size_t id = 0; id < model->vocab.size(); ++id) model->vocab_ids.insert(static_cast<int32_t>(id), model->vocab);
  const auto first_byte_id = static_cast<int32_t>(options.special_tokens.size());

  // 3. Words as byte symbols, sorted so that the result does not depend on hash order.
  std::vector<std::pair<std::string, uint64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (auto& [bytes, count] : sorted) {
    Word word{{}, count};
    word.symbols.reserve(bytes.size());
    for (char c : bytes) word.symbols.push_back(first_byte_id + static_cast<uint8_t>(c));
    words.push_back(std::move(word));
  }
  sorted.clear();
  sorted.shrink_to_fit();

  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;  // may list a word more than once
  for (uint32_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t pair = pack(s[i], s[i + 1]);
      pair_counts[pair] += static_cast<int64_t>(words[w].count);
      auto& list = pair_words[pair];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [pair, count] : pair_counts) heap.push({count, pair});
  progress("counted " + std::to_string(words.size()) + " distinct words, " + std::to_string(pair_counts.size()) +
           " distinct pairs");

  // 4. Merges.
  std::vector<uint32_t> visited(words.size(), UINT32_MAX);  // merge number that last visited a word
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged_symbols;
  while (model->vocab.size() < options.vocab_size && !heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    auto current = pair_counts.find(top.pair);
    const int64_t count = current == pair_counts.end() ? 0 : current->second;
    if (count != top.count) {  // stale: counts only fall after a push, so re-queue the true count
      if (count > 0) heap.push({count, top.pair});
      continue;
    }
    if (count < static_cast<int64_t>(std::max<size_t>(options.min_frequency, 1))) break;

    const int32_t a = left_of(top.pair), b = right_of(top.pair);
    std::string bytes = token_bytes[static_cast<size_t>(a)] + token_bytes[static_cast<size_t>(b)];
    std::string token = detail::bytes_to_token(bytes);
    int32_t merged_id;
    if (auto existing = model->vocab_id(token)) {
      merged_id = *existing;
    } else {
      merged_id = static_cast<int32_t>(model->vocab.size());
      model->vocab.push_back(std::move(token));
      model->vocab_ids.insert(merged_id, model->vocab);
      token_bytes.push_back(std::move(bytes));
    }
    const auto merge_number = static_cast<uint32_t>(model->merges.size());
    model->merges.emplace_back(a, b);

    delta.clear();
    std::vector<uint32_t> holders = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    for (uint32_t w : holders) {
      if (visited[w] == merge_number) continue;
      visited[w] = merge_number;
      Word& word = words[w];
      auto& s = word.symbols;
      const auto weight = static_cast<int64_t>(word.count);
      merged_symbols.clear();
      bool changed = false;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          merged_symbols.push_back(merged_id);
          ++i;
          changed = true;
        } else {
          merged_symbols.push_back(s[i]);
        }
      }
      if (!changed) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pack(s[i], s[i + 1])] -= weight;
      for (size_t i = 0; i + 1 < merged_symbols.size(); ++i) {
        const uint64_t pair = pack(merged_symbols[i], merged_symbols[i + 1]);
        delta[pair] += weight;
        if (merged_symbols[i] == merged_id || merged_symbols[i + 1] == merged_id) {
          auto& list = pair_words[pair];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
      s.swap(merged_symbols);
    }
    for (const auto& [pair, change] : delta) {
      if (change == 0) continue;
      int64_t& total = pair_counts[pair];
      total += change;
      if (change > 0) heap.push({total, pair});
      if (total <= 0) {
        pair_counts.erase(pair);
        pair_words.erase(pair);
      }
    }
    pair_counts.erase(top.pair);
    if (model->merges.size() % kProgressEveryMerges == 0) {
      progress("learnt " + std::to_string(model->merges.size()) + " merges; vocabulary " +
               std::to_string(model->vocab.size()) + " of " + std::to_string(options.vocab_size) + " (last pair seen " +
               std::to_string(count) + " times)");
    }
  }
  progress("done: " + std::to_string(model->merges.size()) + " merges, vocabulary of " +
           std::to_string(model->vocab.size()));

  for (size_t rank = 0; rank < model->merges.size(); ++rank) {
    const auto [left, right] = model->merges[rank];
    model->rules.merges.insert(left, right,
                               detail::Merge{static_cast<uint32_t>(rank),
                                             *model->vocab_id(model->vocab[static_cast<size_t>(left)] +
                                                              model->vocab[static_cast<size_t>(right)])});
  }
  model->pre_tokenizer = {SplitPattern::kGpt2, /*byte_level_splits=*/true, /*add_prefix_space=*/false,
                          /*trim_offsets=*/true};
  model->post_processor_json = detail::kByteLevelPostProcessorJson;
  model->finish();
  CAIRN_RETURN_IF_ERROR(model->resolve_bos_eos(""));
  return Tokenizer(std::move(model));
}

}  // namespace cairn
