// The supervisor: one per node. It spawns the node's actors (its roles), monitors them, restarts a
// crashed one by its RestartPolicy (one-for-one, bounded restarts in a window, exponential
// backoff), escalates by stopping the node when a child spends its budget, and serves the node.*
// ops that concern the node as a whole (status, events, kill_actor, set_log_level, shutdown).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/directory.h"
#include "actors/inference_batcher.h"
#include "actors/registry.h"
#include "actors/restart_policy.h"
#include "actors/train/job_manager.h"
#include "runtime/messages/node.h"

namespace cairn {

// How to start one child. `spawn` is called on the supervisor's thread, at start and per restart.
struct ChildSpec {
  std::string name;
  std::function<caf::actor(caf::actor_system&)> spawn;
};

// What the node lends to the roles that need it. Everything pointed to is owned by the node and
// outlives the actor system, so a restarted child continues with the same resources.
struct RoleContext {
  RegistryContext registry;  // "registry": both stores must be set
  InferenceContext inference;  // "inference": directory and blobs for registry sources
  TrainContext train;          // "train": jobs, blobs and directory must be set
};

// The roles this build can run, by name ("echo", "registry", ...), in the order the node starts them.
std::vector<std::string> known_roles();
// Specs for a config's roles; every name must be in known_roles(), and roles that need a resource
// of `context` must have it (a role without its resource is left out, with an error logged).
std::vector<ChildSpec> child_specs_for(const std::vector<std::string>& roles, const RoleContext& context = {});

// What the supervisor needs from the node around it. Both are called on the supervisor's thread
// and must be thread-safe with respect to the rest of the node.
struct NodeHooks {
  // Ask the node to stop: exit_code 0 for a requested shutdown, non-zero after an escalation.
  std::function<void(const std::string& reason, int exit_code)> request_shutdown;
  // The node-level part of node.status (everything but `actors`).
  std::function<msg::NodeStatus()> node_status;
};

struct SupervisorOptions {
  RestartOptions restart;
  // How long node.status waits for a child to report its mailbox before showing -1.
  std::chrono::milliseconds status_timeout{500};
  // Supervisor events kept for node.events {replay: true}.
  size_t event_history = 256;
};

// Spawns the supervisor, which spawns every child in `children` and registers each (and itself,
// as "supervisor") in `directory`. Stop it with an exit message; it stops its children.
caf::actor spawn_supervisor(caf::actor_system& system, SupervisorOptions options, std::vector<ChildSpec> children,
                            Directory& directory, NodeHooks hooks);

}  // namespace cairn
