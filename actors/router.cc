#include "actors/router.h"

#include <caf/all.hpp>

#include "actors/inference_batcher.h"
#include "actors/messages.h"
#include "actors/registry.h"
#include "runtime/messages/train.h"

namespace cairn {

std::map<std::string, Route, std::less<>> default_routes() {
  std::map<std::string, Route, std::less<>> routes = {
      {std::string(msg::kEcho), {"echo", Role::client}},
      {std::string(msg::kStatus), {"supervisor", Role::client}},
      {std::string(msg::kEvents), {"supervisor", Role::client}},
      {std::string(msg::kKillActor), {"supervisor", Role::admin}},
      {std::string(msg::kSetLogLevel), {"supervisor", Role::admin}},
      {std::string(msg::kShutdown), {"supervisor", Role::admin}},
  };
  for (const auto& op : registry_ops()) routes.emplace(std::string(op.name), Route{"registry", op.min_role});
  // Training: clients submit, read and cancel jobs.
  for (std::string_view op : {msg::kTrainSubmit, msg::kTrainStatus, msg::kTrainList, msg::kTrainCancel,
                              msg::kTrainLogs, msg::kTrainWatch}) {
    routes.emplace(std::string(op), Route{"train", Role::client});
  }
  // Node to node: the home node of a job spanning nodes starts its ranks here.
  for (std::string_view op : {msg::kTrainJoin, msg::kTrainStart, msg::kTrainAbort}) {
    routes.emplace(std::string(op), Route{"train", Role::admin});
  }
  for (const auto& op : inference_ops()) routes.emplace(std::string(op.name), Route{"inference", op.min_role});
  return routes;
}

ActorRouter::ActorRouter(const Directory& directory, std::map<std::string, Route, std::less<>> routes)
    : directory_(directory), routes_(std::move(routes)) {}

void ActorRouter::dispatch(CallPtr call) {
  auto route = routes_.find(call->op());
  if (route == routes_.end()) {
    call->fail(Status(Code::unknown_op, "unknown op \"" + call->op() + "\""));
    return;
  }
  if (call->role() < route->second.min_role) {
    call->fail(Status(Code::permission_denied, call->op() + ": needs the " +
                                                   std::string(role_name(route->second.min_role)) +
                                                   " role; this token has the " + std::string(role_name(call->role())) +
                                                   " role"));
    return;
  }
  caf::actor target = directory_.find(route->second.actor);
  if (!target) {
    call->fail(Status(Code::unavailable, call->op() + ": actor \"" + route->second.actor + "\" is not running"));
    return;
  }
  std::string op = call->op();
  caf::anon_send(target, CallMessage{std::move(op), std::move(call)});
}

}  // namespace cairn
