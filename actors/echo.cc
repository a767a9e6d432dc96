#include "actors/echo.h"

#include "actors/messages.h"

namespace cairn {

caf::behavior echo_actor(caf::event_based_actor* self) {
  return {
      [](CallMessage& message) {
        auto body = message.call->body<msg::Echo>();
        if (!body.ok()) {
          message.call->fail(body.status());
          return;
        }
        message.call->reply(*body);
      },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

}  // namespace cairn
