// The restart policy, exactly; and the supervisor actor under CAF's deterministic test scheduler:
// no threads, no sleeps, time advanced by hand.
#include <gtest/gtest.h>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "actors/messages.h"
#include "actors/router.h"
#include "actors/supervisor.h"
#include "tests/actors/call_helpers.h"

namespace cairn {
namespace {

using namespace std::chrono_literals;
using testing::make_call;
using testing::RecordingSink;
using TimePoint = RestartPolicy::TimePoint;

RestartOptions options(uint32_t max_restarts) {
  RestartOptions o;
  o.max_restarts = max_restarts;
  o.window = 1000ms;
  o.backoff_initial = 100ms;
  o.backoff_max = 350ms;
  return o;
}

TEST(RestartPolicy, BacksOffExponentiallyUpToTheCap) {
  RestartPolicy policy(options(10));
  TimePoint t{};
  std::vector<int64_t> delays;
  for (int i = 0; i < 4; ++i) {
    auto d = policy.on_failure(t + std::chrono::milliseconds(i));
    ASSERT_FALSE(d.escalate);
    delays.push_back(d.delay.count());
  }
  EXPECT_EQ(delays, (std::vector<int64_t>{100, 200, 350, 350}));
}

TEST(RestartPolicy, EscalatesWhenTheBudgetIsSpentWithinTheWindow) {
  RestartPolicy policy(options(2));
  TimePoint t{};
  EXPECT_FALSE(policy.on_failure(t).escalate);
  EXPECT_FALSE(policy.on_failure(t + 10ms).escalate);
  auto third = policy.on_failure(t + 20ms);
  EXPECT_TRUE(third.escalate);
  EXPECT_EQ(third.failures_in_window, 3u);
}

TEST(RestartPolicy, FailuresOutsideTheWindowAreForgotten) {
  RestartPolicy policy(options(2));
  TimePoint t{};
  EXPECT_FALSE(policy.on_failure(t).escalate);
  EXPECT_FALSE(policy.on_failure(t + 10ms).escalate);
  // Both earlier failures are a full window old: this is the first failure again, first delay too.
  auto later = policy.on_failure(t + 1010ms);
  EXPECT_FALSE(later.escalate);
  EXPECT_EQ(later.failures_in_window, 1u);
  EXPECT_EQ(later.delay, 100ms);
}

TEST(RestartPolicy, ZeroRestartsEscalatesAtOnce) {
  RestartPolicy policy(options(0));
  EXPECT_TRUE(policy.on_failure(TimePoint{}).escalate);
}

// A node in miniature: the real supervisor and echo child on the deterministic scheduler.
class SupervisorTest : public ::testing::Test {
 protected:
  SupervisorTest() : system_(make_config()), sched_(dynamic_cast<caf::scheduler::test_coordinator&>(system_.scheduler())) {}

  static caf::actor_system_config& make_config() {
    static caf::actor_system_config* config = [] {
      auto* c = new caf::actor_system_config;
      c->set("scheduler.policy", caf::atom("testing"));
      c->set("logger.verbosity", caf::atom("quiet"));
      register_message_types(*c);
      return c;
    }();
    return *config;
  }

  void start(uint32_t max_restarts) {
    SupervisorOptions o;
    o.restart = options(max_restarts);
    NodeHooks hooks;
    hooks.request_shutdown = [this](const std::string& reason, int code) {
      shutdown_reason_ = reason;
      shutdown_code_ = code;
    };
    hooks.node_status = [] {
      msg::NodeStatus s;
      s.node = "test-node";
      return s;
    };
    supervisor_ = spawn_supervisor(system_, o, child_specs_for({"echo"}), directory_, hooks);
    sched_.run();
    events_ = make_call(1, std::string(msg::kEvents), msg::EventsRequest{}, Role::client, sink_);
    send(events_);
  }

  void send(const CallPtr& call) {
    caf::anon_send(supervisor_, CallMessage{call->op(), call});
    sched_.run();
  }

  void kill_echo() {
    caf::actor echo = directory_.find("echo");
    ASSERT_TRUE(echo);
    caf::anon_send_exit(echo, caf::exit_reason::kill);
    sched_.run();
  }

  // The events streamed so far, as "actor:event" strings.
  std::vector<std::string> events() const {
    std::vector<std::string> out;
    for (const auto& r : sink_->replies()) {
      if (r.id != 1 || r.kind != protocol::ReplyKind::more) continue;
      auto e = wire::decode_bytes<msg::NodeEvent>(r.body);
      out.push_back(e->actor + ":" + e->event + (e->event == "restarting" ? "(" + e->detail + ")" : ""));
    }
    return out;
  }

  msg::NodeStatus status() {
    auto call = make_call(next_id_, std::string(msg::kStatus), msg::Empty{}, Role::client, sink_);
    uint64_t id = next_id_++;
    send(call);
    for (const auto& r : sink_->replies()) {
      if (r.id == id && r.kind == protocol::ReplyKind::ok) return *wire::decode_bytes<msg::NodeStatus>(r.body);
    }
    ADD_FAILURE() << "no status reply";
    return {};
  }

  ~SupervisorTest() override {
    caf::anon_send_exit(supervisor_, caf::exit_reason::user_shutdown);
    sched_.run();
  }

