#include "cluster/detail/ring_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

namespace cairn::detail {

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

CancelPipe::CancelPipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
    read_.reset(fds[0]);
    write_.reset(fds[1]);
  }
}

void CancelPipe::notify() {
  char byte = 1;
  // A full pipe is already readable, so a failed write changes nothing.
  [[maybe_unused]] ssize_t n = ::write(write_.get(), &byte, 1);
}

std::string errno_text(const char* what, int err) {
  char buffer[256];
  // GNU strerror_r returns the message, which may or may not be in `buffer`.
  return std::string(what) + ": " + ::strerror_r(err, buffer, sizeof buffer);
}

namespace {

// The first address `address` resolves to (numeric hosts resolve without a lookup).
Result<std::vector<unsigned char>> resolve(const HostPort& address, socklen_t& length, int& family) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string host = address.host.empty() ? "0.0.0.0" : address.host;
  std::string port = std::to_string(address.port);
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    return error(Code::unavailable, address.to_string() + ": cannot resolve: " + ::gai_strerror(rc));
  }
  std::vector<unsigned char> bytes(found->ai_addrlen);
  std::memcpy(bytes.data(), found->ai_addr, found->ai_addrlen);
  length = found->ai_addrlen;
  family = found->ai_family;
  ::freeaddrinfo(found);
  return bytes;
}

int remaining_ms(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return -1;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

}  // namespace

Result<Fd> listen_tcp(const HostPort& address, HostPort& bound) {
  socklen_t length = 0;
  int family = 0;
  auto resolved = resolve(address, length, family);
  if (!resolved.ok()) return resolved.status();
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return error(Code::unavailable, address.to_string() + ": " + errno_text("socket", errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(resolved->data()), length) != 0) {
    return error(Code::unavailable, address.to_string() + ": " + errno_text("bind", errno));
  }
  if (::listen(fd.get(), 16) != 0) {
    return error(Code::unavailable, address.to_string() + ": " + errno_text("listen", errno));
  }
  sockaddr_storage actual{};
  socklen_t actual_length = sizeof actual;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&actual), &actual_length);
  bound = address;
  bound.port = ntohs(actual.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&actual)->sin6_port
                                                  : reinterpret_cast<sockaddr_in*>(&actual)->sin_port);
  return fd;
}

Status tune_socket(int fd, int buffer_bytes) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    return error(Code::unavailable, errno_text("setsockopt(TCP_NODELAY)", errno));
  }
  if (buffer_bytes > 0) {
    // The kernel caps these at net.core.{w,r}mem_max; a smaller buffer still works.
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return error(Code::unavailable, errno_text("fcntl(O_NONBLOCK)", errno));
  }
  return {};
}

Status wait_fd(int fd, short events, Clock::time_point deadline, int cancel_fd) {
  for (;;) {
    pollfd fds[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
    int rc = ::poll(fds, cancel_fd >= 0 ? 2 : 1, remaining_ms(deadline));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return error(Code::unavailable, errno_text("poll", errno));
    }
    if (cancel_fd >= 0 && fds[1].revents != 0) return error(Code::cancelled, "cancelled");
    if (rc == 0) return error(Code::timeout, "timed out");
    return {};  // ready, or an error condition that the next call on fd reports
  }
}

Status read_exact(int fd, void* data, size_t bytes, Clock::time_point deadline, int cancel_fd) {
  auto* at = static_cast<char*>(data);
  while (bytes > 0) {
    ssize_t n = ::recv(fd, at, bytes, 0);
    if (n > 0) {
      at += n;
      bytes -= static_cast<size_t>(n);
    } else if (n == 0) {
      return error(Code::unavailable, "connection closed by the peer");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      CAIRN_RETURN_IF_ERROR(wait_fd(fd, POLLIN, deadline, cancel_fd));
    } else if (errno != EINTR) {
      return error(Code::unavailable, errno_text("recv", errno));
    }
  }
  return {};
}

Status write_exact(int fd, const void* data, size_t bytes, Clock::time_point deadline, int cancel_fd) {
  const auto* at = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::send(fd, at, bytes, MSG_NOSIGNAL);
    if (n >= 0) {
      at += n;
      bytes -= static_cast<size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      CAIRN_RETURN_IF_ERROR(wait_fd(fd, POLLOUT, deadline, cancel_fd));
    } else if (errno != EINTR) {
      return error(Code::unavailable, errno_text("send", errno));
    }
  }
  return {};
}

