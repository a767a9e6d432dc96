#include "cluster/detail/ring_transfer.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "cluster/detail/ring_socket.h"

namespace cairn::detail {

namespace {

int mod(long x, int n) { return static_cast<int>(((x % n) + n) % n); }

}  // namespace

RingPlan plan_all_reduce(float* data, size_t count, int rank, int world_size, size_t piece_bytes) {
  RingPlan plan;
  const int n = world_size;
  if (n <= 1 || count == 0) return plan;
  const size_t piece = std::max<size_t>(1, piece_bytes / sizeof(float));
  auto chunk_begin = [&](int c) { return count * static_cast<size_t>(c) / static_cast<size_t>(n); };
  long previous_recv_start = -1;
  // Steps 0..N-2 reduce-scatter, N-1..2N-3 all-gather. What a rank sends at step t is what it
  // received at step t-1 (or its own data at step 0), piece by piece.
  for (int t = 0; t < 2 * (n - 1); ++t) {
    const bool scatter = t < n - 1;
    const int s = scatter ? t : t - (n - 1);
    const int send_chunk = scatter ? mod(rank - s, n) : mod(rank + 1 - s, n);
    const int recv_chunk = scatter ? mod(rank - s - 1, n) : mod(rank - s, n);
    for (size_t at = chunk_begin(send_chunk), end = chunk_begin(send_chunk + 1), k = 0; at < end; at += piece, ++k) {
      const size_t len = std::min(piece, end - at);
      plan.sends.push_back({reinterpret_cast<const char*>(data + at), len * sizeof(float),
                            t == 0 ? -1 : previous_recv_start + static_cast<long>(k)});
    }
    previous_recv_start = static_cast<long>(plan.recvs.size());
    for (size_t at = chunk_begin(recv_chunk), end = chunk_begin(recv_chunk + 1); at < end; at += piece) {
      const size_t len = std::min(piece, end - at);
      if (scatter) {
        plan.recvs.push_back({nullptr, len * sizeof(float), data + at});
      } else {
        plan.recvs.push_back({reinterpret_cast<char*>(data + at), len * sizeof(float), nullptr});
      }
    }
  }
  return plan;
}

RingPlan plan_broadcast(char* data, size_t bytes, int root, int rank, int world_size, size_t piece_bytes) {
  RingPlan plan;
  const int n = world_size;
  if (n <= 1 || bytes == 0) return plan;
  const size_t piece = std::max<size_t>(1, piece_bytes);
  const int position = mod(rank - root, n);  // 0 = root, n-1 = the last to receive
  long k = 0;
  for (size_t at = 0; at < bytes; at += piece, ++k) {
    const size_t len = std::min(piece, bytes - at);
    if (position != 0) plan.recvs.push_back({data + at, len, nullptr});
    if (position != n - 1) plan.sends.push_back({data + at, len, position == 0 ? -1 : k});
  }
  return plan;
}

namespace {

// out[i] += in[i], eight lanes at a time (GCC/Clang vector extension: -O2 does not vectorize a
// loop of unknown length by itself). Each element is still one IEEE addition, so the result is the
// same as the scalar loop's, bit for bit.
void add_into(float* __restrict out, const float* __restrict in, size_t count) {
  typedef float Lanes __attribute__((vector_size(32)));
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    Lanes a, b;
    std::memcpy(&a, out + i, sizeof a);
    std::memcpy(&b, in + i, sizeof b);
    a += b;
    std::memcpy(out + i, &a, sizeof a);
  }
  for (; i < count; ++i) out[i] += in[i];
}

}  // namespace

