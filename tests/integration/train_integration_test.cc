// Training in a real node over the protocol: a tiny job (hidden 32, 2 layers, sequence 32) is
// submitted with the C++ client and interrupted twice: its trainer actor is killed with
// node.kill_actor, and the node itself is SIGKILLed after a checkpoint and started again on the same
// data dir. Each time the job resumes from its last checkpoint and ends with the same parameters as
// an uninterrupted run of the same config. A job spanning two nodes trains like one on a single node,
// shows the other node's ranks in its status and watch stream, restarts on both nodes from its last
// checkpoint when a trainer actor on either node is killed or either node is SIGKILLed and started
// again (and fails, naming the node, when the other node does not come back), fine-tunes a registered model the other node fetches from the home node, and
// authenticates to nodes of another token file with train.peer_token.
#include <gtest/gtest.h>

#include <signal.h>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "cairn/client.h"
#include "node_process.h"
#include "runtime/config.h"
#include "runtime/messages/node.h"
#include "runtime/messages/train.h"
#include "test_util.h"
#include "tiny_job.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kJobTimeout = 300s;

// `train_settings`: lines under `train:` ("  peer_token: ...\n").
NodeOptions train_node_options(const std::string& train_settings = "") {
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, train]\n";
  if (!train_settings.empty()) options.config_yaml += "train:\n" + train_settings;
  return options;
}

// A token of the harness's form, for a node whose tokens a test must know before it starts.
std::string fresh_token(const std::string& tag) {
  static int counter = 0;
  std::string token = tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  while (token.size() < 40) token += "x";
  return token;
}

std::string job_yaml(const std::string& data_path) {
  return tiny_job_yaml(data_path, "max_steps: 24\nsave_steps: 6\nlogging_steps: 2\nseed: 11\n");
}

Result<msg::TrainSubmitReply> submit(Client& client, const std::string& yaml, const std::string& name) {
  msg::TrainSubmitRequest request;
  request.config_yaml = yaml;
  request.config_name = name;
  return client.call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, 60s);
}

// Follows train.logs; wait_checkpoint() returns once a checkpoint was registered.
class LogFollower {
 public:
  LogFollower(Client& client, const std::string& job_id, std::function<void(const msg::TrainLogEvent&)> on_event = {})
      : state_(std::make_shared<State>()) {
    msg::TrainLogsRequest request;
    request.job_id = job_id;
    request.follow = true;
    auto state = state_;
    subscription_ = client.subscribe(
        msg::kTrainLogs, wire::encode(request),
        [state, on_event](const std::string& body) {
          auto event = wire::decode_bytes<msg::TrainLogEvent>(body);
          if (!event.ok()) return;
          if (on_event) on_event(*event);
          std::lock_guard<std::mutex> lock(state->mutex);
          if (event->kind == "checkpoint") state->checkpoints++;
          state->cv.notify_all();
        },
        [state](const Status&) {
          std::lock_guard<std::mutex> lock(state->mutex);
          state->ended = true;
          state->cv.notify_all();
        });
  }
  bool wait_checkpoint(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(state_->mutex);
    return state_->cv.wait_for(lock, timeout, [&] { return state_->checkpoints > 0 || state_->ended; }) &&
           state_->checkpoints > 0;
  }
  Status wait_end(std::chrono::milliseconds timeout) { return subscription_->wait(timeout); }

 private:
  struct State {
    std::mutex mutex;  // guards the counters
    std::condition_variable cv;
    int checkpoints = 0;
    bool ended = false;
  };
  std::shared_ptr<State> state_;
  std::shared_ptr<Subscription> subscription_;
};

// Collects every JobStatus of a train.watch stream.
class StatusWatcher {
 public:
  StatusWatcher(Client& client, const std::string& job_id) : state_(std::make_shared<State>()) {
    auto state = state_;
    subscription_ = client.subscribe(msg::kTrainWatch, wire::encode(msg::TrainJobRequest{job_id}),
                                     [state](const std::string& body) {
                                       auto status = wire::decode_bytes<msg::JobStatus>(body);
                                       if (!status.ok()) return;
                                       std::lock_guard<std::mutex> lock(state->mutex);
                                       state->seen.push_back(*status);
                                     });
  }
  Status wait_end(std::chrono::milliseconds timeout) { return subscription_->wait(timeout); }
  std::vector<msg::JobStatus> seen() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->seen;
  }

 private:
  struct State {
    std::mutex mutex;  // guards seen
    std::vector<msg::JobStatus> seen;
  };
  std::shared_ptr<State> state_;
  std::shared_ptr<Subscription> subscription_;
};

