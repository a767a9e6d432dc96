// The TCP plumbing of the ring (cluster/collective.h): owned descriptors, listening, dialling with
// retries, the authenticated handshake, and exact reads and writes with a deadline. POSIX sockets,
// all non-blocking; every wait is a poll() that also watches a cancel descriptor.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/config.h"
#include "runtime/status.h"

namespace cairn::detail {

using Clock = std::chrono::steady_clock;

// Owns a file descriptor; closes it on destruction. Movable, not copyable.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A pipe whose read end becomes readable once notify() is called: the way one thread wakes
// another's poll(). notify() is async-signal-safe and may be called more than once.
class CancelPipe {
 public:
  CancelPipe();  // on failure valid() is false
  bool valid() const { return read_.valid() && write_.valid(); }
  int fd() const { return read_.get(); }
  void notify();

 private:
  Fd read_, write_;
};

// "connect: Connection refused"
std::string errno_text(const char* what, int err);

// A non-blocking listening socket on `address`; fills `bound` with the real address (port 0 asks for
// a free port). Errors are `unavailable` naming the address.
Result<Fd> listen_tcp(const HostPort& address, HostPort& bound);

// TCP_NODELAY, O_NONBLOCK, and SO_SNDBUF/SO_RCVBUF when buffer_bytes > 0.
Status tune_socket(int fd, int buffer_bytes);

// Waits until `fd` is ready for `events` (POLLIN/POLLOUT), the deadline passes (timeout) or
// `cancel_fd` (-1: none) becomes readable (cancelled). A deadline of Clock::time_point::max() waits
// forever.
Status wait_fd(int fd, short events, Clock::time_point deadline, int cancel_fd);

// Reads / writes exactly `bytes`, waiting with wait_fd. A closed connection is `unavailable`.
Status read_exact(int fd, void* data, size_t bytes, Clock::time_point deadline, int cancel_fd);
Status write_exact(int fd, const void* data, size_t bytes, Clock::time_point deadline, int cancel_fd);

// Dials `address` until a connection is made or the deadline passes: refused and unreachable
// attempts are retried with a growing pause (peers start at different times). The result is tuned
// with tune_socket.
Result<Fd> dial_with_retry(const HostPort& address, Clock::time_point deadline, int cancel_fd, int buffer_bytes);

// Who is on the two ends of a handshake: the dialling side is rank `rank` of `world_size`.
struct RingHello {
  uint32_t rank = 0;
  uint32_t world_size = 0;
};

// The dialling side of the handshake: both sides prove they know `secret` with HMAC-SHA256 over
// fresh nonces; the secret itself is never sent. Fails with `unauthenticated` when the peer cannot
// prove it or refuses our proof, `invalid_argument` when it expects a different rank or world size,
// and `unavailable` on I/O errors.
Status handshake_dial(int fd, const RingHello& hello, const std::string& secret, Clock::time_point deadline,
                      int cancel_fd);

// The accepting side: expects the dialler to be rank `expected.rank` of `expected.world_size`.
Status handshake_accept(int fd, const RingHello& expected, const std::string& secret, Clock::time_point deadline,
                        int cancel_fd);

}  // namespace cairn::detail
