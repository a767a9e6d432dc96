#include "model/detail/engine_text.h"

#include <algorithm>

namespace cairn::detail {
namespace {

// A UTF-8 character is at most 4 bytes; byte-level tokens carry at least one byte each, so 4
// pending tokens that still end in U+FFFD hold a real invalid sequence, not an incomplete one.
constexpr size_t kMaxPendingTokens = 4;
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

IncrementalText::IncrementalText(const Tokenizer* tokenizer, std::vector<std::string> stop)
    : tokenizer_(tokenizer), stop_(std::move(stop)) {
  for (const std::string& s : stop_) max_stop_ = std::max(max_stop_, s.size());
}

std::string IncrementalText::add(int64_t token_id) {
  if (tokenizer_ == nullptr || stopped_) return {};
  pending_.push_back(static_cast<int32_t>(token_id));
  std::string decoded = tokenizer_->decode(pending_);
  if (ends_with(decoded, kReplacement) && pending_.size() < kMaxPendingTokens) return {};
  pending_.clear();
  text_ += decoded;
  return advance(/*final=*/false);
}

std::string IncrementalText::flush() {
  if (tokenizer_ == nullptr || stopped_) return {};
  if (!pending_.empty()) {
    text_ += tokenizer_->decode(pending_);
    pending_.clear();
  }
  return advance(/*final=*/true);
}

std::string IncrementalText::advance(bool final) {
  // A stop string cannot start before sent_: every suffix that could begin one was held back.
  size_t stop_at = std::string::npos;
  for (const std::string& s : stop_) stop_at = std::min(stop_at, text_.find(s, sent_));
  if (stop_at != std::string::npos) {
    std::string out = text_.substr(sent_, stop_at - sent_);
    sent_ = text_.size();
    stopped_ = true;
    return out;
  }
  size_t end = text_.size();
  if (!final) {
    // Hold back the longest tail that is a proper prefix of some stop string.
    const size_t unsent = text_.size() - sent_;
    for (size_t hold = std::min(unsent, max_stop_ == 0 ? 0 : max_stop_ - 1); hold > 0; --hold) {
      const std::string_view tail(text_.data() + text_.size() - hold, hold);
      const bool prefix = std::any_of(stop_.begin(), stop_.end(), [&](const std::string& s) {
        return s.size() > hold && std::string_view(s).substr(0, hold) == tail;
      });
      if (prefix) {
        end = text_.size() - hold;
        break;
      }
    }
  }
  std::string out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

}  // namespace cairn::detail
