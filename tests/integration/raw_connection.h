// Test harness: a raw TCP connection to a node that speaks the protocol's framing by hand, so tests
// can send what the C++ client never would (garbage, malformed maps, partial frames) and see
// exactly what comes back. Non-blocking socket; every read and write waits with poll() up to a
// deadline, never with a sleep.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/protocol.h"
#include "runtime/status.h"

namespace cairn::testing {

inline constexpr std::chrono::milliseconds kRawIoTimeout{5000};

// One reply frame as the node sent it.
struct RawReply {
  uint64_t id = 0;
  protocol::ReplyKind kind = protocol::ReplyKind::ok;
  Status error;      // when kind == error
  std::string body;  // the body, encoded msgpack; "" when absent
};

struct RawOptions {
  // SO_RCVBUF / SO_SNDBUF set before connecting; 0 keeps the system default. Small buffers make a
  // client that stops reading fill the node's output quickly.
  int receive_buffer_bytes = 0;
  int send_buffer_bytes = 0;
};

class RawConnection {
 public:
  // Connects to 127.0.0.1:port within `timeout`.
  static Result<std::unique_ptr<RawConnection>> connect(uint16_t port, const RawOptions& options = {},
                                                        std::chrono::milliseconds timeout = kRawIoTimeout);
  ~RawConnection();
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  // Writes every byte, waiting for socket space up to `timeout`. `unavailable` when the node closed
  // or reset the connection, `timeout` when it stopped accepting bytes.
  Status write(std::string_view bytes, std::chrono::milliseconds timeout = kRawIoTimeout);
  // Writes a frame: the 4-byte length prefix, then `body` as given.
  Status send_frame(std::string_view body);
  // Writes a well-formed request frame (protocol::append_request).
  Status send_request(uint64_t id, std::string_view op, std::string_view body = {});
  // Writes the hello frame (it does not read the answer).
  Status send_hello(std::string_view token, uint32_t version = protocol::kVersion);
  // Sends hello and reads the welcome; fails with the node's error or a read error.
  Status handshake(std::string_view token);

  // Reads one frame and parses it as a reply. `timeout` when none arrives in time, `unavailable`
  // when the node closed or reset the connection first, `bad_frame` when the bytes are not a reply.
  Result<RawReply> read_reply(std::chrono::milliseconds timeout = kRawIoTimeout);
  // Reads (and keeps in `seen`, when given) replies until the node closes the connection. True when
  // it closed (end of stream or reset) within `timeout`.
  bool wait_closed(std::chrono::milliseconds timeout = kRawIoTimeout, std::vector<RawReply>* seen = nullptr);
  // Waits, without reading, until the node hangs up (FIN or reset), even while unread replies are
  // queued. True when it did within `timeout`.
  bool wait_hangup(std::chrono::milliseconds timeout = kRawIoTimeout);
  // Everything the node sends until it closes the connection; `timeout` if it does not close.
  Result<std::string> read_to_end(std::chrono::milliseconds timeout = kRawIoTimeout);

  int fd() const { return fd_; }

 private:
  explicit RawConnection(int fd) : fd_(fd) {}
  // Reads what is available into in_, waiting up to the deadline for at least one byte.
  Status fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  std::string in_;
};

// Packs a msgpack map from keys and already-encoded values: for requests with wrong types or
// missing fields. pack_map({{"id", encode(uint64_t{1})}, {"op", encode(42)}}).
std::string pack_map(std::initializer_list<std::pair<std::string, std::string>> fields);

// An HTTP/1.1 request over a fresh connection to 127.0.0.1:port, read to the end. Returns the
// status code and body, or the connection error.
struct HttpReply {
  int status = 0;
  std::string headers;  // the header block, lower-cased
  std::string body;
};
Result<HttpReply> http_get(uint16_t port, const std::string& path,
                           std::chrono::milliseconds timeout = kRawIoTimeout);

}  // namespace cairn::testing
