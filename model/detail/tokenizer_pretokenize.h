// The split patterns of byte-level BPE pre-tokenizers, as hand-written scanners.
//
// Each scanner returns where the regex match that starts at `pos` ends. The patterns are
// alternations tried in order at each position (leftmost-first, as in Oniguruma, fancy-regex and
// JavaScript), and every character is covered by some alternative, so the pieces tile the text.
// Comments next to each step quote the alternative it implements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "model/detail/tokenizer_unicode.h"

namespace cairn::detail {

enum class SplitPattern : uint8_t {
  kNone,    // no split: the whole text is one piece (ByteLevel with use_regex: false alone)
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,   // as kLlama3 with \p{N} for \p{N}{1,3}: one digit per piece
};

// The pattern whose regex source (as tokenizer.json writes it) is `regex`; nullopt when it is none
// of the above.
std::optional<SplitPattern> split_pattern_from_regex(std::string_view regex);
// The regex source of a pattern (empty for kNone).
std::string_view split_pattern_regex(SplitPattern pattern);

// Flags of the ASCII characters, so that the common case needs no table lookup.
struct AsciiFlags {
  uint8_t flags[128];
  constexpr AsciiFlags() : flags() {
    for (int c = 'a'; c <= 'z'; ++c) flags[c] = kLetter | kWord;
    for (int c = 'A'; c <= 'Z'; ++c) flags[c] = kLetter | kWord;
    for (int c = '0'; c <= '9'; ++c) flags[c] = kNumber | kWord;
    for (int c = '\t'; c <= '\r'; ++c) flags[c] = kSpace;
    flags[int{' '}] = kSpace;
    flags[int{'_'}] = kWord;
  }
};
inline constexpr AsciiFlags kAsciiFlags{};

// The character at p: its flags and length in bytes. Invalid UTF-8 bytes have no flag: they count
// as "other" (neither letter, number nor space) one byte at a time.
struct CharInfo {
  uint8_t flags;
  uint32_t len;
};
inline CharInfo char_info(const uint8_t* p, const uint8_t* end, const UnicodeTable& table) {
  if (*p < 0x80) return {kAsciiFlags.flags[*p], 1};
  const Utf8Char c = decode_utf8(p, end);
  return {c.cp == 0xFFFFFFFFu ? uint8_t{0} : table.flags(c.cp), c.len};
}

// Splits byte-level text into the pieces of a pattern, one call of next() per piece.
class PieceScanner {
 public:
  PieceScanner(SplitPattern pattern, std::string_view text)
      : pattern_(pattern),
        begin_(reinterpret_cast<const uint8_t*>(text.data())),
        end_(begin_ + text.size()),
        pos_(begin_),
        table_(UnicodeTable::get()) {}

  // Stores the next piece and returns true, or returns false at the end of the text.
  bool next(std::string_view* piece) {
    if (pos_ == end_) return false;
    const uint8_t* stop = end_;
    switch (pattern_) {
      case SplitPattern::kNone: break;
      case SplitPattern::kGpt2: stop = gpt2_end(pos_); break;
      case SplitPattern::kLlama3: stop = llama3_end(pos_, 3); break;
      case SplitPattern::kQwen2: stop = llama3_end(pos_, 1); break;
    }
    *piece = std::string_view(reinterpret_cast<const char*>(pos_), static_cast<size_t>(stop - pos_));
    pos_ = stop;
    return true;
  }

 private:
  static constexpr uint8_t kLetterOrNumberOrSpace = kLetter | kNumber | kSpace;

  CharInfo info(const uint8_t* p) const { return char_info(p, end_, table_); }
  static bool is_other(uint8_t flags) { return (flags & kLetterOrNumberOrSpace) == 0; }

