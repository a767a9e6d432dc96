#include "model/detail/tokenizer_bpe.h"

#include <algorithm>

#include "model/detail/tokenizer_unicode.h"

namespace cairn::detail {
namespace {

bool byte_stands_for_itself(unsigned b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

struct ByteAlphabet {
  uint32_t char_of_byte[256];
  int16_t byte_of_char[324];  // the alphabet's characters are all below U+0144
  ByteAlphabet() {
    std::fill(std::begin(byte_of_char), std::end(byte_of_char), int16_t{-1});
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; ++b) {
      char_of_byte[b] = byte_stands_for_itself(b) ? b : next++;
      byte_of_char[char_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet table;
  return table;
}

// Min-heap order: lower rank first, then the leftmost pair.
bool heap_after(const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

}  // namespace

uint32_t byte_to_char(uint8_t byte) { return alphabet().char_of_byte[byte]; }

int byte_of_char(uint32_t cp) { return cp < 324 ? alphabet().byte_of_char[cp] : -1; }

std::string bytes_to_token(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(byte_to_char(static_cast<uint8_t>(c)), &out);
  return out;
}

std::optional<std::string> token_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  const auto* p = reinterpret_cast<const uint8_t*>(token.data());
  const auto* end = p + token.size();
  while (p < end) {
    const Utf8Char c = decode_utf8(p, end);
    const int b = c.cp == 0xFFFFFFFFu ? -1 : byte_of_char(c.cp);
    if (b < 0) return std::nullopt;
    out.push_back(static_cast<char>(b));
    p += c.len;
  }
  return out;
}

void MergeTable::insert(int32_t left, int32_t right, Merge merge) {
  if ((size_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = pack(left, right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == key) {
      s.merge = merge;
      return;
    }
    if (s.key == kEmpty) {
      s.key = key;
      s.merge = merge;
      ++size_;
      return;
    }
  }
}

void MergeTable::grow() {
  std::vector<Slot> old = std::move(slots_);
  const size_t count = old.empty() ? 1024 : old.size() * 2;
  slots_.assign(count, Slot{});
  mask_ = count - 1;
  shift_ = 64;
  for (size_t c = count; c > 1; c >>= 1) --shift_;
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    for (size_t i = slot_of(s.key);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty) {
        slots_[i] = s;
        break;
      }
    }
  }
}

void StringIndex::insert(int32_t id, const std::vector<std::string>& strings) {
  if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 1024 : slots_.size() * 2, strings);
  const std::string& s = strings[static_cast<size_t>(id)];
  const uint64_t h = hash_bytes(s.data(), s.size());
  const auto tag = static_cast<uint32_t>(h >> 32);
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    Slot& slot = slots_[i];
    if (slot.id < 0) {
      slot = {tag, id};
      ++size_;
      return;
    }
    if (slot.tag == tag && strings[static_cast<size_t>(slot.id)] == s) {
      slot.id = id;
      return;
    }
  }
}

void StringIndex::rehash(size_t slot_count, const std::vector<std::string>& strings) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(slot_count, Slot{});
  mask_ = slot_count - 1;
  for (const Slot& slot : old) {
    if (slot.id < 0) continue;
    const std::string& s = strings[static_cast<size_t>(slot.id)];
    for (size_t i = hash_bytes(s.data(), s.size()) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].id < 0) {
        slots_[i] = slot;
        break;
      }
    }
  }
}

void WordCache::insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count) {
  if (word.empty() || word.size() > kMaxWordBytes || count > kMaxWordBytes || max_entries_ == 0) return;
  if (size_ >= max_entries_ || keys_.size() + word.size() > UINT32_MAX || ids_.size() + count > UINT32_MAX) {
    clear();
  }
  if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 64 : slots_.size() * 2);
  size_t i = hash & mask_;
  while (slots_[i].key_len != 0) i = (i + 1) & mask_;
  Slot& s = slots_[i];
  s.hash = hash;
  s.key_offset = static_cast<uint32_t>(keys_.size());
  s.ids_offset = static_cast<uint32_t>(ids_.size());
  s.key_len = static_cast<uint16_t>(word.size());
  s.ids_len = static_cast<uint16_t>(count);
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + count);
  ++size_;
}

void WordCache::clear() {
  std::fill(slots_.begin(), slots_.end(), Slot{});
  keys_.clear();
  ids_.clear();
  size_ = 0;
}

void WordCache::rehash(size_t slot_count) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(slot_count, Slot{});
  mask_ = slot_count - 1;
  for (const Slot& s : old) {
    if (s.key_len == 0) continue;
    size_t i = s.hash & mask_;
    while (slots_[i].key_len != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void bpe_merge_word(const BpeRules& rules, std::string_view word, BpeScratch* scratch, std::vector<int32_t>* out) {
  auto& symbols = scratch->symbols;
  auto& heap = scratch->heap;
  symbols.clear();
  bool last_was_unk = false;
  for (char c : word) {
    int32_t id = rules.byte_ids[static_cast<uint8_t>(c)];
    if (id < 0) {
      if (!rules.unk_id) continue;  // Hugging Face drops it, and its neighbours become adjacent
      if (rules.fuse_unk && last_was_unk) continue;
      id = *rules.unk_id;
      last_was_unk = true;
    } else {
      last_was_unk = false;
    }
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  heap.clear();
  auto push_candidate = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const Merge* m = rules.merges.find(symbols[pos].id, symbols[next].id);
    if (!m) return;
    heap.push_back({m->rank, pos, symbols[pos].id, symbols[next].id, m->id});
    std::push_heap(heap.begin(), heap.end(), heap_after);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_candidate(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_after);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    BpeScratch::Symbol& left = symbols[top.pos];
    // Stale when either side has been merged since the candidate was pushed.
    if (left.id != top.left || left.next < 0 || symbols[left.next].id != top.right) continue;
    BpeScratch::Symbol& right = symbols[left.next];
    left.id = top.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    right.id = -1;
    if (left.prev >= 0) push_candidate(left.prev);
    push_candidate(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

std::string utf8_lossy(std::string bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  // Fast path: valid UTF-8 is returned as it is.
  size_t i = 0;
  while (i < n) {
    const Utf8Char c = decode_utf8(s + i, s + n);
    if (c.cp == 0xFFFFFFFFu) break;
    i += c.len;
  }
  if (i == n) return bytes;

  std::string out(bytes, 0, i);
  out.reserve(n + 16);
  while (i < n) {
    const uint8_t b = s[i];
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    // Continuation bytes still needed, and the allowed range of the first one (Unicode table 3-7).
    size_t need = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b == 0xE0) {
      need = 2, lo = 0xA0;
    } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
      need = 2;
    } else if (b == 0xED) {
      need = 2, hi = 0x9F;
    } else if (b == 0xF0) {
      need = 3, lo = 0x90;
    } else if (b >= 0xF1 && b <= 0xF3) {
      need = 3;
    } else if (b == 0xF4) {
      need = 3, hi = 0x8F;
    }
    size_t j = i + 1;
    size_t got = 0;
    while (got < need && j < n && s[j] >= lo && s[j] <= hi) {
      ++j;
      ++got;
      lo = 0x80, hi = 0xBF;
    }
    if (need > 0 && got == need) {
      out.append(bytes, i, j - i);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal subpart s[i, j)
    }
    i = j;
  }
  return out;
}

}  // namespace cairn::detail
