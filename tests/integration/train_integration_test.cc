// Training in a real node over the protocol: a tiny job (hidden 32, 2 layers, sequence 32) is
// submitted with the C++ client and interrupted twice: its trainer actor is killed with
// node.kill_actor, and the node itself is SIGKILLed after a checkpoint and started again on the same
// data dir. Each time the job resumes from its last checkpoint and ends with the same parameters as
// an uninterrupted run of the same config. A job spanning two nodes trains like one on a single node.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "cairn/client.h"
#include "node_process.h"
#include "runtime/messages/node.h"
#include "runtime/messages/train.h"
#include "test_util.h"
#include "tiny_job.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kJobTimeout = 300s;

NodeOptions train_node_options() {
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, train]\n";
  return options;
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

  NodeOptions again = train_node_options();
  again.data_dir = node_->data_dir();
  again.admin_token = node_->admin_token();
  again.client_token = node_->client_token();
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
  NodeOptions second = train_node_options();
  second.admin_token = node_->admin_token();
  second.client_token = node_->client_token();
  std::unique_ptr<NodeProcess> other;
  CAIRN_ASSERT_OK_AND_ASSIGN(other, NodeProcess::start(second));

  auto run = [&](std::vector<std::string> overrides) -> Result<msg::JobStatus> {
    msg::TrainSubmitRequest request;
    request.config_yaml = job_yaml(data_dir_.path("data.jsonl"));
    request.config_name = data_dir_.path("job.yaml");
    request.overrides = {"max_steps=10", "num_workers=2"};
    for (auto& o : overrides) request.overrides.push_back(o);
    auto submitted = client_->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, 60s);
    if (!submitted.ok()) return submitted.status();
    return wait_final(*client_, submitted->job_id);
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

  // The first entry must be the node the job is submitted to (it runs rank 0).
  msg::TrainSubmitRequest wrong;
  wrong.config_yaml = job_yaml(data_dir_.path("data.jsonl"));
  wrong.overrides = {"num_workers=2", "nodes=[" + other->address() + ", " + node_->address() + "]"};
  auto refused = client_->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, wrong, 60s);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::invalid_argument);
  EXPECT_NE(refused.status().message().find("nodes"), std::string::npos) << refused.status().message();
}

}  // namespace
}  // namespace cairn::testing