// Waits for the job to be final (its logs stream ends with it), then reads its status.
Result<msg::JobStatus> wait_final(Client& client, const std::string& job_id) {
  LogFollower follower(client, job_id);
  Status ended = follower.wait_end(kJobTimeout);
  if (!ended.ok()) return ended;
  return client.call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{job_id}, 30s);
}

class TrainIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CAIRN_ASSERT_OK(write_file(data_dir_.path("data.jsonl"), tiny_completion_jsonl(60)));
    CAIRN_ASSERT_OK_AND_ASSIGN(node_, NodeProcess::start(train_node_options()));
    CAIRN_ASSERT_OK_AND_ASSIGN(client_, Client::connect(node_->client_options(Role::admin)));
  }

  // An uninterrupted run of the job: its final parameters' digest.
  std::string reference_digest() {
    auto submitted = submit(*client_, job_yaml(data_dir_.path("data.jsonl")), data_dir_.path("job.yaml"));
    EXPECT_TRUE(submitted.ok()) << submitted.status().to_string();
    if (!submitted.ok()) return "";
    auto final = wait_final(*client_, submitted->job_id);
    EXPECT_TRUE(final.ok()) << final.status().to_string() << node_->diagnostics();
    if (!final.ok()) return "";
    EXPECT_EQ(final->state, "succeeded") << final->reason << node_->diagnostics();
    EXPECT_EQ(final->step, 24);
    EXPECT_FALSE(final->parameters_digest.empty());
    return final->parameters_digest;
  }

  // A train node with node_'s tokens: another node of a job (fresh data dir, free port), or node_
  // started again on its `data_dir` (and its `listen` address when given).
  NodeOptions node_options_sharing_tokens(const std::string& data_dir = "", const std::string& listen = "") const {
    NodeOptions options = train_node_options();
    options.admin_token = node_->admin_token();
    options.client_token = node_->client_token();
    options.data_dir = data_dir;
    if (!listen.empty()) options.listen = listen;
    return options;
  }

  TempDir data_dir_;
  std::unique_ptr<NodeProcess> node_;
  std::unique_ptr<Client> client_;
};

TEST_F(TrainIntegrationTest, BadConfigIsRejectedOverTheProtocol) {
  auto submitted = submit(*client_, job_yaml(data_dir_.path("data.jsonl")) + "lora_r: many\n", "job.yaml");
  ASSERT_FALSE(submitted.ok());
  EXPECT_EQ(submitted.status().code(), Code::invalid_argument);
  EXPECT_NE(submitted.status().message().find("lora_r"), std::string::npos) << submitted.status().message();
}

TEST_F(TrainIntegrationTest, KilledTrainerActorResumesWithTheSameFinalParameters) {
  const std::string expected = reference_digest();
  ASSERT_FALSE(expected.empty());
  auto submitted = submit(*client_, job_yaml(data_dir_.path("data.jsonl")), data_dir_.path("job.yaml"));
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  const std::string trainer = "train/" + submitted->job_id + "/trainer-0";
  std::atomic<bool> killed{false};
  Client* client = client_.get();
  LogFollower follower(*client_, submitted->job_id, [&](const msg::TrainLogEvent& event) {
    if (event.kind == "checkpoint" && !killed.exchange(true)) {
      client->call_async(msg::kKillActor, wire::encode(msg::KillActor{trainer}), [](Result<std::string> reply) {
        EXPECT_TRUE(reply.ok()) << reply.status().to_string();
      });
    }
  });
  CAIRN_ASSERT_OK(follower.wait_end(kJobTimeout));
  auto final = client_->call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{submitted->job_id}, 30s);
  ASSERT_TRUE(final.ok()) << final.status().to_string();
  EXPECT_TRUE(killed.load());
  EXPECT_EQ(final->state, "succeeded") << final->reason << node_->diagnostics();
  EXPECT_EQ(final->restarts, 1u);
  EXPECT_EQ(final->parameters_digest, expected);
}

