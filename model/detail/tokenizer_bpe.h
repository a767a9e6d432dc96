// The BPE machinery of the tokenizer: GPT-2's byte <-> character alphabet, the pair -> merge table,
// the merge loop of one word, and the bounded cache of encoded words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cairn::detail {

// GPT-2's bytes_to_unicode(): every byte as a printable character. Bytes 33..126, 161..172 and
// 174..255 stand for themselves; the other 68 map to U+0100.. in byte order (space is U+0120 'Ġ').
uint32_t byte_to_char(uint8_t byte);
// The byte a character stands for, or -1 when it is not in the alphabet.
int byte_of_char(uint32_t cp);
// Byte-level form of raw bytes ("\x20the" -> "Ġthe"), as UTF-8.
std::string bytes_to_token(std::string_view bytes);
// Raw bytes of a byte-level token, or nullopt when one of its characters is not in the alphabet.
std::optional<std::string> token_to_bytes(std::string_view token);

// A fast, non-cryptographic hash of short byte strings.
inline uint64_t hash_bytes(const char* p, size_t n) {
  constexpr uint64_t kMul1 = 0x9E3779B97F4A7C15ull, kMul2 = 0xBF58476D1CE4E5B9ull, kMul3 = 0x94D049BB133111EBull;
  uint64_t h = kMul1 ^ (n * kMul3);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * kMul2;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * kMul3;
    h ^= h >> 29;
  }
  h *= kMul1;
  return h ^ (h >> 32);
}

// An open-addressing index string -> id over strings kept elsewhere, in a vector indexed by id
// (the vocabulary), so that they are stored once. Callers pass that vector to every call; it may
// grow between calls, but strings[id] must not change once inserted.
class StringIndex {
 public:
  // Makes strings[id] findable; an equal string inserted before now finds `id`.
  void insert(int32_t id, const std::vector<std::string>& strings);
  std::optional<int32_t> find(std::string_view s, const std::vector<std::string>& strings) const {
    if (slots_.empty()) return std::nullopt;
    const uint64_t h = hash_bytes(s.data(), s.size());
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return std::nullopt;
      if (slot.tag == tag && strings[static_cast<size_t>(slot.id)] == s) return slot.id;
    }
  }
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint32_t tag = 0;  // high half of the hash
    int32_t id = -1;   // -1: empty
  };
  void rehash(size_t slot_count, const std::vector<std::string>& strings);

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// What merging a pair gives: the merge's rank (its line in the merges list; lower merges first)
// and the merged token.
struct Merge {
  uint32_t rank;
  int32_t id;
};

// Open-addressing map (left id, right id) -> Merge. Constant after it is filled.
class MergeTable {
 public:
  // Sets the merge of a pair, replacing an earlier one (as Hugging Face does for duplicate lines).
  void insert(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{0, 0};
  };
  static uint64_t pack(int32_t left, int32_t right) {
    return uint64_t{static_cast<uint32_t>(left)} << 32 | static_cast<uint32_t>(right);
  }
  size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow();

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  unsigned shift_ = 64;
  size_t size_ = 0;
};

// A bounded map from a pre-tokenized word to its ids. When it holds max_entries words it is
// cleared (cheap, and a working set that large gains little from finer eviction). Not thread-safe:
// its owner serializes access.
class WordCache {
 public:
  explicit WordCache(size_t max_entries) : max_entries_(max_entries) {}
  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  // Words longer than this are not cached: rare, and they would crowd out the rest.
  static constexpr size_t kMaxWordBytes = 255;

  // Appends the cached ids of `word` (hash = hash_bytes(word)) to *out and returns true, or
  // returns false.
  bool find(std::string_view word, uint64_t hash, std::vector<int32_t>* out) const {
    if (slots_.empty()) return false;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return false;
      if (s.hash == hash && s.key_len == word.size() &&
          std::memcmp(keys_.data() + s.key_offset, word.data(), word.size()) == 0) {
        out->insert(out->end(), ids_.begin() + s.ids_offset, ids_.begin() + s.ids_offset + s.ids_len);
        return true;
      }
    }
  }
  // Caches `ids` for `word` (1..kMaxWordBytes bytes, not cached yet).
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count);
  void clear();
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0;
    uint32_t ids_offset = 0;
    uint16_t key_len = 0;  // 0: empty slot
    uint16_t ids_len = 0;
  };
  void rehash(size_t slot_count);

  size_t max_entries_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
  std::string keys_;          // the words, back to back
  std::vector<int32_t> ids_;  // their ids, back to back
};

// How a vocabulary turns the bytes of one word into ids. Constant after construction.
struct BpeRules {
  int32_t byte_ids[256];          // the token of each single byte, or -1 when the vocabulary lacks it
  MergeTable merges;
  std::optional<int32_t> unk_id;  // stands for a byte missing from the vocabulary; else it is dropped
  bool fuse_unk = false;          // consecutive unknown bytes make one unk
};

// Buffers of the merge loop, reused from word to word by one thread.
struct BpeScratch {
  struct Symbol {
    int32_t id;    // -1 once merged into its left neighbour
    int32_t prev;  // index of the previous live symbol, or -1
    int32_t next;  // index of the next live symbol, or -1
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;  // index of the left symbol
    int32_t left;
    int32_t right;
    int32_t merged;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

// Appends the ids of `word` to *out: its bytes as byte tokens, then the pair of lowest rank merged
// until none is left (leftmost first among equal ranks), as GPT-2 and Hugging Face do. A min-heap
// of candidate pairs keeps long words O(n log n).
void bpe_merge_word(const BpeRules& rules, std::string_view word, BpeScratch* scratch, std::vector<int32_t>* out);

// Replaces each maximal ill-formed subpart of `bytes` by U+FFFD, as Rust's from_utf8_lossy.
std::string utf8_lossy(std::string bytes);

}  // namespace cairn::detail
