// The TCP ring: RingEndpoint joins it, RingCollective runs collectives over it.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <thread>

#include "cluster/collective.h"
#include "cluster/detail/ring_socket.h"
#include "cluster/detail/ring_transfer.h"

namespace cairn {

namespace {

using detail::Clock;
using detail::Fd;

// A stray connection that sends nothing must not hold up the real peer for the whole connect
// timeout, so each accepted connection gets at most this long to complete the handshake.
constexpr std::chrono::milliseconds kHandshakeTimeout{5000};

class RingCollective final : public Collective {
 public:
  // `next` is connected to rank+1, `prev` from rank-1; both invalid when world_size is 1.
  RingCollective(RingOptions options, Fd next, Fd prev)
      : options_(std::move(options)), next_(std::move(next)), prev_(std::move(prev)) {}

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  Status all_reduce_sum(float* data, size_t count) override {
    std::lock_guard<std::mutex> lock(op_mutex_);
    return run(detail::plan_all_reduce(data, count, options_.rank, options_.world_size, options_.chunk_bytes),
               "all_reduce_sum");
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= options_.world_size) {
      return error(Code::invalid_argument, "ring broadcast: root " + std::to_string(root) + " is not a rank of a ring of " +
                                               std::to_string(options_.world_size));
    }
    std::lock_guard<std::mutex> lock(op_mutex_);
    return run(detail::plan_broadcast(static_cast<char*>(data), bytes, root, options_.rank, options_.world_size,
                                      options_.chunk_bytes),
               "broadcast");
  }

  // An all-reduce of one float per rank: every chunk is non-empty, so no rank can finish before
  // each has contributed.
  Status barrier() override {
    std::vector<float> ones(static_cast<size_t>(options_.world_size), 1.0f);
    std::lock_guard<std::mutex> lock(op_mutex_);
    return run(detail::plan_all_reduce(ones.data(), ones.size(), options_.rank, options_.world_size,
                                       options_.chunk_bytes),
               "barrier");
  }

  void abort() override {
    aborted_ = true;
    shut_down();
  }

 private:
  Status run(const detail::RingPlan& plan, const char* op) {
    if (aborted_) return aborted_error();
    if (!broken_.ok()) return broken_;
    detail::TransferOptions transfer;
    transfer.send_fd = next_.get();
    transfer.recv_fd = prev_.get();
    transfer.idle_timeout = std::chrono::milliseconds(options_.io_timeout_ms);
    transfer.scratch = &scratch_;
    transfer.receive_thread_min_bytes = options_.receive_thread_min_bytes;
    detail::RingSide side = detail::RingSide::none;
    Status status = detail::run_transfer(plan, transfer, side);
    if (status.ok()) return status;
    if (aborted_) return aborted_error();
    const int n = options_.world_size;
    const int peer = side == detail::RingSide::send ? (options_.rank + 1) % n : (options_.rank + n - 1) % n;
    broken_ = error(Code::unavailable, "ring rank " + std::to_string(options_.rank) + ": " + op + ": " +
                                           (side == detail::RingSide::send ? "sending to" : "receiving from") +
                                           " rank " + std::to_string(peer) + " (" + options_.peers[peer].to_string() +
                                           "): " + status.message());
    // The neighbours see the connections close, fail in turn, and so on around the ring.
    shut_down();
    return broken_;
  }

  Status aborted_error() const {
    return error(Code::cancelled, "ring rank " + std::to_string(options_.rank) + ": aborted");
  }

  // Wakes a poll() blocked on either socket; the descriptors stay open until destruction.
  void shut_down() {
    if (next_.valid()) ::shutdown(next_.get(), SHUT_RDWR);
    if (prev_.valid()) ::shutdown(prev_.get(), SHUT_RDWR);
  }

