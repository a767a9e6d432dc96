#include "actors/supervisor.h"

#include <deque>
#include <map>
#include <memory>

#include <spdlog/spdlog.h>

#include "actors/echo.h"
#include "actors/messages.h"

namespace cairn {
namespace {

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

enum class ChildState { running, restarting, failed };

std::string_view state_name(ChildState state) {
  switch (state) {
    case ChildState::running: return "running";
    case ChildState::restarting: return "restarting";
    case ChildState::failed: return "failed";
  }
  return "failed";
}

struct Child {
  Child(ChildSpec s, const RestartOptions& restart) : spec(std::move(s)), policy(restart) {}
  ChildSpec spec;
  RestartPolicy policy;
  caf::actor handle;
  ChildState state = ChildState::running;
  uint64_t restarts = 0;
  std::string last_error;
};

struct SupervisorState {
  SupervisorOptions options;
  Directory* directory = nullptr;
  NodeHooks hooks;
  std::map<std::string, Child> children;  // by name
  std::vector<std::string> order;         // start order, for status
  std::deque<msg::NodeEvent> history;
  std::vector<CallPtr> subscribers;  // node.events streams
  uint64_t next_seq = 1;
  bool stopping = false;
  static inline const char* name = "supervisor";
};

using Self = caf::stateful_actor<SupervisorState>*;

void publish(Self self, const std::string& actor, const std::string& event, const std::string& detail,
             uint64_t restarts) {
  auto& st = self->state;
  msg::NodeEvent e;
  e.seq = st.next_seq++;
  e.time_ms = static_cast<uint64_t>(unix_ms());
  e.actor = actor;
  e.event = event;
  e.detail = detail;
  e.restarts = restarts;
  if (event == "started" || event == "restarted") {
    spdlog::debug("supervisor: {} {}", actor, event);
  } else {
    spdlog::warn("supervisor: {} {}{}{}", actor, event, detail.empty() ? "" : ": ", detail);
  }
  st.history.push_back(e);
  while (st.history.size() > st.options.event_history) st.history.pop_front();
  auto encoded = wire::encode(e);
  auto& subs = st.subscribers;
  subs.erase(std::remove_if(subs.begin(), subs.end(), [](const CallPtr& c) { return c->finished(); }), subs.end());
  for (auto& call : subs) call->more_encoded(encoded);
}

void start_child(Self self, Child& child, bool restart) {
  child.handle = child.spec.spawn(self->system());
  self->monitor(child.handle);
  child.state = ChildState::running;
  self->state.directory->set(child.spec.name, child.handle);
  publish(self, child.spec.name, restart ? "restarted" : "started", "", child.restarts);
}

void on_child_down(Self self, const caf::down_msg& down) {
  auto& st = self->state;
  for (auto& [name, child] : st.children) {
    if (!child.handle || child.handle.address() != down.source) continue;
    st.directory->erase(name);
    child.handle = nullptr;
    if (st.stopping) return;
    child.last_error = down.reason ? self->system().render(down.reason) : "exited";
    publish(self, name, "crashed", child.last_error, child.restarts);
    auto decision = child.policy.on_failure(self->clock().now());
    if (decision.escalate) {
      child.state = ChildState::failed;
      std::string why = "actor " + name + " failed " + std::to_string(decision.failures_in_window) + " times within " +
                        std::to_string(st.options.restart.window.count()) + " ms (supervisor.max_restarts is " +
                        std::to_string(st.options.restart.max_restarts) + ")";
      publish(self, name, "failed", child.last_error, child.restarts);
      publish(self, name, "escalated", why, child.restarts);
      if (st.hooks.request_shutdown) st.hooks.request_shutdown(why, 3);
      return;
    }
    child.state = ChildState::restarting;
    publish(self, name, "restarting", "in " + std::to_string(decision.delay.count()) + " ms", child.restarts);
    self->delayed_send(self, decision.delay, restart_atom::value, name);
    return;
  }
}

// Collects each running child's mailbox size, then answers the status call.
void reply_status(Self self, const CallPtr& call) {
  auto& st = self->state;
  auto status = std::make_shared<msg::NodeStatus>(st.hooks.node_status ? st.hooks.node_status() : msg::NodeStatus{});
  auto pending = std::make_shared<size_t>(0);
  for (const auto& name : st.order) {
    const Child& child = st.children.at(name);
    msg::ActorStatus a;
    a.name = name;
    a.state = std::string(state_name(child.state));
    a.restarts = child.restarts;
    a.last_error = child.last_error;
    status->actors.push_back(a);
    if (child.state == ChildState::running) ++*pending;
  }
  if (*pending == 0) {
    call->reply(*status);
    return;
  }
  for (size_t i = 0; i < st.order.size(); ++i) {
    const Child& child = st.children.at(st.order[i]);
    if (child.state != ChildState::running) continue;
    auto finish_one = [status, pending, call, i](int64_t mailbox) {
      status->actors[i].mailbox = mailbox;
      if (--*pending == 0) call->reply(*status);
    };
    self->request<caf::message_priority::high>(child.handle, st.options.status_timeout, mailbox_size_atom::value)
        .then([finish_one](int64_t n) { finish_one(n); }, [finish_one](caf::error&) { finish_one(-1); });
  }
}

void serve(Self self, const CallPtr& call) {
  auto& st = self->state;
  const std::string& op = call->op();
  if (op == msg::kStatus) {
    reply_status(self, call);
  } else if (op == msg::kEvents) {
    auto request = call->body<msg::EventsRequest>();
    if (!request.ok()) return call->fail(request.status());
    if (request->replay) {
      for (const auto& e : st.history) call->more(e);
    }
    st.subscribers.push_back(call);
  } else if (op == msg::kKillActor) {
    auto request = call->body<msg::KillActor>();
    if (!request.ok()) return call->fail(request.status());
    auto it = st.children.find(request->name);
    if (it == st.children.end() && st.directory->find(request->name)) {
      // Not a child, but an actor a role runs and registered (a training job's trainer, shard or
      // param-sync): its owner monitors it and handles its death.
      spdlog::warn("supervisor: killing {} on request", request->name);
      self->send_exit(st.directory->find(request->name), caf::exit_reason::kill);
      return call->reply(msg::Empty{});
    }
    if (it == st.children.end()) {
      std::string names;
      for (const auto& n : st.order) names += (names.empty() ? "" : ", ") + n;
      return call->fail(Status(Code::not_found, op + ": no actor named \"" + request->name + "\" (this node runs: " +
                                                    names + ")"));
    }
    if (!it->second.handle) {
      return call->fail(Status(Code::unavailable, op + ": actor \"" + request->name + "\" is " +
                                                      std::string(state_name(it->second.state))));
    }
    spdlog::warn("supervisor: killing {} on request", request->name);
    self->send_exit(it->second.handle, caf::exit_reason::kill);
    call->reply(msg::Empty{});
  } else if (op == msg::kSetLogLevel) {
    auto request = call->body<msg::SetLogLevel>();
    if (!request.ok()) return call->fail(request.status());
    static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
    bool known = std::any_of(std::begin(kLevels), std::end(kLevels), [&](const char* l) { return request->level == l; });
    if (!known) {
      return call->fail(Status(Code::invalid_argument, op + ": field \"level\": expected one of trace, debug, info, "
                                                            "warn, error, off, got \"" + request->level + "\""));
    }
    msg::SetLogLevelReply reply;
    auto previous = spdlog::level::to_string_view(spdlog::get_level());
    reply.previous.assign(previous.data(), previous.size());
    spdlog::set_level(spdlog::level::from_str(request->level));
    spdlog::info("log level set to {} (was {})", request->level, reply.previous);
    call->reply(reply);
  } else if (op == msg::kShutdown) {
    call->reply(msg::Empty{});
    if (st.hooks.request_shutdown) st.hooks.request_shutdown("requested by an admin client", 0);
  } else {
    call->fail(Status(Code::unknown_op, "the supervisor does not serve \"" + op + "\""));
  }
}

caf::behavior supervisor_actor(Self self, SupervisorOptions options, std::vector<ChildSpec> specs, Directory* directory,
                               NodeHooks hooks) {
  auto& st = self->state;
  st.options = options;
  st.directory = directory;
  st.hooks = std::move(hooks);
  directory->set("supervisor", caf::actor_cast<caf::actor>(self));
  for (auto& spec : specs) {
    std::string name = spec.name;
    st.order.push_back(name);
    st.children.emplace(name, Child(std::move(spec), options.restart));
  }
  for (const auto& name : st.order) start_child(self, st.children.at(name), false);
  self->set_down_handler([self](caf::down_msg& down) { on_child_down(self, down); });
  self->set_exit_handler([self](caf::exit_msg& exit) {
    auto& st = self->state;
    st.stopping = true;
    for (auto& [name, child] : st.children) {
      st.directory->erase(name);
      if (child.handle) self->send_exit(child.handle, caf::exit_reason::user_shutdown);
    }
    st.directory->erase("supervisor");
    for (auto& call : st.subscribers) call->cancel(Status(Code::shutting_down, "node.events: the node is stopping"));
    st.subscribers.clear();
    self->quit(exit.reason);
  });
  return {
      [self](CallMessage& message) { serve(self, message.call); },
      [self](restart_atom, const std::string& name) {
        auto& st = self->state;
        auto it = st.children.find(name);
        if (st.stopping || it == st.children.end() || it->second.state != ChildState::restarting) return;
        ++it->second.restarts;
        start_child(self, it->second, true);
      },
      [self](drain_atom) {
        for (auto& call : self->state.subscribers) {
          call->cancel(Status(Code::shutting_down, "node.events: the node is stopping"));
        }
        self->state.subscribers.clear();
      },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

}  // namespace

std::vector<std::string> known_roles() { return {"echo", "registry", "inference", "train"}; }

std::vector<ChildSpec> child_specs_for(const std::vector<std::string>& roles, const RoleContext& context) {
  std::vector<ChildSpec> specs;
  for (const auto& role : roles) {
    if (role == "echo") {
      specs.push_back({role, [](caf::actor_system& system) { return system.spawn(echo_actor); }});
    } else if (role == "registry") {
      if (context.registry.store == nullptr || context.registry.blobs == nullptr) {
        spdlog::error("supervisor: role registry needs the node's registry and blob stores; not started");
        continue;
      }
      specs.push_back({role, [registry = context.registry](caf::actor_system& system) {
                         return spawn_registry(system, registry);
                       }});
    } else if (role == "inference") {
      specs.push_back({role, [inference = context.inference](caf::actor_system& system) {
                         return spawn_inference_batcher(system, inference);
                       }});
    } else if (role == "train") {
      if (context.train.jobs == nullptr || context.train.blobs == nullptr || context.train.directory == nullptr) {
        spdlog::error("supervisor: role train needs the node's job store, blob store and directory; not started");
        continue;
      }
      specs.push_back({role, [train = context.train](caf::actor_system& system) {
                         return spawn_job_manager(system, train);
                       }});
    }
  }
  return specs;
}

caf::actor spawn_supervisor(caf::actor_system& system, SupervisorOptions options, std::vector<ChildSpec> children,
                            Directory& directory, NodeHooks hooks) {
  return system.spawn(supervisor_actor, std::move(options), std::move(children), &directory, std::move(hooks));
}

}  // namespace cairn