TEST_F(TrainIntegrationTest, NodeSigkilledAfterACheckpointResumesTheJobOnRestart) {
  const std::string expected = reference_digest();
  ASSERT_FALSE(expected.empty());
  auto submitted = submit(*client_, job_yaml(data_dir_.path("data.jsonl")), data_dir_.path("job.yaml"));
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  {
    LogFollower follower(*client_, submitted->job_id);
    ASSERT_TRUE(follower.wait_checkpoint(kJobTimeout)) << node_->diagnostics();
    ASSERT_TRUE(node_->signal(SIGKILL));
    auto code = node_->wait_exit();
    ASSERT_TRUE(code);
    EXPECT_EQ(*code, 128 + SIGKILL);
  }
  client_.reset();

  NodeOptions again = node_options_sharing_tokens(node_->data_dir());
  std::unique_ptr<NodeProcess> restarted;
  CAIRN_ASSERT_OK_AND_ASSIGN(restarted, NodeProcess::start(again));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(restarted->client_options(Role::client)));
  auto final = wait_final(*client, submitted->job_id);
  ASSERT_TRUE(final.ok()) << final.status().to_string() << restarted->diagnostics();
  EXPECT_EQ(final->state, "succeeded") << final->reason << restarted->diagnostics();
  EXPECT_EQ(final->restarts, 1u);
  EXPECT_EQ(final->step, 24);
  EXPECT_EQ(final->parameters_digest, expected);
}

// Issue #5: two node processes on loopback (sharing one token file) train one job together, rank 0
// on the node it was submitted to and rank 1 on the other (static membership: the config's
// `nodes:`). Its final loss equals the same job's with both workers on one node, up to the order
// the ring and the in-process group sum in.
TEST_F(TrainIntegrationTest, TwoNodesTrainOneJobTogether) {
  NodeOptions second = node_options_sharing_tokens();
  std::unique_ptr<NodeProcess> other;
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(second));

  std::vector<msg::JobStatus> watched;
  auto run = [&](std::vector<std::string> overrides) -> Result<msg::JobStatus> {
    msg::TrainSubmitRequest request;
    request.config_yaml = job_yaml(data_dir_.path("data.jsonl"));
    request.config_name = data_dir_.path("job.yaml");
    request.overrides = {"max_steps=10", "num_workers=2"};
    for (auto& o : overrides) request.overrides.push_back(o);
    auto submitted = client_->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, 60s);
    if (!submitted.ok()) return submitted.status();
    // Subscribed while the job prepares and joins the other node, long before its first step.
    StatusWatcher watcher(*client_, submitted->job_id);
    auto final = wait_final(*client_, submitted->job_id);
    CAIRN_RETURN_IF_ERROR(watcher.wait_end(kJobTimeout));
    watched = watcher.seen();
    return final;
  };
  auto local = run({});
  ASSERT_TRUE(local.ok()) << local.status().to_string() << node_->diagnostics();
  ASSERT_EQ(local->state, "succeeded") << local->reason << node_->diagnostics();

  auto spanning = run({"nodes=[" + node_->address() + ", " + other->address() + "]"});
  ASSERT_TRUE(spanning.ok()) << spanning.status().to_string() << node_->diagnostics();
  EXPECT_EQ(spanning->state, "succeeded") << spanning->reason << node_->diagnostics() << other->diagnostics();
  EXPECT_EQ(spanning->step, 10);
  ASSERT_EQ(spanning->workers.size(), 2u);
  EXPECT_EQ(spanning->workers[1].node, other->address());
  EXPECT_GT(local->loss, 0);
  EXPECT_NEAR(spanning->loss, local->loss, 1e-3 * local->loss);
  // Two ranks: each sum is a + b on both paths, so the parameters are bitwise equal too.
  EXPECT_EQ(spanning->parameters_digest, local->parameters_digest);

  // Issue #5: the other node's rank shows in the status and the watch stream as a local one does:
  // its state and step as it trains (WorkerEvents of train.start), beside rank 0's metrics.
  EXPECT_EQ(spanning->workers[1].state, "done");
  EXPECT_EQ(spanning->workers[1].step, 10);
  bool remote_progress = false, metrics = false;
  for (const auto& status : watched) {
    if (status.state != "running" || status.workers.size() != 2) continue;
    remote_progress = remote_progress || (status.workers[1].node == other->address() &&
                                          status.workers[1].state == "running" && status.workers[1].step > 0 &&
                                          status.workers[1].step < 10);
    metrics = metrics || (status.loss > 0 && status.step > 0 && status.tokens_per_s > 0);
  }
  EXPECT_TRUE(remote_progress) << watched.size() << " statuses watched";
  EXPECT_TRUE(metrics) << watched.size() << " statuses watched";

  // The first entry must be the node the job is submitted to (it runs rank 0).
  msg::TrainSubmitRequest wrong;
  wrong.config_yaml = job_yaml(data_dir_.path("data.jsonl"));
  wrong.overrides = {"num_workers=2", "nodes=[" + other->address() + ", " + node_->address() + "]"};
  auto refused = client_->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, wrong, 60s);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::invalid_argument);
  EXPECT_NE(refused.status().message().find("nodes"), std::string::npos) << refused.status().message();
}

