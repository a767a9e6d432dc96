// Helpers shared by the integration tests: assertion macros for Status/Result, a node shared by
// the suites that do not change node state, and a collector for node.events streams.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cairn/client.h"
#include "node_process.h"
#include "raw_connection.h"

// Fails the test (and returns) when `expr`, a Status, is not ok.
#define CAIRN_ASSERT_OK(expr)                                   \
  do {                                                          \
    const ::cairn::Status cairn_assert_status_ = (expr);        \
    ASSERT_TRUE(cairn_assert_status_.ok()) << cairn_assert_status_.to_string(); \
  } while (0)

#define CAIRN_CONCAT_INNER(a, b) a##b
#define CAIRN_CONCAT(a, b) CAIRN_CONCAT_INNER(a, b)
// `lhs = value of expr`, a Result<T>; fails the test (and returns) when it is an error.
#define CAIRN_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  CAIRN_ASSERT_OK_AND_ASSIGN_IMPL(CAIRN_CONCAT(cairn_result_, __LINE__), lhs, expr)
#define CAIRN_ASSERT_OK_AND_ASSIGN_IMPL(result, lhs, expr)               \
  auto result = (expr);                                                  \
  ASSERT_TRUE(result.ok()) << #expr << ": " << result.status().to_string(); \
  lhs = std::move(result).value()

namespace cairn::testing {

// A node with the default configuration, started on first use and shared by every test that
// neither changes its state nor depends on its limits. Null when it failed to start; then
// shared_node_error() says why.
NodeProcess* shared_node();
std::string shared_node_error();

// A fixture whose tests share one node of their own (for suites that change node state or need
// options): the subclass's SetUpTestSuite calls start_node(); SetUp fails each test, saying why,
// when the node did not start; TearDownTestSuite stops it.
class SharedNodeTest : public ::testing::Test {
 protected:
  static void start_node(const NodeOptions& options);
  static void TearDownTestSuite();
  void SetUp() override;

  static NodeProcess* node_;        // null when start_node failed
  static std::string start_error_;  // why start_node failed
};

// The entry for `name` in a node.status reply, or nullptr.
const msg::ActorStatus* find_actor(const msg::NodeStatus& status, const std::string& name);

// Collects the items of a node.events subscription; tests wait on it for a given event. The
// callbacks run on the client's I/O thread; the waits on the test thread.
class EventLog {
 public:
  EventLog() : state_(std::make_shared<State>()) {}

  ItemCallback on_item() const;
  std::function<void(const Status&)> on_end() const;

  // Waits for the `nth` (0-based) event with this actor and event name; nullopt after `timeout`.
  std::optional<msg::NodeEvent> wait_for(const std::string& actor, const std::string& event,
                                         std::chrono::milliseconds timeout, size_t nth = 0) const;
  // Waits for at least `count` items of any kind.
  bool wait_count(size_t count, std::chrono::milliseconds timeout) const;
  std::vector<msg::NodeEvent> events() const;
  // "actor:event" for every item so far, for failure messages.
  std::string describe() const;

 private:
  struct State {
    mutable std::mutex mutex;  // guards events and end
    std::condition_variable cv;
    std::vector<msg::NodeEvent> events;
    std::optional<Status> end;
  };
  std::shared_ptr<State> state_;
};

}  // namespace cairn::testing