  const RingOptions options_;  // constant after construction
  const Fd next_, prev_;
  std::atomic<bool> aborted_{false};
  std::mutex op_mutex_;  // one collective at a time; guards broken_ and scratch_
  Status broken_;
  std::vector<float> scratch_;
};

Status check_options(const RingOptions& o) {
  if (o.world_size < 1) return error(Code::invalid_argument, "ring: world_size must be at least 1, got " + std::to_string(o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size) {
    return error(Code::invalid_argument,
                 "ring: rank " + std::to_string(o.rank) + " is outside [0, " + std::to_string(o.world_size) + ")");
  }
  if (o.world_size == 1) return {};
  if (o.peers.size() != static_cast<size_t>(o.world_size)) {
    return error(Code::invalid_argument, "ring: peers must list all " + std::to_string(o.world_size) +
                                             " ranks' addresses, got " + std::to_string(o.peers.size()));
  }
  if (o.secret.empty()) return error(Code::invalid_argument, "ring: the job secret must not be empty");
  if (o.chunk_bytes < sizeof(float)) {
    return error(Code::invalid_argument, "ring: chunk_bytes must be at least 4, got " + std::to_string(o.chunk_bytes));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<RingEndpoint>> RingEndpoint::listen(const HostPort& bind) {
  HostPort bound;
  auto fd = detail::listen_tcp(bind, bound);
  if (!fd.ok()) return fd.status().with_context("ring endpoint");
  return std::unique_ptr<RingEndpoint>(new RingEndpoint(fd->release(), bound));
}

RingEndpoint::~RingEndpoint() {
  if (fd_ >= 0) ::close(fd_);
}

HostPort RingEndpoint::bound() const { return bound_; }

Result<std::unique_ptr<Collective>> RingEndpoint::connect(const RingOptions& options) {
  CAIRN_RETURN_IF_ERROR(check_options(options));
  if (fd_ < 0) return error(Code::invalid_argument, "ring: connect may be called only once per endpoint");
  Fd listener(fd_);
  fd_ = -1;
  const int n = options.world_size;
  if (n == 1) return std::unique_ptr<Collective>(new RingCollective(options, Fd(), Fd()));

  const int next = (options.rank + 1) % n, prev = (options.rank + n - 1) % n;
  const std::string me = "ring rank " + std::to_string(options.rank);
  const std::string next_name = "rank " + std::to_string(next) + " (" + options.peers[next].to_string() + ")";
  const std::string prev_name = "rank " + std::to_string(prev) + " (" + options.peers[prev].to_string() + ")";
  const auto deadline = Clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  detail::CancelPipe cancel;
  if (!cancel.valid()) return error(Code::internal, me + ": " + detail::errno_text("pipe2", errno));

  // Dial the next rank on a thread while accepting the previous one here: each rank's handshake
  // needs its neighbour to be accepting, so doing one after the other would deadlock the ring.
  Fd next_fd;
  Status dialled;
  std::thread dialler([&] {
    auto fd = detail::dial_with_retry(options.peers[next], deadline, cancel.fd(), options.socket_buffer_bytes);
    if (fd.ok()) {
      dialled = detail::handshake_dial(fd->get(), {static_cast<uint32_t>(options.rank), static_cast<uint32_t>(n)},
                                       options.secret, deadline, cancel.fd());
      if (dialled.ok()) next_fd = std::move(*fd);
    } else {
      dialled = fd.status();
    }
    if (!dialled.ok()) cancel.notify();
  });

  Fd prev_fd;
  Status accepted;
  std::string refused;  // why the last connection that tried was dropped
  for (;;) {
    accepted = detail::wait_fd(listener.get(), POLLIN, deadline, cancel.fd());
    if (!accepted.ok()) break;
    Fd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      const int err = errno;
      // The connection went away before we took it: wait for the next one.
      if (err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED || err == EINTR || err == EPROTO) continue;
      accepted = error(Code::unavailable, detail::errno_text("accept", err));
      break;
    }
    accepted = detail::tune_socket(fd.get(), options.socket_buffer_bytes);
    if (!accepted.ok()) break;
    // Not cancellable: a handshake under way is finished even when the dialler has failed, so that
    // a peer with the wrong secret learns why (it checks our proof) instead of seeing a reset.
    accepted = detail::handshake_accept(fd.get(), {static_cast<uint32_t>(prev), static_cast<uint32_t>(n)},
                                        options.secret, std::min(deadline, Clock::now() + kHandshakeTimeout),
                                        /*cancel_fd=*/-1);
    if (accepted.ok()) {
      prev_fd = std::move(fd);
      break;
    }
    if (accepted.code() == Code::cancelled) break;
    refused = accepted.message();
  }
  if (!accepted.ok()) cancel.notify();
  dialler.join();

  // The dialler's error is the cause when it cancelled the accepting side.
  if (!dialled.ok() && dialled.code() != Code::cancelled) {
    return error(dialled.code() == Code::timeout ? Code::unavailable : dialled.code(),
                 me + ": dialling " + next_name + ": " + dialled.message());
  }
  if (!accepted.ok()) {
    std::string message = me + ": waiting for " + prev_name + " to connect: ";
    if (accepted.code() == Code::timeout) {
      message += "no valid connection within " + std::to_string(options.connect_timeout_ms) + " ms";
    } else {
      message += accepted.message();
    }
    if (!refused.empty()) message += " (last connection refused: " + refused + ")";
    return error(Code::unavailable, message);
  }
  return std::unique_ptr<Collective>(new RingCollective(options, std::move(next_fd), std::move(prev_fd)));
}

}  // namespace cairn