// Submits the job `yaml` with `overrides` and waits until it is final; `on_checkpoint` (may be
// empty) runs on the test thread, with the job's id, after the first checkpoint was registered.
Result<msg::JobStatus> run_job(Client& client, const std::string& yaml, const std::vector<std::string>& overrides,
                               const std::function<void(const std::string& job_id)>& on_checkpoint = {}) {
  msg::TrainSubmitRequest request;
  request.config_yaml = yaml;
  request.config_name = "job.yaml";
  request.overrides = overrides;
  auto submitted = client.call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, 60s);
  if (!submitted.ok()) return submitted.status();
  LogFollower follower(client, submitted->job_id);
  if (on_checkpoint) {
    if (!follower.wait_checkpoint(kJobTimeout)) return Status(Code::timeout, "no checkpoint");
    on_checkpoint(submitted->job_id);
  }
  CAIRN_RETURN_IF_ERROR(follower.wait_end(kJobTimeout));
  return client.call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{submitted->job_id}, 30s);
}

// Issue #5: the other node of a two-node job is SIGKILLed after the first checkpoint and started
// again on the same address; then, in a second job, the trainer actor of the other node's rank is
// killed, and in a third the home node's. Each time the home node stops its own rank, restarts both ranks from the checkpoint (the
// other node fetches it from the home node's registry) and the job ends with the parameters of an
// uninterrupted run: nothing trained twice, nothing skipped.
TEST_F(TrainIntegrationTest, FailuresOnEitherNodeRestartTheJobOnAllNodesFromTheCheckpoint) {
  NodeOptions second = node_options_sharing_tokens();
  std::unique_ptr<NodeProcess> other;
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(second));
  const std::string yaml = job_yaml(data_dir_.path("data.jsonl"));
  const std::vector<std::string> local = {"max_steps=30", "num_workers=2"};
  std::vector<std::string> spanning = local;
  spanning.push_back("nodes=[" + node_->address() + ", " + other->address() + "]");

  auto reference = run_job(*client_, yaml, local);
  ASSERT_TRUE(reference.ok()) << reference.status().to_string();
  ASSERT_EQ(reference->state, "succeeded") << reference->reason << node_->diagnostics();

  std::string restart_error;
  auto final = run_job(*client_, yaml, spanning, [&](const std::string&) {
    if (!other->signal(SIGKILL)) restart_error = "SIGKILL failed";
    auto code = other->wait_exit();
    if (!code || *code != 128 + SIGKILL) restart_error = "the node did not die of SIGKILL";
    NodeOptions again = second;
    again.listen = other->address();
    auto restarted = NodeProcess::start(again);
    if (!restarted.ok()) {
      restart_error = restarted.status().to_string();
      return;
    }
    other = std::move(restarted).value();
  });
  ASSERT_TRUE(restart_error.empty()) << restart_error;
  ASSERT_TRUE(final.ok()) << final.status().to_string() << node_->diagnostics();
  EXPECT_EQ(final->state, "succeeded") << final->reason << node_->diagnostics() << other->diagnostics();
  EXPECT_EQ(final->restarts, 1u);
  EXPECT_EQ(final->step, 30);
  ASSERT_EQ(final->workers.size(), 2u);
  EXPECT_EQ(final->workers[1].node, other->address());
  EXPECT_EQ(final->workers[1].state, "done");
  EXPECT_EQ(final->parameters_digest, reference->parameters_digest);

  std::unique_ptr<Client> other_client;
  CAIRN_ASSERT_OK_AND_ASSIGN(other_client, Client::connect(other->client_options(Role::admin)));
  // A crash of rank `rank`'s trainer actor, killed through `node`, restarts both ranks.
  auto expect_resumed_after_kill = [&](Client& node, int rank) {
    SCOPED_TRACE("killing trainer-" + std::to_string(rank));
    Status killed = Status(Code::internal, "not killed");
    auto crashed = run_job(*client_, yaml, spanning, [&](const std::string& job_id) {
      const std::string actor = "train/" + job_id + "/trainer-" + std::to_string(rank);
      auto reply = node.call(msg::kKillActor, wire::encode(msg::KillActor{actor}));
      killed = reply.ok() ? Status() : reply.status();
    });
    CAIRN_ASSERT_OK(killed);
    ASSERT_TRUE(crashed.ok()) << crashed.status().to_string() << node_->diagnostics();
    EXPECT_EQ(crashed->state, "succeeded") << crashed->reason << node_->diagnostics() << other->diagnostics();
    EXPECT_EQ(crashed->restarts, 1u);
    EXPECT_EQ(crashed->parameters_digest, reference->parameters_digest);
  };
  expect_resumed_after_kill(*other_client, 1);
  // And a crash on the home node stops and restarts the other node's rank too.
  expect_resumed_after_kill(*client_, 0);
}

