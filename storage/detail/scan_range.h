// The keys a KvStore::scan visits, in one place so that every store agrees on them:
//   seek to seek_key(); for each key in order: stop at is_past_end(key), skip is_cursor(key).
#pragma once

#include <string_view>

namespace cairn::storage::detail {

// Holds views: the strings must outlive it.
class ScanRange {
 public:
  ScanRange(std::string_view prefix, std::string_view start_after)
      : prefix_(prefix), start_after_(start_after) {}

  // The first key that may be visited: the larger of the prefix and the cursor.
  std::string_view seek_key() const { return start_after_ > prefix_ ? start_after_ : prefix_; }
  // A key at or after seek_key() that no longer begins with the prefix: every later key is
  // outside the range too.
  bool is_past_end(std::string_view key) const { return key.substr(0, prefix_.size()) != prefix_; }
  // The cursor itself, which is excluded (start_after is exclusive).
  bool is_cursor(std::string_view key) const { return !start_after_.empty() && key == start_after_; }

 private:
  std::string_view prefix_;
  std::string_view start_after_;
};

}  // namespace cairn::storage::detail
