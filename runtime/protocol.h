// The protocol's envelope (docs/PROTOCOL.md): length-prefixed frames, requests and replies.
// Pure functions over bytes, shared by the node's transport, the C++ client and the tests.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/status.h"
#include "runtime/wire.h"

namespace cairn::protocol {

inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 4;
// Id 0 belongs to the handshake and to errors that concern no request.
inline constexpr uint64_t kConnectionId = 0;
inline constexpr std::string_view kHelloOp = "hello";
inline constexpr std::string_view kCancelOp = "cancel";

enum class ReplyKind : uint8_t { ok, more, error };
std::string_view reply_kind_name(ReplyKind kind);

// Reads the big-endian length prefix at `data` (at least kHeaderBytes long).
uint32_t read_length(const char* data);
void write_length(char* out, uint32_t length);

// Builds one frame in a buffer: reserve the header, pack the body, then finish() writes the length.
// Frames can be appended back to back into the same string (a batch of writes).
class FrameBuilder {
 public:
  explicit FrameBuilder(std::string& out);
  wire::Packer& packer() { return packer_; }
  // Patches the length prefix; returns the body's size.
  size_t finish();

 private:
  std::string& out_;
  size_t start_;
  wire::AppendBuffer buffer_;
  wire::Packer packer_;
};

// A request as read from a frame. `body` points into the frame's ObjectHandle.
struct Request {
  uint64_t id = 0;
  std::string_view op;
  const msgpack::object* body = nullptr;  // nullptr when absent
};

// Validates the envelope of a decoded frame. On error, `id_out` holds the request id when it could
// be read (so the error can name the request), else kConnectionId.
Result<Request> parse_request(const msgpack::object& frame, uint64_t& id_out);

// Appends a request frame; `body` is an encoded msgpack map (empty = no body).
void append_request(std::string& out, uint64_t id, std::string_view op, std::string_view body);

// Appends a reply frame. `body` is an encoded msgpack value (empty = no body).
void append_reply(std::string& out, uint64_t id, ReplyKind kind, std::string_view body);
void append_error(std::string& out, uint64_t id, const Status& status);

// A reply as read from a frame (the client side).
struct Reply {
  uint64_t id = 0;
  ReplyKind kind = ReplyKind::ok;
  const msgpack::object* body = nullptr;  // nullptr when absent
  Status error;                           // set when kind == error
};
Result<Reply> parse_reply(const msgpack::object& frame);

}  // namespace cairn::protocol