// The home node of a two-node job is SIGKILLed after a checkpoint and started again on its address
// and data dir: it resumes the job from the checkpoint on both nodes (the other node's ranks
// stopped when the ring broke) and ends with the uninterrupted run's parameters.
TEST_F(TrainIntegrationTest, SigkilledHomeNodeResumesTheJobOnBothNodes) {
  NodeOptions second = node_options_sharing_tokens();
  std::unique_ptr<NodeProcess> other;
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(second));
  const std::string yaml = job_yaml(data_dir_.path("data.jsonl"));
  const std::vector<std::string> local = {"max_steps=30", "num_workers=2"};
  auto reference = run_job(*client_, yaml, local);
  ASSERT_TRUE(reference.ok()) << reference.status().to_string();
  ASSERT_EQ(reference->state, "succeeded") << reference->reason << node_->diagnostics();

  std::vector<std::string> spanning = local;
  spanning.push_back("nodes=[" + node_->address() + ", " + other->address() + "]");
  msg::TrainSubmitRequest request;
  request.config_yaml = yaml;
  request.config_name = "job.yaml";
  request.overrides = spanning;
  auto submitted = client_->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, 60s);
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  {
    LogFollower follower(*client_, submitted->job_id);
    ASSERT_TRUE(follower.wait_checkpoint(kJobTimeout)) << node_->diagnostics();
    ASSERT_TRUE(node_->signal(SIGKILL));
    ASSERT_TRUE(node_->wait_exit());
  }
  client_.reset();
  NodeOptions again = node_options_sharing_tokens(node_->data_dir(), node_->address());
  std::unique_ptr<NodeProcess> restarted;
  CAIRN_ASSERT_OK_AND_ASSIGN(restarted, NodeProcess::start(again));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(restarted->client_options(Role::admin)));
  auto final = wait_final(*client, submitted->job_id);
  ASSERT_TRUE(final.ok()) << final.status().to_string() << restarted->diagnostics();
  EXPECT_EQ(final->state, "succeeded") << final->reason << restarted->diagnostics() << other->diagnostics();
  EXPECT_EQ(final->restarts, 1u);
  EXPECT_EQ(final->step, 30);
  ASSERT_EQ(final->workers.size(), 2u);
  EXPECT_EQ(final->workers[1].state, "done");
  EXPECT_EQ(final->parameters_digest, reference->parameters_digest);
}

