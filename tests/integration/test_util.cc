#include "test_util.h"

namespace cairn::testing {
namespace {

struct SharedNode {
  std::unique_ptr<NodeProcess> node;
  std::string error;
  SharedNode() {
    auto started = NodeProcess::start({});
    if (started.ok()) {
      node = std::move(started).value();
    } else {
      error = started.status().to_string();
    }
  }
};

SharedNode& shared() {
  // Destroyed at exit, which kills the node.
  static SharedNode instance;
  return instance;
}

}  // namespace

NodeProcess* shared_node() { return shared().node.get(); }
std::string shared_node_error() { return shared().error; }

NodeProcess* SharedNodeTest::node_ = nullptr;
std::string SharedNodeTest::start_error_;

void SharedNodeTest::start_node(const NodeOptions& options) {
  auto started = NodeProcess::start(options);
  if (started.ok()) {
    node_ = std::move(started).value().release();
  } else {
    start_error_ = started.status().to_string();
  }
}

void SharedNodeTest::TearDownTestSuite() {
  delete node_;
  node_ = nullptr;
  start_error_.clear();
}

void SharedNodeTest::SetUp() { ASSERT_NE(node_, nullptr) << start_error_; }

const msg::ActorStatus* find_actor(const msg::NodeStatus& status, const std::string& name) {
  for (const auto& actor : status.actors) {
    if (actor.name == name) return &actor;
  }
  return nullptr;
}

ItemCallback EventLog::on_item() const {
  return [state = state_](const std::string& body) {
    auto event = wire::decode_bytes<msg::NodeEvent>(body);
    if (!event.ok()) return;
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->events.push_back(std::move(event).value());
    }
    state->cv.notify_all();
  };
}

std::function<void(const Status&)> EventLog::on_end() const {
  return [state = state_](const Status& status) {
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->end = status;
    }
    state->cv.notify_all();
  };
}

std::optional<msg::NodeEvent> EventLog::wait_for(const std::string& actor, const std::string& event,
                                                 std::chrono::milliseconds timeout, size_t nth) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  std::optional<msg::NodeEvent> found;
  state_->cv.wait_for(lock, timeout, [&] {
    size_t seen = 0;
    for (const auto& e : state_->events) {
      if (e.actor == actor && e.event == event && seen++ == nth) {
        found = e;
        return true;
      }
    }
    return false;
  });
  return found;
}

bool EventLog::wait_count(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  return state_->cv.wait_for(lock, timeout, [&] { return state_->events.size() >= count; });
}

std::vector<msg::NodeEvent> EventLog::events() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->events;
}

std::string EventLog::describe() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  std::string out = "events so far:";
  for (const auto& e : state_->events) out += " " + e.actor + ":" + e.event;
  if (state_->end) out += " (stream ended: " + state_->end->to_string() + ")";
  return out;
}

}  // namespace cairn::testing
