// The CAF side of the message catalogue: how protocol calls and control messages travel between
// actors inside one node. A local send carries the Call itself, so it costs no encoding.
#pragma once

#include <memory>
#include <string>

#include <caf/all.hpp>

#include "runtime/call.h"

namespace cairn {

// A request from a client, delivered to the actor that serves its op. The actor answers through
// call (from its own thread; Call is thread-safe).
struct CallMessage {
  std::string op;  // copy of call->op(), so the message prints meaningfully
  CallPtr call;
};

// Never serialized: CallMessage only travels inside one process. inspect exists so CAF can print
// and register it.
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, CallMessage& x) {
  return f(caf::meta::type_name("cairn.call"), x.op);
}

// Asks an actor for its mailbox size (answered with int64_t), sent at high priority.
using mailbox_size_atom = caf::atom_constant<caf::atom("mboxsize")>;
// Sent by the node when it starts shutting down: end the streams that would never finish (event
// subscriptions) with shutting_down, so the grace period only waits for real work.
using drain_atom = caf::atom_constant<caf::atom("drain")>;
// Supervisor-internal: restart the named child now.
using restart_atom = caf::atom_constant<caf::atom("restart")>;

// Registers every message type of this catalogue with an actor system config.
void register_message_types(caf::actor_system_config& config);

}  // namespace cairn
