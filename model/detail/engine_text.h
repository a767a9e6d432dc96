// Incremental detokenization with stop strings, for the inference engine (torch-free): turns a
// request's generated tokens into text deltas that never contain a stop string nor split a UTF-8
// character.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace cairn::detail {

class IncrementalText {
 public:
  // `tokenizer` may be null (then there is never any text). `stop` strings must be non-empty.
  IncrementalText(const Tokenizer* tokenizer, std::vector<std::string> stop);

  // Adds a token's text (call only for tokens that have text: not special tokens). Returns the
  // delta that may be sent now. Sets stopped() when the text reached a stop string; the delta then
  // ends right before it and nothing is sent afterwards.
  std::string add(int64_t token_id);
  // At the end of the request: whatever was held back (incomplete characters decoded lossily),
  // cut before a stop string if one appears. "" once stopped.
  std::string flush();

  bool stopped() const { return stopped_; }

 private:
  // Appends decoded text and returns what may be sent; `final` holds nothing back.
  std::string advance(bool final);

  const Tokenizer* tokenizer_;
  std::vector<std::string> stop_;
  size_t max_stop_ = 0;
  std::vector<int32_t> pending_;  // ids whose bytes do not yet end on a character boundary
  std::string text_;              // decoded text of the output so far
  size_t sent_ = 0;               // bytes of text_ already returned
  bool stopped_ = false;
};

}  // namespace cairn::detail
