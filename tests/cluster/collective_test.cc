// The CPU collectives: an in-process group of threads, and the TCP ring over real loopback sockets
// (ranks on threads of this process, and ranks in separate processes).
#include "cluster/collective.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
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

// ---- The TCP ring over loopback ----

constexpr char kSecret[] = "test job secret";

// Listening endpoints for n ranks on 127.0.0.1 with free ports, and their addresses.
struct Endpoints {
  std::vector<std::unique_ptr<RingEndpoint>> endpoints;
  std::vector<HostPort> peers;
};

void listen_ranks(int n, Endpoints& out) {
  for (int r = 0; r < n; ++r) {
    auto endpoint = RingEndpoint::listen({"127.0.0.1", 0});
    ASSERT_TRUE(endpoint.ok()) << endpoint.status().to_string();
    ASSERT_NE((*endpoint)->bound().port, 0);
    out.peers.push_back((*endpoint)->bound());
    out.endpoints.push_back(std::move(*endpoint));
  }
}

RingOptions ring_options(const Endpoints& e, int rank, const RingOptions& base = {}) {
  RingOptions options = base;
  options.rank = rank;
  options.world_size = static_cast<int>(e.peers.size());
  options.peers = e.peers;
  if (options.secret.empty()) options.secret = kSecret;
  return options;
}

// Connects every endpoint on its own thread (they must meet concurrently).
std::vector<Result<std::unique_ptr<Collective>>> connect_all(Endpoints& e, const std::function<RingOptions(int)>& options) {
  const int n = static_cast<int>(e.endpoints.size());
  std::vector<Result<std::unique_ptr<Collective>>> results;
  for (int r = 0; r < n; ++r) results.emplace_back(error(Code::internal, "not connected"));
  run_ranks(n, [&](int r) { results[r] = e.endpoints[r]->connect(options(r)); });
  return results;
}

void ring_ranks(int n, Ranks& ranks, const RingOptions& base = {}) {
  Endpoints e;
  listen_ranks(n, e);
  auto results = connect_all(e, [&](int r) { return ring_options(e, r, base); });
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status().to_string();
    ranks.push_back(std::move(*results[r]));
  }
}

TEST(Ring, TwoRanks) {
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks));
  EXPECT_EQ(ranks[1]->rank(), 1);
  EXPECT_EQ(ranks[1]->world_size(), 2);
  check_collectives(ranks);
}

TEST(Ring, ThreeRanks) {
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(3, ranks));
  check_collectives(ranks);
}

TEST(Ring, ThreeRanksWithPiecesSmallerThanAChunk) {
  RingOptions base;
  base.chunk_bytes = 1002;  // 250 floats per piece; broadcast pieces of 1002 bytes
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(3, ranks, base));
  check_collectives(ranks);
}

// The same collectives with every transfer's receive stream on a thread of its own (large
// transfers only by default), tiny pieces included.
TEST(Ring, TwoRanksWithAReceiveThread) {
  RingOptions base;
  base.receive_thread_min_bytes = 0;
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks, base));
  check_collectives(ranks);
}

TEST(Ring, ThreeRanksWithAReceiveThreadAndSmallPieces) {
  RingOptions base;
  base.receive_thread_min_bytes = 0;
  base.chunk_bytes = 1002;
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(3, ranks, base));
  check_collectives(ranks);
}

TEST(Ring, OneRankNeedsNoPeers) {
  auto endpoint = RingEndpoint::listen({"127.0.0.1", 0});
  ASSERT_TRUE(endpoint.ok());
  RingOptions options;  // rank 0 of 1, no peers, no secret
  auto ring = (*endpoint)->connect(options);
  ASSERT_TRUE(ring.ok()) << ring.status().to_string();
  std::vector<float> data = {1.5f, -2.0f};
  ASSERT_TRUE((*ring)->all_reduce_sum(data.data(), data.size()).ok());
  EXPECT_EQ(data[0], 1.5f);
  EXPECT_TRUE((*ring)->broadcast(data.data(), 8, 0).ok());
  EXPECT_TRUE((*ring)->barrier().ok());
  EXPECT_EQ((*endpoint)->connect(options).status().code(), Code::invalid_argument);  // only once
}

TEST(Ring, BadOptionsAreRejectedBeforeConnecting) {
  Endpoints e;
  ASSERT_NO_FATAL_FAILURE(listen_ranks(2, e));
  RingOptions options = ring_options(e, 0);
  options.peers.pop_back();
  EXPECT_EQ(e.endpoints[0]->connect(options).status().code(), Code::invalid_argument);
  options = ring_options(e, 0);
  options.secret = "";
  options.secret.clear();
  options.world_size = 2;
  auto empty_secret = e.endpoints[0]->connect(options);
  EXPECT_EQ(empty_secret.status().code(), Code::invalid_argument);
  EXPECT_NE(empty_secret.status().message().find("secret"), std::string::npos);
  options = ring_options(e, 2);
  EXPECT_EQ(e.endpoints[0]->connect(options).status().code(), Code::invalid_argument);
  EXPECT_EQ(RingEndpoint::listen({"192.0.2.1", 0}).status().code(), Code::unavailable);  // not ours to bind
}

