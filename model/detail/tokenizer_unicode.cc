#include "model/detail/tokenizer_unicode.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace cairn::detail {

const UnicodeTable& UnicodeTable::get() {
  static const UnicodeTable table;  // built once, never freed: used until exit
  return table;
}

UnicodeTable::UnicodeTable() {
  constexpr uint32_t kCodePoints = 0x110000;
  constexpr uint32_t kBlockSize = 1u << kBlockBits;
  std::vector<uint8_t> flat(kCodePoints, 0);
  for (size_t i = 0; i < kUnicodeRangeCount; ++i) {
    const UnicodeRange& r = kUnicodeRanges[i];
    std::memset(flat.data() + r.first, r.flags, r.last - r.first + 1);
  }
  // Deduplicate the blocks: most of the code space is a few repeated patterns.
  std::map<std::string, uint16_t> seen;
  std::string distinct;
  index_ = new uint16_t[kCodePoints / kBlockSize];
  for (uint32_t block = 0; block < kCodePoints / kBlockSize; ++block) {
    std::string bytes(reinterpret_cast<const char*>(flat.data()) + block * kBlockSize, kBlockSize);
    auto [it, inserted] = seen.emplace(bytes, static_cast<uint16_t>(seen.size()));
    if (inserted) distinct += bytes;
    index_[block] = it->second;
  }
  blocks_ = new uint8_t[distinct.size()];
  std::memcpy(blocks_, distinct.data(), distinct.size());
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace cairn::detail
