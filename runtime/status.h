// Status and Result<T>: how library code reports failure. Every error carries one stable Code (its
// wire name never changes once released) and a human message that names the thing that was wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace cairn {

enum class Code : uint8_t {
  ok = 0,
  // The frame could not be decoded (bad msgpack, not a map, trailing bytes). Framing is intact, so
  // the connection stays open.
  bad_frame,
  // A frame's length prefix exceeds protocol.max_frame_bytes. The connection is closed.
  frame_too_large,
  // A request is well-formed msgpack but a field is missing, has the wrong type or a bad value.
  bad_request,
  // The op names no operation this node serves.
  unknown_op,
  // The handshake was missing, malformed, or its token is not valid.
  unauthenticated,
  // The token is valid but its role may not perform this op.
  permission_denied,
  // The client speaks a protocol version this node does not.
  unsupported_version,
  // The node (or one of its queues) is full; retry later.
  overloaded,
  // A deadline passed before the operation finished.
  timeout,
  // The caller cancelled the request (or the stream).
  cancelled,
  // The named thing does not exist.
  not_found,
  // The thing already exists and may not be created again.
  already_exists,
  // The actor that serves this op is restarting, failed, or the connection is down.
  unavailable,
  // The node is shutting down and accepts no new work.
  shutting_down,
  // A configuration value or argument is invalid.
  invalid_argument,
  // Storage (RocksDB, the file system) failed.
  io_error,
  // The data on disk or on the wire is corrupt.
  data_loss,
  // A bug or an unexpected exception: the message says where.
  internal,
};

// The stable wire name of a code, e.g. "bad_request".
std::string_view code_name(Code code);
// The code with that wire name, or nullopt.
std::optional<Code> code_from_name(std::string_view name);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }

  bool ok() const { return code_ == Code::ok; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "bad_request: node.echo: field \"payload\" is missing"
  std::string to_string() const;

  // Prefixes the message with where it happened: "config.yaml: " + message.
  Status with_context(std::string_view context) const;

 private:
  Code code_ = Code::ok;
  std::string message_;
};

inline Status error(Code code, std::string message) { return Status(code, std::move(message)); }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Status status) : v_(std::move(status)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // The error; only valid when !ok().
  const Status& status() const { return std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace cairn

// Returns the Status of an expression from the enclosing function when it is not ok.
#define CAIRN_RETURN_IF_ERROR(expr)          \
  do {                                       \
    ::cairn::Status cairn_status_ = (expr);  \
    if (!cairn_status_.ok()) return cairn_status_; \
  } while (0)
