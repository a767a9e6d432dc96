// Supervision in a real node: a killed actor is restarted and reported on node.events; an actor
// that spends its restart budget stops the node with exit code 3.
#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;

constexpr int kExitEscalated = 3;  // cli/commands.h: the node stopped after an escalation

Status kill_echo(Client& admin) {
  auto reply = admin.call(msg::kKillActor, wire::encode(msg::KillActor{"echo"}), 5s);
  return reply.ok() ? Status() : reply.status();
}

// One node carries the whole story (starting a node is the slow part): with max_restarts 1, the
// first kill is restarted and reported; the second spends the budget and stops the node.
TEST(SupervisionTest, KilledActorIsRestartedUntilItsRestartBudgetIsSpent) {
  NodeOptions options;
  options.config_yaml =
      "supervisor:\n"
      "  max_restarts: 1\n"
      "  backoff_initial_ms: 1\n";
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));

  EventLog log;
  // The subscription and the kill travel on one connection to the same supervisor, in order: the
  // stream is registered before the kill happens.
  auto subscription = admin->subscribe(msg::kEvents, wire::encode(msg::EventsRequest{}), log.on_item(), log.on_end());
  CAIRN_ASSERT_OK(kill_echo(*admin));
  auto restarted = log.wait_for("echo", "restarted", 10s);
  ASSERT_TRUE(restarted) << log.describe() << "\n" << node->diagnostics();
  EXPECT_EQ(restarted->restarts, 1u);
  EXPECT_TRUE(log.wait_for("echo", "crashed", 0ms)) << log.describe();
  EXPECT_TRUE(log.wait_for("echo", "restarting", 0ms)) << log.describe();

  auto status = admin->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, 5s);
  ASSERT_TRUE(status.ok()) << status.status().to_string();
  const msg::ActorStatus* echo = find_actor(*status, "echo");
  ASSERT_NE(echo, nullptr) << "node.status lists no echo actor";
  EXPECT_EQ(echo->state, "running");
  EXPECT_EQ(echo->restarts, 1u);
  EXPECT_FALSE(echo->last_error.empty());

  // The new incarnation serves.
  msg::Echo request{wire::Raw{wire::encode(std::string("after restart"))}};
  auto echoed = admin->call_as<msg::Echo>(msg::kEcho, request, 5s);
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_EQ(echoed->payload, request.payload);

  // The second failure within the window is one more than max_restarts allows: the node stops
  // on its own.
  CAIRN_ASSERT_OK(kill_echo(*admin));
  auto code = node->wait_exit();
  ASSERT_TRUE(code) << "the node did not stop on its own\n" << node->diagnostics();
  EXPECT_EQ(*code, kExitEscalated) << node->diagnostics();
  EXPECT_NE(node->stderr_text().find("supervisor.max_restarts is 1"), std::string::npos) << node->diagnostics();

  // The subscriber saw why, then the stream ended as the node stopped.
  Status end = subscription->wait(5s);
  EXPECT_EQ(end.code(), Code::shutting_down) << end.to_string();
  EXPECT_TRUE(log.wait_for("echo", "failed", 0ms)) << log.describe();
  EXPECT_TRUE(log.wait_for("echo", "escalated", 0ms)) << log.describe();
}

}  // namespace
}  // namespace cairn::testing
