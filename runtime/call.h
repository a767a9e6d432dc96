// Call: one request in flight, from the moment the transport decodes it until its final reply.
//
// Whoever serves the request (an actor, or the transport itself) answers through the Call. A Call
// is shared (std::shared_ptr) and thread-safe: any thread may reply. It guarantees the protocol's
// promise that every request gets exactly one final reply: replies after the first final one are
// dropped, and a Call destroyed without a final reply answers `internal` on its way out.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/messages/node.h"
#include "runtime/protocol.h"
#include "runtime/status.h"
#include "runtime/wire.h"

namespace cairn {

// Where a Call's replies go: implemented by a connection. Called from any thread.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // `body` is an encoded msgpack value, or empty. After a final reply (ok or error) the sink sends
  // nothing more for this id.
  virtual void send_reply(uint64_t id, protocol::ReplyKind kind, std::string body) = 0;
  virtual void send_error(uint64_t id, const Status& status) = 0;
  // Reply bytes accepted by send_reply/send_error that the peer has not yet been sent. A stream
  // that produces faster than the network drains (artifact downloads) waits while this is large,
  // instead of growing the connection's output until it is closed for not reading. 0 when the sink
  // does not track it.
  virtual uint64_t unsent_bytes() const { return 0; }
};

class Call {
 public:
  // `frame` owns the memory `body` points into; `body` may be null (no body). `client_name` is what
  // the connection's hello named (`client`), "" when it named nothing.
  Call(uint64_t id, std::string op, Role role, wire::ObjectHandle frame, const msgpack::object* body,
       std::weak_ptr<ReplySink> sink, std::string client_name = {});
  ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  uint64_t id() const { return id_; }
  const std::string& op() const { return op_; }
  Role role() const { return role_; }
  // The client's self-reported name from its handshake (for logs and audit records; not trusted).
  const std::string& client_name() const { return client_name_; }

  // Decodes the request body into a catalogue type; errors name the op and field.
  template <class T>
  Result<T> body() const {
    auto decoded = body_ == nullptr ? wire::decode<T>(msgpack::object()) : wire::decode<T>(*body_);
    if (!decoded.ok()) return decoded.status().with_context(op_);
    return decoded;
  }

  // Final success with a catalogue value as body.
  template <class T>
  void reply(const T& value) { reply_encoded(wire::encode(value)); }
  void reply_encoded(std::string body);
  // One stream item. Ignored once the call has finished.
  template <class T>
  void more(const T& value) { more_encoded(wire::encode(value)); }
  void more_encoded(std::string body);
  // Final failure.
  void fail(const Status& status);

  // Ends the call with `why` (normally Code::cancelled, or shutting_down when the node stops) and
  // runs the cancel hooks. Safe to call more than once.
  void cancel(const Status& why);
  // Runs `hook` once when the call is cancelled (immediately if it already was).
  void on_cancel(std::function<void()> hook);

  bool finished() const { return finished_.load(std::memory_order_acquire); }
  // ReplySink::unsent_bytes of the connection; 0 once it is gone.
  uint64_t unsent_bytes() const;

 private:
  bool claim_final();

  // Constant after construction.
  const uint64_t id_;
  const std::string op_;
  const Role role_;
  const wire::ObjectHandle frame_;
  const msgpack::object* const body_;
  const std::weak_ptr<ReplySink> sink_;
  const std::string client_name_;

  std::atomic<bool> finished_{false};
  std::mutex hooks_mutex_;  // guards cancel_hooks_ and cancelled_
  bool cancelled_ = false;
  std::vector<std::function<void()>> cancel_hooks_;
};

using CallPtr = std::shared_ptr<Call>;

// A Call made inside the process rather than decoded from a connection (the HTTP front ends, actors
// calling each other, tests), shaped exactly as the transport makes one, so the serving actor
// cannot tell them apart. `encoded_body` is a msgpack value, or empty for none. Errors:
// invalid_argument naming `op` when the body is not msgpack.
Result<CallPtr> make_call(uint64_t id, const std::string& op, Role role, const std::string& encoded_body,
                          std::weak_ptr<ReplySink> sink, std::string client_name = {});
// Ids for make_call from one process-wide counter, so calls made in different places never share one.
uint64_t next_local_call_id();

}  // namespace cairn