// A node that does not come back within train.peer_timeout_ms fails the job, naming the node.
TEST_F(TrainIntegrationTest, RemoteNodeThatStaysDownFailsTheJobNamingIt) {
  NodeOptions home_options = train_node_options("  peer_timeout_ms: 1500\n");
  home_options.admin_token = node_->admin_token();
  home_options.client_token = node_->client_token();
  std::unique_ptr<NodeProcess> home, other;
  CAIRN_ASSERT_OK_AND_ASSIGN(home, NodeProcess::start(home_options));
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(home_options));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(home->client_options(Role::admin)));
  const std::string other_address = other->address();
  auto final = run_job(*client, job_yaml(data_dir_.path("data.jsonl")),
                       {"max_steps=30", "num_workers=2", "nodes=[" + home->address() + ", " + other_address + "]"},
                       [&](const std::string&) { other.reset(); });  // SIGKILL, not started again
  ASSERT_TRUE(final.ok()) << final.status().to_string() << home->diagnostics();
  EXPECT_EQ(final->state, "failed") << home->diagnostics();
  EXPECT_NE(final->reason.find("node " + other_address), std::string::npos) << final->reason;
  EXPECT_NE(final->reason.find("train.peer_timeout_ms"), std::string::npos) << final->reason;
  EXPECT_EQ(final->restarts, 1u) << final->reason;
}

// Issue #5: a node that accepted train.join but never gets train.start (its home node died in
// between) drops the joined ranks after train.peer_timeout_ms: the job fails saying the join
// expired (in train.status and the node's log, naming the job and the home node), its ring
// listener closes, a late train.start is refused naming the job, and a fresh train.join of the
// same job (the home node restarting it) is accepted. The test client plays the home node.
TEST_F(TrainIntegrationTest, JoinedRanksThatNeverStartExpire) {
  NodeOptions options = train_node_options("  peer_timeout_ms: 1000\n");
  options.admin_token = node_->admin_token();
  options.client_token = node_->client_token();
  std::unique_ptr<NodeProcess> guest;
  CAIRN_ASSERT_OK_AND_ASSIGN(guest, NodeProcess::start(options));
  std::unique_ptr<Client> home;
  CAIRN_ASSERT_OK_AND_ASSIGN(home, Client::connect(guest->client_options(Role::admin)));
  const std::string dead_home = "127.0.0.1:9";
  msg::TrainJoinRequest join;
  join.job_id = "job-of-a-dead-home";
  join.secret = "secret-of-generation-1";
  join.config_yaml = job_yaml(data_dir_.path("data.jsonl")) + "num_workers: 2\n";
  join.home = dead_home;
  join.ranks = {1};
  join.world_size = 2;
  auto joined = home->call_as<msg::TrainJoinReply>(msg::kTrainJoin, join, 60s);
  ASSERT_TRUE(joined.ok()) << joined.status().to_string() << guest->diagnostics();
  ASSERT_EQ(joined->addresses.size(), 1u);
  CAIRN_ASSERT_OK_AND_ASSIGN(HostPort ring, parse_host_port(joined->addresses[0]));

  const auto deadline = std::chrono::steady_clock::now() + 30s;
  msg::JobStatus status;
  while (true) {
    auto polled = home->call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{join.job_id}, 10s);
    ASSERT_TRUE(polled.ok()) << polled.status().to_string();
    status = *polled;
    if (msg::job_state_is_final(status.state) || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(status.state, "failed") << status.reason << guest->diagnostics();
  EXPECT_NE(status.reason.find("join of job " + join.job_id + " expired"), std::string::npos) << status.reason;
  EXPECT_NE(status.reason.find("home node " + dead_home), std::string::npos) << status.reason;
  EXPECT_NE(status.reason.find("train.peer_timeout_ms"), std::string::npos) << status.reason;
  const std::string log = guest->stderr_text();
  EXPECT_NE(log.find("train " + join.job_id + ": job failed: timeout: the join of job " + join.job_id + " expired"),
            std::string::npos)
      << guest->diagnostics();
  // The ring listener is closed once the ranks' actors are gone.
  bool closed = false;
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    closed = !RawConnection::connect(ring.port, {}, 1s).ok();
    if (!closed) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(closed) << "ring listener " << joined->addresses[0] << " still accepts";

  msg::TrainStartRequest start;
  start.job_id = join.job_id;
  start.secret = join.secret;
  start.addresses = {"127.0.0.1:9", joined->addresses[0]};
  auto late = home->call(msg::kTrainStart, wire::encode(start), 10s);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), Code::timeout) << late.status().to_string();
  EXPECT_NE(late.status().message().find("join of job " + join.job_id + " expired"), std::string::npos)
      << late.status().message();

  join.secret = "secret-of-generation-2";
  auto again = home->call_as<msg::TrainJoinReply>(msg::kTrainJoin, join, 60s);
  ASSERT_TRUE(again.ok()) << again.status().to_string() << guest->diagnostics();
  EXPECT_EQ(again->addresses.size(), 1u);
  auto running = home->call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{join.job_id}, 10s);
  ASSERT_TRUE(running.ok()) << running.status().to_string();
  EXPECT_FALSE(msg::job_state_is_final(running->state)) << running->state << ": " << running->reason;
}

