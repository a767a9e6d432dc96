#include "model/kv_blocks.h"

#include <algorithm>

namespace cairn {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64's finalizer over a running combination: cheap and well distributed.
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

}  // namespace

int64_t kv_blocks_for_budget(uint64_t bytes, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                             int64_t dtype_bytes) {
  const uint64_t per_block = 2ull * static_cast<uint64_t>(layers * kv_heads * head_dim * block_size * dtype_bytes);
  return per_block == 0 ? 0 : static_cast<int64_t>(bytes / per_block);
}

uint64_t kv_block_hash(uint64_t parent_hash, const int64_t* tokens, int64_t count, uint64_t salt) {
  uint64_t h = mix(0x6b76626c6f636b73ull, parent_hash);
  h = mix(h, salt);
  for (int64_t i = 0; i < count; ++i) h = mix(h, static_cast<uint64_t>(tokens[i]));
  // 0 is the root's parent hash; never produce it.
  return h == 0 ? 1 : h;
}

uint64_t kv_block_salt(std::string_view adapter) {
  if (adapter.empty()) return 0;
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : adapter) h = (h ^ c) * 0x100000001b3ull;
  return h == 0 ? 1 : h;
}

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size)
    : block_size_(block_size), blocks_(static_cast<size_t>(num_blocks)) {
  for (int64_t i = 0; i < num_blocks; ++i) free_.insert(free_.end(), static_cast<KvBlockId>(i));
}

bool KvBlockManager::in_extent(KvBlockId block) const {
  auto it = extents_.upper_bound(block);
  if (it == extents_.begin()) return false;
  --it;
  return block < it->first + it->second;
}

KvBlockId KvBlockManager::take_free(KvBlockId next) {
  auto it = next >= 0 ? free_.find(next) : free_.end();
  if (it == free_.end()) {
    it = std::find_if(free_.begin(), free_.end(), [&](KvBlockId id) { return !in_extent(id); });
    if (it == free_.end()) it = free_.begin();
  }
  const KvBlockId id = *it;
  free_.erase(it);
  return id;
}

std::optional<KvBlockId> KvBlockManager::reserve_extent(int64_t length) {
  if (length < 1) return std::nullopt;
  int64_t run = 0;
  KvBlockId start = -1, previous = -1;
  for (KvBlockId id : free_) {
    if (in_extent(id)) {
      run = 0;
      continue;
    }
    if (run > 0 && id == previous + 1) {
      ++run;
    } else {
      start = id;
      run = 1;
    }
    previous = id;
    if (run == length) {
      extents_.emplace(start, length);
      return start;
    }
  }
  return std::nullopt;
}

void KvBlockManager::release_extent(KvBlockId start) { extents_.erase(start); }

std::optional<std::vector<KvBlockId>> KvBlockManager::allocate(int64_t count, KvBlockId next) {
  if (count < 0 || count > available()) return std::nullopt;
  std::vector<KvBlockId> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    KvBlockId id;
    if (!free_.empty()) {
      id = take_free(next);
      next = id + 1;
    } else {
      id = lru_.front();
      lru_.pop_front();
      unpublish(id);
    }
    blocks_[static_cast<size_t>(id)].refs = 1;
    out.push_back(id);
  }
  used_ += count;
  return out;
}

void KvBlockManager::release(const std::vector<KvBlockId>& blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    Block& block = blocks_[static_cast<size_t>(*it)];
    if (--block.refs > 0) continue;
    --used_;
    if (block.published) {
      block.lru = lru_.insert(lru_.end(), *it);
    } else {
      free_.insert(*it);
    }
  }
}

std::optional<KvBlockId> KvBlockManager::lookup(uint64_t parent_hash, const int64_t* tokens, uint64_t salt) {
  const uint64_t hash = kv_block_hash(parent_hash, tokens, block_size_, salt);
  auto found = by_hash_.find(hash);
  if (found == by_hash_.end()) return std::nullopt;
  Block& block = blocks_[static_cast<size_t>(found->second)];
  if (block.parent_hash != parent_hash || block.salt != salt ||
      !std::equal(block.tokens.begin(), block.tokens.end(), tokens)) {
    return std::nullopt;
  }
  if (block.refs++ == 0) {
    lru_.erase(block.lru);
    ++used_;
  }
  return found->second;
}

uint64_t KvBlockManager::publish(KvBlockId id, uint64_t parent_hash, const int64_t* tokens, uint64_t salt) {
  const uint64_t hash = kv_block_hash(parent_hash, tokens, block_size_, salt);
  Block& block = blocks_[static_cast<size_t>(id)];
  if (block.published || by_hash_.count(hash) != 0) return hash;
  block.published = true;
  block.hash = hash;
  block.parent_hash = parent_hash;
  block.salt = salt;
  block.tokens.assign(tokens, tokens + block_size_);
  by_hash_.emplace(hash, id);
  return hash;
}

void KvBlockManager::unpublish(KvBlockId id) {
  Block& block = blocks_[static_cast<size_t>(id)];
  if (!block.published) return;
  by_hash_.erase(block.hash);
  block.published = false;
  block.tokens.clear();
}

}  // namespace cairn