Result<Fd> dial_with_retry(const HostPort& address, Clock::time_point deadline, int cancel_fd, int buffer_bytes) {
  socklen_t length = 0;
  int family = 0;
  auto resolved = resolve(address, length, family);
  if (!resolved.ok()) return resolved.status();
  auto pause = std::chrono::milliseconds(10);
  std::string last = "no attempt";
  for (;;) {
    Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return error(Code::unavailable, errno_text("socket", errno));
    // Buffer sizes must be set before connecting to take effect on the window.
    CAIRN_RETURN_IF_ERROR(tune_socket(fd.get(), buffer_bytes));
    int rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(resolved->data()), length);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      Status ready = wait_fd(fd.get(), POLLOUT, deadline, cancel_fd);
      if (ready.code() == Code::cancelled) return ready;
      if (!ready.ok()) return error(Code::unavailable, "connect: " + ready.message() + " (last error: " + last + ")");
      socklen_t err_length = sizeof err;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_length);
    }
    if (err == 0) return fd;
    last = errno_text("connect", err);
    if (err != ECONNREFUSED && err != ETIMEDOUT && err != EHOSTUNREACH && err != ENETUNREACH && err != ECONNRESET) {
      return error(Code::unavailable, last);
    }
    // Nobody listens yet: wait a little (or until cancelled) and try again.
    if (Clock::now() + pause >= deadline) return error(Code::unavailable, "gave up before the deadline: " + last);
    pollfd wait = {cancel_fd, POLLIN, 0};
    if (::poll(&wait, cancel_fd >= 0 ? 1 : 0, static_cast<int>(pause.count())) > 0) {
      return error(Code::cancelled, "cancelled");
    }
    pause = std::min(pause * 2, std::chrono::milliseconds(500));
  }
}

namespace {

constexpr char kMagic[8] = {'C', 'A', 'I', 'R', 'N', 'R', 'G', '1'};  // ring handshake, version 1
constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = 32;  // HMAC-SHA256

// dialler -> acceptor: magic, rank, world_size, nonce
constexpr size_t kHelloBytes = 8 + 4 + 4 + kNonceBytes;
// acceptor -> dialler: magic, verdict, expected rank, expected world_size, nonce, then a MAC
constexpr size_t kChallengeBytes = 8 + 4 + 4 + 4 + kNonceBytes;
// dialler -> acceptor: a MAC; acceptor -> dialler: one byte, 1 = accepted
constexpr uint32_t kVerdictOk = 0;
constexpr uint32_t kVerdictWrongRank = 1;

void put_u32(unsigned char* at, uint32_t v) {
  at[0] = static_cast<unsigned char>(v >> 24);
  at[1] = static_cast<unsigned char>(v >> 16);
  at[2] = static_cast<unsigned char>(v >> 8);
  at[3] = static_cast<unsigned char>(v);
}

uint32_t get_u32(const unsigned char* at) {
  return (uint32_t{at[0]} << 24) | (uint32_t{at[1]} << 16) | (uint32_t{at[2]} << 8) | uint32_t{at[3]};
}

using Mac = std::array<unsigned char, kMacBytes>;

// HMAC-SHA256(secret, label || hello || challenge): each side's proof covers both sides' nonces and
// a label of its own, so neither proof can be replayed as the other.
Mac prove(const std::string& secret, const char* label, const unsigned char* hello, const unsigned char* challenge) {
  std::vector<unsigned char> message(label, label + std::strlen(label));
  message.insert(message.end(), hello, hello + kHelloBytes);
  message.insert(message.end(), challenge, challenge + kChallengeBytes);
  Mac mac{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), message.data(), message.size(), mac.data(),
       &length);
  return mac;
}

bool same_mac(const Mac& a, const unsigned char* b) { return CRYPTO_memcmp(a.data(), b, kMacBytes) == 0; }

Status fresh_nonce(unsigned char* at) {
  if (RAND_bytes(at, static_cast<int>(kNonceBytes)) != 1) return error(Code::internal, "RAND_bytes failed");
  return {};
}

}  // namespace