namespace {

// The single-thread driver: both streams over non-blocking sockets in one poll() loop. Cheapest for
// small transfers (no thread to start); see run_threaded for large ones.
Status run_single(const RingPlan& plan, const TransferOptions& options, RingSide& failed_side) {
  auto fail = [&](RingSide side, Status status) {
    failed_side = side;
    return status;
  };
  char* scratch = reinterpret_cast<char*>(options.scratch->data());
  size_t send_index = 0, send_done = 0;  // the piece being sent, and its bytes already sent
  size_t recv_index = 0, recv_done = 0;
  auto last_progress = Clock::now();
  while (send_index < plan.sends.size() || recv_index < plan.recvs.size()) {
    bool progressed = false, send_blocked = false;
    while (send_index < plan.sends.size()) {
      const SendPiece& p = plan.sends[send_index];
      if (p.after_recv >= static_cast<long>(recv_index)) break;  // its data has not arrived yet
      ssize_t n = ::send(options.send_fd, p.data + send_done, p.bytes - send_done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        progressed = true;
        send_done += static_cast<size_t>(n);
        if (send_done == p.bytes) {
          ++send_index;
          send_done = 0;
        }
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        send_blocked = true;
        break;
      } else if (n < 0 && errno != EINTR) {
        return fail(RingSide::send, error(Code::unavailable, errno_text("send", errno)));
      }
    }
    // At most one piece per round, so that the sends it unblocks go out at once.
    if (recv_index < plan.recvs.size()) {
      const RecvPiece& p = plan.recvs[recv_index];
      char* target = p.add_into != nullptr ? scratch : p.data;
      ssize_t n = ::recv(options.recv_fd, target + recv_done, p.bytes - recv_done, MSG_DONTWAIT);
      if (n > 0) {
        progressed = true;
        recv_done += static_cast<size_t>(n);
        if (recv_done == p.bytes) {
          if (p.add_into != nullptr) add_into(p.add_into, options.scratch->data(), p.bytes / sizeof(float));
          ++recv_index;
          recv_done = 0;
        }
      } else if (n == 0) {
        return fail(RingSide::recv, error(Code::unavailable, "connection closed by the peer"));
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return fail(RingSide::recv, error(Code::unavailable, errno_text("recv", errno)));
      }
    }
    if (progressed) {
      last_progress = Clock::now();
      continue;
    }

    // Nothing moved: sleep until a socket is ready. The send socket never carries data towards us,
    // so anything but writability on it means the next rank closed or reset the connection. Once
    // everything is sent that no longer matters to this collective (the next rank may finish and
    // leave first), so the send socket is then left out.
    const bool receiving = recv_index < plan.recvs.size();
    const bool sending = send_index < plan.sends.size();
    pollfd fds[2] = {{sending ? options.send_fd : -1, static_cast<short>(POLLRDHUP | (send_blocked ? POLLOUT : 0)), 0},
                     {receiving ? options.recv_fd : -1, POLLIN, 0}};
    int timeout_ms = -1;
    if (options.idle_timeout.count() > 0) {
      auto left = options.idle_timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_progress);
      timeout_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    int rc = ::poll(fds, 2, timeout_ms);
    if (rc < 0 && errno != EINTR) return fail(RingSide::recv, error(Code::unavailable, errno_text("poll", errno)));
    if (rc == 0) {
      return fail(receiving ? RingSide::recv : RingSide::send,
                  error(Code::timeout, std::string("no progress for ") + std::to_string(options.idle_timeout.count()) +
                                           " ms while " + (receiving ? "receiving" : "sending")));
    }
    if (rc > 0 && (fds[1].revents & POLLIN) == 0 && (fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLIN)) != 0) {
      int err = 0;
      socklen_t length = sizeof err;
      ::getsockopt(options.send_fd, SOL_SOCKET, SO_ERROR, &err, &length);
      return fail(RingSide::send, error(Code::unavailable, err != 0 ? errno_text("send", err)
                                                                    : std::string("connection closed by the peer")));
    }
  }
  return {};
}

// The error for a send socket that poll() reported closed or failed.
Status send_socket_error(int fd) {
  int err = 0;
  socklen_t length = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &length);
  return error(Code::unavailable, err != 0 ? errno_text("send", err) : std::string("connection closed by the peer"));
}

int poll_timeout_ms(std::chrono::milliseconds idle_timeout) {
  return idle_timeout.count() > 0 ? static_cast<int>(std::min<int64_t>(idle_timeout.count(), 1 << 30)) : -1;
}

Status timeout_error(std::chrono::milliseconds idle_timeout, const char* doing) {
  return error(Code::timeout,
               "no progress for " + std::to_string(idle_timeout.count()) + " ms while " + std::string(doing));
}

// Shared by the two threads of run_threaded.
struct ThreadedState {
  std::atomic<size_t> received{0};      // recv pieces complete (and summed), in plan order
  std::atomic<bool> recv_failed{false};  // set before `progress` is signalled for the last time
  Fd progress;                           // eventfd: the receiver signals each piece and its failure
  CancelPipe stop_receiver;              // the sender's failure
};

void signal_progress(const ThreadedState& state) {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(state.progress.get(), &one, sizeof one);
}

