// The CPU collectives: an in-process group of threads, and the TCP ring over real loopback sockets
// (ranks on threads of this process, and ranks in separate processes).
#include "cluster/collective.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace cairn {
namespace {

using Ranks = std::vector<std::unique_ptr<Collective>>;

// Runs fn(rank) on one thread per rank and waits for all of them.
void run_ranks(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

// Rank r's input: values of varied magnitude and sign, so that the summation order matters.
float input_value(int rank, size_t i) {
  return static_cast<float>(std::sin(0.37 * static_cast<double>(i) + rank) * std::pow(10.0, static_cast<int>((i + rank) % 7) - 3));
}

// All-reduces `count` elements on every rank and checks: every rank ends bitwise equal, and within
// float tolerance of the sum in double.
void check_all_reduce(Ranks& ranks, size_t count) {
  const int n = static_cast<int>(ranks.size());
  std::vector<std::vector<float>> buffers(n, std::vector<float>(count));
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) buffers[r][i] = input_value(r, i);
  }
  std::vector<Status> results(n);
  run_ranks(n, [&](int r) { results[r] = ranks[r]->all_reduce_sum(buffers[r].data(), count); });
  for (int r = 0; r < n; ++r) ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].to_string();
  for (int r = 1; r < n; ++r) {
    ASSERT_EQ(std::memcmp(buffers[r].data(), buffers[0].data(), count * sizeof(float)), 0)
        << "rank " << r << " differs from rank 0 (count " << count << ")";
  }
  for (size_t i = 0; i < count; ++i) {
    double sum = 0, magnitude = 0;
    for (int r = 0; r < n; ++r) {
      sum += input_value(r, i);
      magnitude += std::fabs(input_value(r, i));
    }
    ASSERT_NEAR(buffers[0][i], sum, 1e-6 * magnitude + 1e-30) << "element " << i << " of " << count;
  }
}

void check_broadcast(Ranks& ranks, size_t bytes, int root) {
  const int n = static_cast<int>(ranks.size());
  std::vector<std::vector<unsigned char>> buffers(n, std::vector<unsigned char>(bytes));
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < bytes; ++i) buffers[r][i] = static_cast<unsigned char>(r == root ? i * 7 + 3 : 0xEE);
  }
  std::vector<Status> results(n);
  run_ranks(n, [&](int r) { results[r] = ranks[r]->broadcast(buffers[r].data(), bytes, root); });
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].to_string();
    ASSERT_EQ(buffers[r], buffers[root]) << "rank " << r << " after broadcast of " << bytes << " bytes from " << root;
  }
}

// The cases every transport must pass.
void check_collectives(Ranks& ranks) {
  const size_t n = ranks.size();
  for (size_t count : {size_t{0}, size_t{1}, n - 1, n + 1, size_t{1000}, size_t{1001}, size_t{300007}}) {
    SCOPED_TRACE("count " + std::to_string(count));
    check_all_reduce(ranks, count);
  }
  for (int root = 0; root < static_cast<int>(n); ++root) check_broadcast(ranks, 100003, root);
  check_broadcast(ranks, 0, 0);
  std::vector<Status> results(n);
  run_ranks(static_cast<int>(n), [&](int r) { results[r] = ranks[r]->barrier(); });
  for (size_t r = 0; r < n; ++r) EXPECT_TRUE(results[r].ok()) << results[r].to_string();
}

Ranks in_process_ranks(int n) {
  auto group = InProcessGroup::create(n);
  Ranks ranks;
  for (int r = 0; r < n; ++r) ranks.push_back(group->member(r));
  return ranks;
}

TEST(InProcessGroup, TwoRanks) {
  Ranks ranks = in_process_ranks(2);
  check_collectives(ranks);
}

TEST(InProcessGroup, ThreeRanks) {
  Ranks ranks = in_process_ranks(3);
  check_collectives(ranks);
}

TEST(InProcessGroup, OneRankIsTrivial) {
  Ranks ranks = in_process_ranks(1);
  std::vector<float> data = {1.0f, 2.0f};
  ASSERT_TRUE(ranks[0]->all_reduce_sum(data.data(), data.size()).ok());
  EXPECT_EQ(data[1], 2.0f);
  EXPECT_TRUE(ranks[0]->broadcast(data.data(), 8, 0).ok());
  EXPECT_TRUE(ranks[0]->barrier().ok());
}

TEST(InProcessGroup, MembersAreHandedOutOnce) {
  auto group = InProcessGroup::create(2);
  EXPECT_EQ(InProcessGroup::create(0), nullptr);
  auto first = group->member(0);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->rank(), 0);
  EXPECT_EQ(first->world_size(), 2);
  EXPECT_EQ(group->member(0), nullptr);
  EXPECT_EQ(group->member(2), nullptr);
  EXPECT_EQ(group->member(-1), nullptr);
}

TEST(InProcessGroup, MismatchedSizesFailOnEveryRank) {
  Ranks ranks = in_process_ranks(2);
  std::vector<float> a(10), b(11);
  Status results[2];
  run_ranks(2, [&](int r) { results[r] = ranks[r]->all_reduce_sum(r == 0 ? a.data() : b.data(), r == 0 ? 10 : 11); });
  for (auto& s : results) EXPECT_EQ(s.code(), Code::invalid_argument) << s.to_string();
  // The group is still usable afterwards.
  check_all_reduce(ranks, 7);
}

TEST(InProcessGroup, AbortUnblocksAWaitingRank) {
  Ranks ranks = in_process_ranks(3);
  Status waiting;
  std::thread waiter([&] { waiting = ranks[0]->barrier(); });
  ranks[2]->abort();
  waiter.join();
  EXPECT_EQ(waiting.code(), Code::cancelled);
  EXPECT_NE(waiting.message().find("rank 2"), std::string::npos) << waiting.message();
  std::vector<float> data(4);
  EXPECT_FALSE(ranks[1]->all_reduce_sum(data.data(), data.size()).ok());  // later calls fail too
  ranks[1]->abort();                                                      // twice is harmless
}

TEST(InProcessGroup, ALeavingMemberFailsTheOthers) {
  Ranks ranks = in_process_ranks(2);
  Status waiting;
  std::thread waiter([&] { waiting = ranks[0]->barrier(); });
  ranks[1].reset();
  waiter.join();
  EXPECT_EQ(waiting.code(), Code::cancelled);
}

}  // namespace
}  // namespace cairn
