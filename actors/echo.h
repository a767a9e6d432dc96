// The echo actor (role "echo"): answers node.echo with its payload. A round trip through the actor
// system, for end-to-end checks and for measuring what an actor hop costs.
#pragma once

#include <caf/all.hpp>

namespace cairn {

caf::behavior echo_actor(caf::event_based_actor* self);

}  // namespace cairn
