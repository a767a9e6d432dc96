// The block manager of a paged KV cache (torch-free): which fixed-size blocks of the pool are free,
// which are referenced by sequences, and which hold a cached prompt prefix that a later sequence
// may share. The tensors themselves live with the engine; this only hands out block ids.
//
// Prefix caching: a full block whose keys and values have been computed may be published under a
// key made of its parent block's hash, its token ids and a salt (the LoRA adapter: the same tokens
// under another adapter have other keys and values). A later sequence that starts with the same
// tokens looks its blocks up one by one from the first and shares them (reference counts). A block
// nobody references stays cached, in least-recently-released order, and is evicted (its key
// forgotten) only when allocate() finds the free list empty.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cairn {

using KvBlockId = int32_t;

// Number of blocks a budget of `bytes` holds: bytes / (2 (keys and values) * layers * kv_heads *
// head_dim * block_size * dtype_bytes), rounded down.
int64_t kv_blocks_for_budget(uint64_t bytes, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                             int64_t dtype_bytes);

// The key of a full block in the prefix cache: hash of (parent's hash, its tokens, salt). The first
// block's parent hash is 0.
uint64_t kv_block_hash(uint64_t parent_hash, const int64_t* tokens, int64_t count, uint64_t salt);
// A salt for an adapter name ("" gives 0: the base model).
uint64_t kv_block_salt(std::string_view adapter);

// Not thread-safe: the engine's step thread owns it.
class KvBlockManager {
 public:
  // num_blocks >= 1 and block_size >= 1 (callers validate).
  KvBlockManager(int64_t num_blocks, int64_t block_size);
  KvBlockManager(const KvBlockManager&) = delete;
  KvBlockManager& operator=(const KvBlockManager&) = delete;

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  // Blocks referenced by some sequence.
  int64_t used() const { return used_; }
  // Blocks nobody references that hold a published prefix (evictable).
  int64_t cached() const { return static_cast<int64_t>(lru_.size()); }
  // Blocks allocate() can hand out now: free + cached.
  int64_t available() const { return static_cast<int64_t>(free_.size()) + cached(); }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }

  // `count` blocks, each with reference count 1; nullopt (nothing taken) when fewer than `count`
  // are available. Each is block `next` (then next + 1, ...) when that one is free, so a sequence
  // that asks for the block after its last one keeps its blocks consecutive (attention then reads
  // them in place, without a gather); else the lowest free block outside every extent, else any
  // free block, and only then the least recently released cached block, evicted.
  std::optional<std::vector<KvBlockId>> allocate(int64_t count, KvBlockId next = -1);

  // Extents: soft reservations that let a sequence grow into consecutive blocks. Finds the lowest
  // run of `blocks` free blocks overlapping no other extent, records it and returns its first
  // block; nullopt when there is none. Other sequences take blocks inside an extent only when no
  // other free block is left.
  std::optional<KvBlockId> reserve_extent(int64_t blocks);
  void release_extent(KvBlockId start);
  // Drops one reference to each block, last block first (so a sequence's tail is evicted before
  // its head). A block that reaches zero goes to the cache when published, else to the free list.
  void release(const std::vector<KvBlockId>& blocks);

  // The published block for (parent_hash, tokens[0..block_size), salt), with one more reference
  // (taken out of the cache's LRU if it was unreferenced); nullopt when there is none.
  std::optional<KvBlockId> lookup(uint64_t parent_hash, const int64_t* tokens, uint64_t salt);
  // Publishes a referenced block whose block_size tokens' keys and values are computed, under
  // (parent_hash, tokens, salt); returns its hash. When another block already holds that key the
  // cache keeps the other one, and this block stays unpublished (freed normally).
  uint64_t publish(KvBlockId block, uint64_t parent_hash, const int64_t* tokens, uint64_t salt);

  int64_t ref_count(KvBlockId block) const { return blocks_[static_cast<size_t>(block)].refs; }
  bool is_published(KvBlockId block) const { return blocks_[static_cast<size_t>(block)].published; }

 private:
  struct Block {
    int64_t refs = 0;
    bool published = false;
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    uint64_t salt = 0;
    std::vector<int64_t> tokens;        // kept to rule out hash collisions
    std::list<KvBlockId>::iterator lru;  // valid while cached (published, refs == 0)
  };
  void unpublish(KvBlockId block);
  bool in_extent(KvBlockId block) const;
  KvBlockId take_free(KvBlockId next);

  int64_t block_size_;
  std::vector<Block> blocks_;
  std::set<KvBlockId> free_;
  std::map<KvBlockId, int64_t> extents_;  // first block -> length
  std::list<KvBlockId> lru_;     // front: released longest ago
  std::unordered_map<uint64_t, KvBlockId> by_hash_;
  int64_t used_ = 0;
};

}  // namespace cairn
