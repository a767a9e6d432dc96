// Routes protocol calls to the actor that serves their op, after checking the caller's role.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "actors/directory.h"
#include "cluster/server.h"

namespace cairn {

struct Route {
  std::string actor;  // name in the Directory
  Role min_role = Role::client;
};

// The op table of this build: every op the node serves through an actor, who serves it, and who
// may call it. (node.ping and cancel are answered by the transport itself.)
std::map<std::string, Route, std::less<>> default_routes();

class ActorRouter final : public Dispatcher {
 public:
  ActorRouter(const Directory& directory, std::map<std::string, Route, std::less<>> routes);
  void dispatch(CallPtr call) override;

 private:
  // Constant after construction.
  const Directory& directory_;
  const std::map<std::string, Route, std::less<>> routes_;
};

}  // namespace cairn