  caf::actor_system system_;
  caf::scheduler::test_coordinator& sched_;
  Directory directory_;
  caf::actor supervisor_;
  std::shared_ptr<RecordingSink> sink_ = std::make_shared<RecordingSink>();
  CallPtr events_;
  uint64_t next_id_ = 100;
  std::string shutdown_reason_;
  int shutdown_code_ = -1;
};

TEST_F(SupervisorTest, StartsItsChildrenAndRegistersThem) {
  start(3);
  EXPECT_TRUE(directory_.find("echo"));
  EXPECT_TRUE(directory_.find("supervisor"));
  auto s = status();
  EXPECT_EQ(s.node, "test-node");
  ASSERT_EQ(s.actors.size(), 1u);
  EXPECT_EQ(s.actors[0].name, "echo");
  EXPECT_EQ(s.actors[0].state, "running");
  EXPECT_EQ(s.actors[0].mailbox, 0);
}

TEST_F(SupervisorTest, RestartsACrashedChildAfterItsBackoff) {
  start(3);
  kill_echo();
  EXPECT_FALSE(directory_.find("echo")) << "nothing serves echo while it restarts";
  EXPECT_EQ(status().actors[0].state, "restarting");
  EXPECT_EQ(events(), (std::vector<std::string>{"echo:crashed", "echo:restarting(in 100 ms)"}));

  ASSERT_TRUE(sched_.trigger_timeout());  // the backoff elapses
  sched_.run();
  EXPECT_TRUE(directory_.find("echo"));
  auto s = status();
  EXPECT_EQ(s.actors[0].state, "running");
  EXPECT_EQ(s.actors[0].restarts, 1u);
  EXPECT_EQ(s.actors[0].last_error, "exit_reason(kill)");
  EXPECT_EQ(events().back(), "echo:restarted");

  kill_echo();  // within the window: the backoff doubles
  EXPECT_EQ(events().back(), "echo:restarting(in 200 ms)");
  EXPECT_EQ(shutdown_code_, -1);
}

TEST_F(SupervisorTest, EscalatesByStoppingTheNodeWhenTheBudgetIsSpent) {
  start(1);
  kill_echo();
  ASSERT_TRUE(sched_.trigger_timeout());
  sched_.run();
  kill_echo();
  EXPECT_EQ(shutdown_code_, 3);
  EXPECT_NE(shutdown_reason_.find("actor echo failed 2 times"), std::string::npos) << shutdown_reason_;
  EXPECT_EQ(status().actors[0].state, "failed");
  auto e = events();
  EXPECT_EQ(std::vector<std::string>(e.end() - 2, e.end()), (std::vector<std::string>{"echo:failed", "echo:escalated"}));
}

TEST_F(SupervisorTest, KillActorAndShutdownAreServedForAdmins) {
  start(3);
  send(make_call(200, std::string(msg::kKillActor), msg::KillActor{"nope"}, Role::admin, sink_));
  send(make_call(201, std::string(msg::kKillActor), msg::KillActor{"echo"}, Role::admin, sink_));
  send(make_call(202, std::string(msg::kShutdown), msg::Empty{}, Role::admin, sink_));
  auto replies = sink_->replies();
  auto find = [&](uint64_t id) {
    for (const auto& r : replies) {
      if (r.id == id) return r;
    }
    return testing::RecordedReply{0, protocol::ReplyKind::error, {}, Status(Code::internal, "missing")};
  };
  EXPECT_EQ(find(200).error.code(), Code::not_found);
  EXPECT_NE(find(200).error.message().find("this node runs: echo"), std::string::npos);
  EXPECT_EQ(find(201).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(find(202).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(shutdown_code_, 0);
}

TEST_F(SupervisorTest, EventsReplayTheHistoryOnRequest) {
  start(3);
  kill_echo();
  msg::EventsRequest replay;
  replay.replay = true;
  send(make_call(300, std::string(msg::kEvents), replay, Role::client, sink_));
  size_t items = 0;
  for (const auto& r : sink_->replies()) items += r.id == 300 && r.kind == protocol::ReplyKind::more;
  EXPECT_EQ(items, 3u) << "started, crashed, restarting";
}

TEST(Router, ChecksRolesAndKnownOps) {
  Directory directory;
  ActorRouter router(directory, default_routes());
  auto sink = std::make_shared<RecordingSink>();
  router.dispatch(make_call(1, "node.nope", msg::Empty{}, Role::admin, sink));
  router.dispatch(make_call(2, std::string(msg::kShutdown), msg::Empty{}, Role::client, sink));
  router.dispatch(make_call(3, std::string(msg::kEcho), msg::Echo{}, Role::client, sink));
  auto replies = sink->replies();
  ASSERT_EQ(replies.size(), 3u);
  EXPECT_EQ(replies[0].error.code(), Code::unknown_op);
  EXPECT_EQ(replies[1].error.code(), Code::permission_denied);
  EXPECT_EQ(replies[1].error.message(), "node.shutdown: needs the admin role; this token has the client role");
  EXPECT_EQ(replies[2].error.code(), Code::unavailable) << "no echo actor registered";
}

TEST(Call, AnswersExactlyOnce) {
  auto sink = std::make_shared<RecordingSink>();
  {
    auto call = make_call(7, "x.y", msg::Empty{}, Role::client, sink);
    call->more(msg::Empty{});
    call->reply(msg::Empty{});
    call->fail(Status(Code::internal, "late"));
    call->more(msg::Empty{});
  }
  {
    auto dropped = make_call(8, "x.z", msg::Empty{}, Role::client, sink);
  }
  auto replies = sink->replies();
  ASSERT_EQ(replies.size(), 3u);
  EXPECT_EQ(replies[0].kind, protocol::ReplyKind::more);
  EXPECT_EQ(replies[1].kind, protocol::ReplyKind::ok);
  EXPECT_EQ(replies[2].id, 8u);
  EXPECT_EQ(replies[2].error.code(), Code::unavailable) << "a call dropped unanswered still gets its final reply";
}

}  // namespace
}  // namespace cairn