// The receive stream, on its own thread: each piece is received whole and summed before the next.
Status receive_all(const RingPlan& plan, const TransferOptions& options, ThreadedState& state) {
  char* scratch = reinterpret_cast<char*>(options.scratch->data());
  const int timeout_ms = poll_timeout_ms(options.idle_timeout);
  for (size_t i = 0; i < plan.recvs.size(); ++i) {
    const RecvPiece& p = plan.recvs[i];
    char* target = p.add_into != nullptr ? scratch : p.data;
    for (size_t done = 0; done < p.bytes;) {
      ssize_t n = ::recv(options.recv_fd, target + done, p.bytes - done, MSG_DONTWAIT);
      if (n > 0) {
        done += static_cast<size_t>(n);
      } else if (n == 0) {
        return error(Code::unavailable, "connection closed by the peer");
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        pollfd fds[2] = {{options.recv_fd, POLLIN, 0}, {state.stop_receiver.fd(), POLLIN, 0}};
        int rc = ::poll(fds, 2, timeout_ms);
        if (rc < 0 && errno != EINTR) return error(Code::unavailable, errno_text("poll", errno));
        if (rc == 0) return timeout_error(options.idle_timeout, "receiving");
        if (fds[1].revents != 0) return error(Code::cancelled, "the send stream failed");
      } else if (errno != EINTR) {
        return error(Code::unavailable, errno_text("recv", errno));
      }
    }
    if (p.add_into != nullptr) add_into(p.add_into, options.scratch->data(), p.bytes / sizeof(float));
    state.received.store(i + 1, std::memory_order_release);
    signal_progress(state);
  }
  return {};
}

// The send stream, on the calling thread. Returns ok without finishing when the receiver failed.
Status send_all(const RingPlan& plan, const TransferOptions& options, ThreadedState& state) {
  const int timeout_ms = poll_timeout_ms(options.idle_timeout);
  // Sleeps until the send socket is ready for `events` (always watched for a hang-up) or the
  // receiver signals; false when the receiver failed.
  auto wait = [&](short events, int wait_ms, const char* doing) -> Result<bool> {
    pollfd fds[2] = {{options.send_fd, static_cast<short>(events | POLLRDHUP), 0}, {state.progress.get(), POLLIN, 0}};
    int rc = ::poll(fds, 2, wait_ms);
    if (rc < 0 && errno != EINTR) return error(Code::unavailable, errno_text("poll", errno));
    if (rc == 0) return timeout_error(options.idle_timeout, doing);
    if ((fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLIN)) != 0) return send_socket_error(options.send_fd);
    if (fds[1].revents != 0) {
      uint64_t count = 0;
      [[maybe_unused]] ssize_t n = ::read(state.progress.get(), &count, sizeof count);
    }
    return !state.recv_failed.load(std::memory_order_acquire);
  };
  for (const SendPiece& p : plan.sends) {
    // The receiver owns the idle timeout while we wait for its data.
    while (p.after_recv >= static_cast<long>(state.received.load(std::memory_order_acquire))) {
      auto alive = wait(0, -1, "waiting");
      if (!alive.ok()) return alive.status();
      if (!*alive) return {};
    }
    for (size_t done = 0; done < p.bytes;) {
      ssize_t n = ::send(options.send_fd, p.data + done, p.bytes - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        done += static_cast<size_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        auto alive = wait(POLLOUT, timeout_ms, "sending");
        if (!alive.ok()) return alive.status();
        if (!*alive) return {};
      } else if (n < 0 && errno != EINTR) {
        return error(Code::unavailable, errno_text("send", errno));
      }
    }
  }
  return {};
}

// Both streams at once on two threads (the caller sends, a new thread receives and sums), so that
// one never waits for the other's system calls and the two ranks of a loaded machine are not left
// taking turns. The results do not depend on timing: every piece is summed by the receiver, in plan
// order, and sent only once summed.
Status run_threaded(const RingPlan& plan, const TransferOptions& options, RingSide& failed_side) {
  ThreadedState state;
  state.progress.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!state.progress.valid() || !state.stop_receiver.valid()) return run_single(plan, options, failed_side);
  Status received;
  std::thread receiver([&] {
    received = receive_all(plan, options, state);
    if (!received.ok()) {
      state.recv_failed.store(true, std::memory_order_release);
      signal_progress(state);
    }
  });
  Status sent = send_all(plan, options, state);
  if (!sent.ok()) state.stop_receiver.notify();
  receiver.join();
  // The stream that failed first: the other one only stopped because of it.
  if (!received.ok() && received.code() != Code::cancelled) {
    failed_side = RingSide::recv;
    return received;
  }
  if (!sent.ok()) {
    failed_side = RingSide::send;
    return sent;
  }
  return {};
}

}  // namespace

Status run_transfer(const RingPlan& plan, const TransferOptions& options, RingSide& failed_side) {
  failed_side = RingSide::none;
  size_t max_add = 0, recv_bytes = 0;
  for (const RecvPiece& p : plan.recvs) {
    if (p.add_into != nullptr) max_add = std::max(max_add, p.bytes / sizeof(float));
    recv_bytes += p.bytes;
  }
  if (options.scratch->size() < max_add) options.scratch->resize(max_add);
  if (!plan.sends.empty() && recv_bytes >= options.receive_thread_min_bytes) {
    return run_threaded(plan, options, failed_side);
  }
  return run_single(plan, options, failed_side);
}

}  // namespace cairn::detail