TEST(Ring, AWrongSecretIsRefused) {
  Endpoints e;
  ASSERT_NO_FATAL_FAILURE(listen_ranks(2, e));
  auto results = connect_all(e, [&](int r) {
    RingOptions base;
    base.connect_timeout_ms = 3000;
    base.secret = r == 0 ? "the right secret" : "a wrong secret";
    return ring_options(e, r, base);
  });
  // Each dialler checks the acceptor's proof first, so a rank that reaches its neighbour learns that
  // the secrets differ; one whose neighbour has already given up and closed its endpoint can only
  // time out. Either way nobody joins.
  int refused = 0;
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(results[r].ok()) << "rank " << r;
    const Status& s = results[r].status();
    if (s.code() == Code::unauthenticated) {
      ++refused;
      EXPECT_NE(s.message().find("job secret"), std::string::npos) << s.to_string();
    } else {
      EXPECT_EQ(s.code(), Code::unavailable) << s.to_string();
    }
  }
  EXPECT_GE(refused, 1);
}

// A raw TCP connection to `address` that writes `bytes` and then closes.
void send_and_close(const HostPort& address, const std::string& bytes) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(address.port);
  ::inet_pton(AF_INET, address.host.c_str(), &sin.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  if (!bytes.empty()) {
    ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  ::close(fd);
}

TEST(Ring, StrayConnectionsCannotJoin) {
  Endpoints e;
  ASSERT_NO_FATAL_FAILURE(listen_ranks(2, e));
  // Queued before the real peer: garbage, an immediate close, and the right magic with a wrong rank.
  ASSERT_NO_FATAL_FAILURE(send_and_close(e.peers[1], std::string(48, 'x')));
  ASSERT_NO_FATAL_FAILURE(send_and_close(e.peers[1], ""));
  std::string hello = "CAIRNRG1";
  hello += std::string("\0\0\0\x07\0\0\0\x09", 8) + std::string(32, 'n');
  ASSERT_NO_FATAL_FAILURE(send_and_close(e.peers[1], hello));
  auto results = connect_all(e, [&](int r) { return ring_options(e, r); });
  Ranks ranks;
  for (auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status().to_string();
    ranks.push_back(std::move(*result));
  }
  check_all_reduce(ranks, 1001);
}

TEST(Ring, AbortUnblocksAWaitingRankAndFailsItsPeer) {
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks));
  Status waiting;
  std::thread waiter([&] { waiting = ranks[0]->barrier(); });  // rank 1 never joins this barrier
  ranks[0]->abort();
  waiter.join();
  EXPECT_EQ(waiting.code(), Code::cancelled) << waiting.to_string();
  std::vector<float> data(1000);
  EXPECT_EQ(ranks[0]->all_reduce_sum(data.data(), data.size()).code(), Code::cancelled);
  Status peer = ranks[1]->all_reduce_sum(data.data(), data.size());
  EXPECT_EQ(peer.code(), Code::unavailable) << peer.to_string();
  EXPECT_NE(peer.message().find("rank 0 (127.0.0.1:"), std::string::npos) << peer.to_string();
  // The failure sticks.
  EXPECT_EQ(ranks[1]->barrier().code(), Code::unavailable);
  ranks[0]->abort();  // twice is harmless
}

TEST(Ring, ASilentPeerTimesOut) {
  RingOptions base;
  base.io_timeout_ms = 200;
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks, base));
  Status status = ranks[0]->barrier();  // rank 1 is alive but never calls
  EXPECT_EQ(status.code(), Code::unavailable) << status.to_string();
  EXPECT_NE(status.message().find("no progress for 200 ms"), std::string::npos) << status.to_string();
  EXPECT_NE(status.message().find("rank 1 (127.0.0.1:"), std::string::npos) << status.to_string();
}

// A large all-reduce runs its receive stream on a thread of its own (ring_transfer.h); a silent peer
// and abort() must stop both threads.
const size_t kLargeCount = RingOptions{}.receive_thread_min_bytes / sizeof(float);

TEST(Ring, ASilentPeerTimesOutDuringALargeAllReduce) {
  RingOptions base;
  base.io_timeout_ms = 200;
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks, base));
  std::vector<float> data(kLargeCount, 1.0f);
  Status status = ranks[0]->all_reduce_sum(data.data(), data.size());  // rank 1 never calls
  EXPECT_EQ(status.code(), Code::unavailable) << status.to_string();
  EXPECT_NE(status.message().find("no progress for 200 ms"), std::string::npos) << status.to_string();
  EXPECT_NE(status.message().find("rank 1 (127.0.0.1:"), std::string::npos) << status.to_string();
}