  // 's|'t|'re|'ve|'m|'ll|'d, case-sensitive or not; p points at the apostrophe. Returns the match
  // length or 0. Case-insensitively, U+017F (long s) matches 's' too, as Unicode case folding has it.
  size_t contraction(const uint8_t* p, bool ignore_case) const {
    const size_t left = static_cast<size_t>(end_ - p);
    if (left < 2) return 0;
    const uint8_t fold = ignore_case ? 0x20 : 0;  // c | 0x20 == 's' only for 'S' and 's'
    const uint8_t d = p[1] | fold;
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return 2;
    if (left < 3) return 0;
    if (ignore_case && p[1] == 0xC5 && p[2] == 0xBF) return 3;  // U+017F
    const uint8_t e = p[2] | fold;
    if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return 3;
    return 0;
  }

  // The end of a run of letters (kLetter), numbers (kNumber) or "other" (want == 0) from p.
  const uint8_t* run_end(const uint8_t* p, uint8_t want) const {
    while (p < end_) {
      const CharInfo c = info(p);
      const bool in_run = want ? (c.flags & want) != 0 : is_other(c.flags);
      if (!in_run) break;
      p += c.len;
    }
    return p;
  }

  // The whitespace alternatives, p at a whitespace character:
  //   \s*[\r\n]+ (when newlines count): up to and including the run's last CR or LF;
  //   \s+(?!\S): the whole run at the end of the text, else the run less its last character;
  //   \s+: the run, when it is a single character.
  const uint8_t* whitespace_end(const uint8_t* p, bool newlines) const {
    const uint8_t* q = p;
    const uint8_t* last = p;
    const uint8_t* after_newline = nullptr;
    while (q < end_) {
      const CharInfo c = info(q);
      if (!(c.flags & kSpace)) break;
      if (*q == '\r' || *q == '\n') after_newline = q + 1;
      last = q;
      q += c.len;
    }
    if (newlines && after_newline) return after_newline;
    if (q == end_ || last == p) return q;
    return last;
  }

  const uint8_t* gpt2_end(const uint8_t* p) const {
    if (*p == '\'') {
      if (size_t n = contraction(p, false)) return p + n;
    }
    CharInfo c = info(p);
    const uint8_t* q = p;
    // " ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+": an optional space, then a run of one kind.
    if (*p == ' ' && p + 1 < end_) {
      const CharInfo next = info(p + 1);
      if (!(next.flags & kSpace)) {
        q = p + 1;
        c = next;
      }
    }
    if (!(c.flags & kSpace)) {
      const uint8_t want = (c.flags & kLetter) ? kLetter : (c.flags & kNumber) ? kNumber : 0;
      return run_end(q, want);
    }
    return whitespace_end(p, false);
  }

  const uint8_t* llama3_end(const uint8_t* p, int max_digits) const {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (*p == '\'') {
      if (size_t n = contraction(p, true)) return p + n;
    }
    const CharInfo c = info(p);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c.flags & kLetter) return run_end(p, kLetter);
    if (!(c.flags & kNumber) && *p != '\r' && *p != '\n' && p + c.len < end_) {
      if (info(p + c.len).flags & kLetter) return run_end(p + c.len, kLetter);
    }
    // \p{N}{1,3}
    if (c.flags & kNumber) {
      const uint8_t* q = p;
      for (int i = 0; i < max_digits && q < end_; ++i) {
        const CharInfo d = info(q);
        if (!(d.flags & kNumber)) break;
        q += d.len;
      }
      return q;
    }
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"
    const uint8_t* q = nullptr;
    if (is_other(c.flags)) {
      q = p;
    } else if (*p == ' ' && p + 1 < end_ && is_other(info(p + 1).flags)) {
      q = p + 1;
    }
    if (q) {
      q = run_end(q, 0);
      while (q < end_ && (*q == '\r' || *q == '\n')) ++q;
      return q;
    }
    // Only whitespace is left: \s*[\r\n]+|\s+(?!\S)|\s+
    return whitespace_end(p, true);
  }

  SplitPattern pattern_;
  const uint8_t* begin_;
  const uint8_t* end_;
  const uint8_t* pos_;
  const UnicodeTable& table_;
};

}  // namespace cairn::detail