// Issue #5: nodes with separate token files. Without train.peer_token the home node's token is
// refused, and the job fails saying so, naming the node. With it (each node holding the other's
// admin token), a LoRA fine-tune of a model registered on the home node runs on both nodes: the
// home node pins NAME@latest to its version and the other node fetches that version from the
// home node's registry. It ends with the parameters of the same job with both ranks on one node.
TEST_F(TrainIntegrationTest, TwoNodesFineTuneARegisteredModelWithPeerTokens) {
  const std::string home_admin = fresh_token("home");
  const std::string other_admin = fresh_token("other");
  NodeOptions home_options = train_node_options("  peer_token: " + other_admin + "\n");
  home_options.admin_token = home_admin;
  NodeOptions other_options = train_node_options("  peer_token: " + home_admin + "\n");
  other_options.admin_token = other_admin;
  std::unique_ptr<NodeProcess> home, other;
  CAIRN_ASSERT_OK_AND_ASSIGN(home, NodeProcess::start(home_options));
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(other_options));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(home->client_options(Role::admin)));
  const std::string data = data_dir_.path("data.jsonl");

  // The test fixture's node presents its own admin token, which `other` does not know.
  auto refused = run_job(*client_, job_yaml(data), {"max_steps=4", "num_workers=2",
                                                    "nodes=[" + node_->address() + ", " + other->address() + "]"});
  ASSERT_TRUE(refused.ok()) << refused.status().to_string();
  EXPECT_EQ(refused->state, "failed");
  EXPECT_NE(refused->reason.find("node " + other->address()), std::string::npos) << refused->reason;
  EXPECT_NE(refused->reason.find("refused"), std::string::npos) << refused->reason;
  EXPECT_NE(refused->reason.find("train.peer_token"), std::string::npos) << refused->reason;
  EXPECT_EQ(refused->restarts, 0u) << refused->reason;

  auto base = run_job(*client, job_yaml(data), {"max_steps=4", "output_model=tiny-base"});
  ASSERT_TRUE(base.ok()) << base.status().to_string();
  ASSERT_EQ(base->state, "succeeded") << base->reason << home->diagnostics();

  const std::string lora = "base_model: tiny-base@latest\n"
                           "adapter: lora\n"
                           "lora_r: 4\n"
                           "datasets:\n"
                           "  - path: " + data + "\n"
                           "    type: completion\n"
                           "sequence_len: 32\n"
                           "excess_length_strategy: split\n"
                           "micro_batch_size: 2\n"
                           "learning_rate: 0.01\n"
                           "logging_steps: 2\n"
                           "seed: 5\n";
  auto local = run_job(*client, lora, {"max_steps=6", "num_workers=2"});
  ASSERT_TRUE(local.ok()) << local.status().to_string();
  ASSERT_EQ(local->state, "succeeded") << local->reason << home->diagnostics();
  auto spanning =
      run_job(*client, lora, {"max_steps=6", "num_workers=2", "nodes=[" + home->address() + ", " + other->address() + "]"});
  ASSERT_TRUE(spanning.ok()) << spanning.status().to_string();
  EXPECT_EQ(spanning->state, "succeeded") << spanning->reason << home->diagnostics() << other->diagnostics();
  EXPECT_EQ(spanning->step, 6);
  ASSERT_EQ(spanning->workers.size(), 2u);
  EXPECT_EQ(spanning->workers[1].state, "done");
  EXPECT_EQ(spanning->parameters_digest, local->parameters_digest);
}

}  // namespace
}  // namespace cairn::testing