TEST(Ring, AbortUnblocksALargeAllReduce) {
  Ranks ranks;
  ASSERT_NO_FATAL_FAILURE(ring_ranks(2, ranks));
  Status waiting;
  std::vector<float> data(kLargeCount, 1.0f);
  std::thread waiter([&] { waiting = ranks[0]->all_reduce_sum(data.data(), data.size()); });
  ranks[0]->abort();
  waiter.join();
  EXPECT_EQ(waiting.code(), Code::cancelled) << waiting.to_string();
  Status peer = ranks[1]->all_reduce_sum(data.data(), data.size());
  EXPECT_EQ(peer.code(), Code::unavailable) << peer.to_string();
  EXPECT_NE(peer.message().find("rank 0 (127.0.0.1:"), std::string::npos) << peer.to_string();
}

// ---- Ranks in separate processes ----

constexpr size_t k16MiB = (16u << 20) / sizeof(float);

// Runs in a forked child as rank 1: connects, then all-reduces `iterations` times (forever when 0),
// then broadcasts its result so that the parent can compare. Returns the exit code.
int child_rank(RingEndpoint& endpoint, const RingOptions& options, int iterations) {
  auto ring = endpoint.connect(options);
  if (!ring.ok()) return 10;
  std::vector<float> data(k16MiB);
  for (int i = 0; iterations == 0 || i < iterations; ++i) {
    for (size_t j = 0; j < data.size(); ++j) data[j] = input_value(1, j);
    if (!(*ring)->all_reduce_sum(data.data(), data.size()).ok()) return 11;
  }
  if (!(*ring)->broadcast(data.data(), data.size() * sizeof(float), 1).ok()) return 12;
  return (*ring)->barrier().ok() ? 0 : 13;
}

pid_t fork_rank1(Endpoints& e, int iterations) {
  pid_t pid = ::fork();
  if (pid == 0) {
    e.endpoints[0].reset();
    _exit(child_rank(*e.endpoints[1], ring_options(e, 1), iterations));
  }
  e.endpoints[1].reset();  // the child's now
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(Ring, TwoProcesses16MiB) {
  Endpoints e;
  ASSERT_NO_FATAL_FAILURE(listen_ranks(2, e));
  pid_t child = fork_rank1(e, 2);
  ASSERT_GT(child, 0);
  auto ring = e.endpoints[0]->connect(ring_options(e, 0));
  ASSERT_TRUE(ring.ok()) << ring.status().to_string();
  std::vector<float> data(k16MiB);
  for (int i = 0; i < 2; ++i) {
    for (size_t j = 0; j < data.size(); ++j) data[j] = input_value(0, j);
    Status status = (*ring)->all_reduce_sum(data.data(), data.size());
    ASSERT_TRUE(status.ok()) << status.to_string();
  }
  std::vector<float> theirs(k16MiB);
  ASSERT_TRUE((*ring)->broadcast(theirs.data(), theirs.size() * sizeof(float), 1).ok());
  Status barrier = (*ring)->barrier();
  ASSERT_TRUE(barrier.ok()) << barrier.to_string();
  EXPECT_EQ(std::memcmp(data.data(), theirs.data(), data.size() * sizeof(float)), 0) << "ranks differ";
  for (size_t j = 0; j < data.size(); j += 4099) {
    ASSERT_NEAR(data[j], double{input_value(0, j)} + input_value(1, j), 1e-6 * (std::fabs(input_value(0, j)) + std::fabs(input_value(1, j))));
  }
  EXPECT_EQ(wait_exit_code(child), 0);
}

TEST(Ring, APeerKilledMidAllReduceFailsTheOtherInsteadOfHanging) {
  Endpoints e;
  ASSERT_NO_FATAL_FAILURE(listen_ranks(2, e));
  pid_t child = fork_rank1(e, 0);  // all-reduces until it fails
  ASSERT_GT(child, 0);
  RingOptions base;
  base.io_timeout_ms = 60000;
  auto ring = e.endpoints[0]->connect(ring_options(e, 0, base));
  ASSERT_TRUE(ring.ok()) << ring.status().to_string();

  std::mutex mutex;
  std::condition_variable done_one;
  int completed = 0;
  Status failure;
  std::thread rank0([&] {
    std::vector<float> data(k16MiB, 1.0f);
    for (;;) {
      Status status = (*ring)->all_reduce_sum(data.data(), data.size());
      std::lock_guard<std::mutex> lock(mutex);
      if (!status.ok()) {
        failure = status;
        return;
      }
      ++completed;
      done_one.notify_all();
    }
  });
  {
    std::unique_lock<std::mutex> lock(mutex);
    done_one.wait(lock, [&] { return completed >= 2 || !failure.ok(); });
  }
  auto killed_at = std::chrono::steady_clock::now();
  ::kill(child, SIGKILL);
  rank0.join();
  auto took = std::chrono::steady_clock::now() - killed_at;
  EXPECT_EQ(failure.code(), Code::unavailable) << failure.to_string();
  EXPECT_NE(failure.message().find("rank 1 (127.0.0.1:"), std::string::npos) << failure.to_string();
  EXPECT_LT(took, std::chrono::milliseconds(base.io_timeout_ms));
  EXPECT_EQ(wait_exit_code(child), 128 + SIGKILL);
}

}  // namespace
}  // namespace cairn
