// Protocol calls made from inside the node: an actor (or a thread the node owns) calls another
// actor's op with the same Call and CallMessage a client's request travels in, and gets the
// replies through callbacks instead of a connection. Used by the training actors to talk to the
// registry actor.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "actors/directory.h"
#include "runtime/call.h"
#include "runtime/wire.h"

namespace cairn {

struct LocalCallHandlers {
  // Each `more` reply's body (encoded msgpack). May be empty. Runs on the replying actor's thread:
  // must not block.
  std::function<void(std::string body)> on_more;
  // Exactly once: the final reply's body, or its error (unavailable when the actor stopped or was
  // not running). May be empty (fire and forget). Runs on the replying actor's thread, or on the
  // caller's when the actor is not running: must not block.
  std::function<void(Result<std::string> body)> on_done;
};

// Makes a Call whose replies go to `handlers`, and sends it to the actor named `actor` in
// `directory` as a CallMessage. Role is the caller's authority (the node's own calls use admin).
// Returns the call, so the caller may cancel it.
CallPtr send_local_call(const Directory& directory, const std::string& actor, const std::string& op,
                        std::string encoded_body, LocalCallHandlers handlers, Role role = Role::admin);

// The same, typed, waiting for the final reply: only from threads that may block (never an actor's).
// `timeout` bounds the wait (the call is cancelled then, and the result is Code::timeout).
template <class Reply, class Request>
Result<Reply> call_local_blocking(const Directory& directory, const std::string& actor, const std::string& op,
                                  const Request& request, std::chrono::milliseconds timeout);

// Implementation of call_local_blocking's wait, untyped.
Result<std::string> call_local_blocking_encoded(const Directory& directory, const std::string& actor,
                                                const std::string& op, std::string encoded_body,
                                                std::chrono::milliseconds timeout);

template <class Reply, class Request>
Result<Reply> call_local_blocking(const Directory& directory, const std::string& actor, const std::string& op,
                                  const Request& request, std::chrono::milliseconds timeout) {
  auto body = call_local_blocking_encoded(directory, actor, op, wire::encode(request), timeout);
  if (!body.ok()) return body.status();
  auto decoded = wire::decode_bytes<Reply>(*body);
  if (!decoded.ok()) return decoded.status().with_context(op + " reply");
  return decoded;
}

}  // namespace cairn