Status handshake_dial(int fd, const RingHello& hello, const std::string& secret, Clock::time_point deadline,
                      int cancel_fd) {
  unsigned char hello_bytes[kHelloBytes];
  std::memcpy(hello_bytes, kMagic, 8);
  put_u32(hello_bytes + 8, hello.rank);
  put_u32(hello_bytes + 12, hello.world_size);
  CAIRN_RETURN_IF_ERROR(fresh_nonce(hello_bytes + 16));
  CAIRN_RETURN_IF_ERROR(write_exact(fd, hello_bytes, kHelloBytes, deadline, cancel_fd));

  unsigned char challenge[kChallengeBytes + kMacBytes];
  CAIRN_RETURN_IF_ERROR(read_exact(fd, challenge, sizeof challenge, deadline, cancel_fd));
  if (std::memcmp(challenge, kMagic, 8) != 0) {
    return error(Code::unauthenticated, "the peer does not speak the ring handshake");
  }
  if (!same_mac(prove(secret, "accept", hello_bytes, challenge), challenge + kChallengeBytes)) {
    return error(Code::unauthenticated, "the peer does not know the job secret");
  }
  if (get_u32(challenge + 8) == kVerdictWrongRank) {
    return error(Code::invalid_argument, "the peer expects rank " + std::to_string(get_u32(challenge + 12)) + " of " +
                                             std::to_string(get_u32(challenge + 16)) + ", not rank " +
                                             std::to_string(hello.rank) + " of " + std::to_string(hello.world_size));
  }
  Mac mine = prove(secret, "dial", hello_bytes, challenge);
  CAIRN_RETURN_IF_ERROR(write_exact(fd, mine.data(), mine.size(), deadline, cancel_fd));
  unsigned char accepted = 0;
  CAIRN_RETURN_IF_ERROR(read_exact(fd, &accepted, 1, deadline, cancel_fd));
  if (accepted != 1) return error(Code::unauthenticated, "the peer refused our proof of the job secret");
  return {};
}

Status handshake_accept(int fd, const RingHello& expected, const std::string& secret, Clock::time_point deadline,
                        int cancel_fd) {
  unsigned char hello[kHelloBytes];
  CAIRN_RETURN_IF_ERROR(read_exact(fd, hello, kHelloBytes, deadline, cancel_fd));
  if (std::memcmp(hello, kMagic, 8) != 0) {
    return error(Code::unauthenticated, "the connection does not speak the ring handshake");
  }
  const uint32_t rank = get_u32(hello + 8), world_size = get_u32(hello + 12);
  const bool right_rank = rank == expected.rank && world_size == expected.world_size;

  unsigned char challenge[kChallengeBytes + kMacBytes];
  std::memcpy(challenge, kMagic, 8);
  put_u32(challenge + 8, right_rank ? kVerdictOk : kVerdictWrongRank);
  put_u32(challenge + 12, expected.rank);
  put_u32(challenge + 16, expected.world_size);
  CAIRN_RETURN_IF_ERROR(fresh_nonce(challenge + 20));
  Mac mine = prove(secret, "accept", hello, challenge);
  std::memcpy(challenge + kChallengeBytes, mine.data(), kMacBytes);
  CAIRN_RETURN_IF_ERROR(write_exact(fd, challenge, sizeof challenge, deadline, cancel_fd));
  if (!right_rank) {
    return error(Code::invalid_argument, "the dialler is rank " + std::to_string(rank) + " of " +
                                             std::to_string(world_size) + ", expected rank " +
                                             std::to_string(expected.rank) + " of " +
                                             std::to_string(expected.world_size));
  }
  unsigned char theirs[kMacBytes];
  CAIRN_RETURN_IF_ERROR(read_exact(fd, theirs, kMacBytes, deadline, cancel_fd));
  const bool proven = same_mac(prove(secret, "dial", hello, challenge), theirs);
  unsigned char verdict = proven ? 1 : 0;
  CAIRN_RETURN_IF_ERROR(write_exact(fd, &verdict, 1, deadline, cancel_fd));
  if (!proven) return error(Code::unauthenticated, "the dialler does not know the job secret");
  return {};
}

}  // namespace cairn::detail
