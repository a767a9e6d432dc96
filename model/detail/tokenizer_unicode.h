// Code point classes and UTF-8 decoding for the byte-level BPE pre-tokenizers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cairn::detail {

// Bit flags of a code point (see tokenizer_unicode_gen.py for the exact definitions).
enum UnicodeFlag : uint8_t {
  kLetter = 1,  // \p{L}
  kNumber = 2,  // \p{N}
  kSpace = 4,   // \s: White_Space
  kWord = 8,    // \w of Rust regex: Alphabetic, marks, Nd, Pc, Join_Control
};

struct UnicodeRange {
  uint32_t first;
  uint32_t last;
  uint8_t flags;
};
// Sorted, disjoint; code points in no range have no flag. Generated: tokenizer_unicode_data.cc.
extern const UnicodeRange kUnicodeRanges[];
extern const size_t kUnicodeRangeCount;

// A two-level lookup table built from kUnicodeRanges on first use (about 80 KB, shared).
class UnicodeTable {
 public:
  static const UnicodeTable& get();
  uint8_t flags(uint32_t cp) const {
    if (cp > 0x10FFFF) return 0;
    return blocks_[static_cast<size_t>(index_[cp >> kBlockBits]) << kBlockBits | (cp & kBlockMask)];
  }

 private:
  static constexpr unsigned kBlockBits = 7;
  static constexpr uint32_t kBlockMask = (1u << kBlockBits) - 1;
  UnicodeTable();
  uint16_t* index_ = nullptr;   // block number of each 128-code-point block
  uint8_t* blocks_ = nullptr;   // distinct blocks, 128 flag bytes each
};

// One decoded character of a UTF-8 text.
struct Utf8Char {
  uint32_t cp;   // the code point; for an invalid byte, 0xFFFFFFFF
  uint32_t len;  // bytes it takes, 1..4 (1 for an invalid byte)
};

// Decodes the character at p (p < end). Ill-formed sequences (overlong forms, surrogates, code
// points past U+10FFFF, truncated sequences) decode as one invalid byte.
inline Utf8Char decode_utf8(const uint8_t* p, const uint8_t* end) {
  const uint8_t b0 = p[0];
  if (b0 < 0x80) return {b0, 1};
  const size_t left = static_cast<size_t>(end - p);
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left >= 2 && (p[1] & 0xC0) == 0x80) return {(b0 & 0x1Fu) << 6 | (p[1] & 0x3Fu), 2};
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left >= 3 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
      const uint32_t cp = (b0 & 0x0Fu) << 12 | (p[1] & 0x3Fu) << 6 | (p[2] & 0x3Fu);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left >= 4 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) {
      const uint32_t cp = (b0 & 0x07u) << 18 | (p[1] & 0x3Fu) << 12 | (p[2] & 0x3Fu) << 6 | (p[3] & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
    }
  }
  return {0xFFFFFFFFu, 1};
}

// Appends `cp` as UTF-8.
void append_utf8(uint32_t cp, std::string* out);

}  // namespace cairn::detail
