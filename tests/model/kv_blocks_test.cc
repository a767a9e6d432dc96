// The paged KV cache's block manager: allocation, reference counts, prefix caching, LRU eviction.
#include "model/kv_blocks.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

namespace cairn {
namespace {

std::vector<int64_t> iota_tokens(int64_t n, int64_t start = 0) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), start);
  return out;
}

TEST(KvBlocksTest, BudgetGivesBlockCount) {
  // 2 (k, v) * 4 layers * 2 kv heads * 8 head_dim * 16 tokens * 4 bytes = 8192 bytes a block.
  EXPECT_EQ(kv_blocks_for_budget(8192 * 10, 4, 2, 8, 16, 4), 10);
  EXPECT_EQ(kv_blocks_for_budget(8192 * 10 - 1, 4, 2, 8, 16, 4), 9);
  EXPECT_EQ(kv_blocks_for_budget(100, 4, 2, 8, 16, 4), 0);
}

TEST(KvBlocksTest, AllocateIsAllOrNothingAndReleaseFrees) {
  KvBlockManager blocks(4, 16);
  auto a = blocks.allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(std::set<KvBlockId>(a->begin(), a->end()).size(), 3u);
  EXPECT_EQ(blocks.used(), 3);
  EXPECT_EQ(blocks.available(), 1);
  EXPECT_FALSE(blocks.allocate(2).has_value());
  EXPECT_EQ(blocks.available(), 1);
  blocks.release(*a);
  EXPECT_EQ(blocks.used(), 0);
  EXPECT_EQ(blocks.available(), 4);
  EXPECT_EQ(blocks.cached(), 0);
}

TEST(KvBlocksTest, PublishedBlocksAreSharedWithRefCounts) {
  KvBlockManager blocks(4, 4);
  std::vector<int64_t> tokens = iota_tokens(8);
  auto a = blocks.allocate(2);
  ASSERT_TRUE(a.has_value());
  const uint64_t h0 = blocks.publish((*a)[0], 0, tokens.data(), 0);
  blocks.publish((*a)[1], h0, tokens.data() + 4, 0);
  EXPECT_EQ(h0, kv_block_hash(0, tokens.data(), 4, 0));

  auto hit = blocks.lookup(0, tokens.data(), 0);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(*hit, (*a)[0]);
  EXPECT_EQ(blocks.ref_count(*hit), 2);
  // The same tokens under another parent, another salt (adapter), or other tokens: misses.
  EXPECT_FALSE(blocks.lookup(h0, tokens.data(), 0).has_value());
  EXPECT_FALSE(blocks.lookup(0, tokens.data(), kv_block_salt("math")).has_value());
  std::vector<int64_t> other = iota_tokens(4, 1);
  EXPECT_FALSE(blocks.lookup(0, other.data(), 0).has_value());

  // Released by both owners, the blocks stay cached (not free) and can be found again.
  blocks.release({*hit});
  blocks.release(*a);
  EXPECT_EQ(blocks.used(), 0);
  EXPECT_EQ(blocks.cached(), 2);
  EXPECT_EQ(blocks.available(), 4);
  auto again = blocks.lookup(0, tokens.data(), 0);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(blocks.cached(), 1);
  EXPECT_EQ(blocks.used(), 1);
  blocks.release({*again});
}

TEST(KvBlocksTest, CachedBlocksAreEvictedOnlyWhenFreeRunsOutLeastRecentFirst) {
  KvBlockManager blocks(3, 2);
  std::vector<int64_t> t = iota_tokens(6);
  auto a = blocks.allocate(1);
  auto b = blocks.allocate(1);
  ASSERT_TRUE(a && b);
  blocks.publish((*a)[0], 0, t.data(), 0);
  blocks.publish((*b)[0], 0, t.data() + 2, 0);
  blocks.release(*a);  // released first: evicted first
  blocks.release(*b);
  EXPECT_EQ(blocks.cached(), 2);
  auto c = blocks.allocate(1);  // the free block, no eviction
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(blocks.cached(), 2);
  auto d = blocks.allocate(1);  // evicts a's block
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ((*d)[0], (*a)[0]);
  EXPECT_FALSE(blocks.is_published((*d)[0]));
  EXPECT_FALSE(blocks.lookup(0, t.data(), 0).has_value());
  auto still = blocks.lookup(0, t.data() + 2, 0);
  ASSERT_TRUE(still.has_value());
  EXPECT_EQ(*still, (*b)[0]);
}

TEST(KvBlocksTest, SecondPublisherOfTheSameKeyStaysPrivate) {
  KvBlockManager blocks(2, 2);
  std::vector<int64_t> t = iota_tokens(2);
  auto a = blocks.allocate(2);
  ASSERT_TRUE(a.has_value());
  blocks.publish((*a)[0], 0, t.data(), 0);
  blocks.publish((*a)[1], 0, t.data(), 0);
  EXPECT_TRUE(blocks.is_published((*a)[0]));
  EXPECT_FALSE(blocks.is_published((*a)[1]));
  blocks.release(*a);
  EXPECT_EQ(blocks.cached(), 1);
  EXPECT_EQ(blocks.available(), 2);
}

TEST(KvBlocksTest, ReleaseOrderPutsTheTailFirstInLine) {
  // A sequence's blocks are released tail first, so its head (the most shareable prefix) is
  // evicted last.
  KvBlockManager blocks(2, 1);
  std::vector<int64_t> t = {7, 8};
  auto a = blocks.allocate(2);
  ASSERT_TRUE(a.has_value());
  const uint64_t h0 = blocks.publish((*a)[0], 0, t.data(), 0);
  blocks.publish((*a)[1], h0, t.data() + 1, 0);
  blocks.release(*a);
  auto evicted = blocks.allocate(1);
  ASSERT_TRUE(evicted.has_value());
  EXPECT_EQ((*evicted)[0], (*a)[1]);
  EXPECT_TRUE(blocks.lookup(0, t.data(), 0).has_value());
}

TEST(KvBlocksTest, ExtentsKeepEachSequenceConsecutive) {
  KvBlockManager blocks(10, 4);
  auto a_start = blocks.reserve_extent(4);
  auto b_start = blocks.reserve_extent(4);
  ASSERT_TRUE(a_start && b_start);
  EXPECT_EQ(*a_start, 0);
  EXPECT_EQ(*b_start, 4);
  EXPECT_FALSE(blocks.reserve_extent(3).has_value());  // only 2 blocks outside extents
  // Two sequences growing one block at a time, interleaved, each asking for the block after its last.
  std::vector<KvBlockId> a, b;
  for (int i = 0; i < 4; ++i) {
    a.push_back((*blocks.allocate(1, a.empty() ? *a_start : a.back() + 1))[0]);
    b.push_back((*blocks.allocate(1, b.empty() ? *b_start : b.back() + 1))[0]);
  }
  EXPECT_EQ(a, (std::vector<KvBlockId>{0, 1, 2, 3}));
  EXPECT_EQ(b, (std::vector<KvBlockId>{4, 5, 6, 7}));
  // Without a hint: the lowest free block outside every extent; past a full extent, any free one.
  blocks.release(a);
  blocks.release_extent(*a_start);
  auto c_start = blocks.reserve_extent(2);
  ASSERT_TRUE(c_start.has_value());
  EXPECT_EQ(*c_start, 0);
  auto any = blocks.allocate(3);
  ASSERT_TRUE(any.has_value());
  EXPECT_EQ(*any, (std::vector<KvBlockId>{2, 3, 8}));
  EXPECT_EQ(blocks.available(), 3);
}

}  // namespace
}  // namespace cairn
