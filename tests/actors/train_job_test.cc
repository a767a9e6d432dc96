// The training role in one process: the job manager with a real registry actor over in-memory
// stores (MemoryKvStore) and a BlobStore in a temporary directory, on CAF's threaded scheduler
// (trainers run real threads). Tiny jobs (hidden 32, 2 layers, sequence 32, a JSONL written by the
// test) finish in about a second each. Waits are on replies and streamed events, never sleeps.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <caf/all.hpp>

#include "actors/local_call.h"
#include "actors/messages.h"
#include "actors/registry.h"
#include "actors/train/job_manager.h"
#include "actors/train/worker.h"
#include "runtime/messages/registry.h"
#include "runtime/messages/train.h"
#include "tests/integration/tiny_job.h"
#include "storage/blob_store.h"
#include "storage/job_store.h"
#include "storage/registry_store.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kJobTimeout{180000};

std::vector<std::string> all_families() {
  auto families = storage::registry_families();
  for (auto& f : storage::job_families()) families.push_back(f);
  return families;
}

// Waits for a streamed event that matches, from any thread.
class EventWaiter {
 public:
  void notify(const msg::TrainLogEvent& event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(event);
    }
    cv_.notify_all();
  }
  bool wait_for_kind(const std::string& kind, milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] {
      return std::any_of(events_.begin(), events_.end(), [&](const auto& e) { return e.kind == kind; });
    });
  }

 private:
  std::mutex mutex_;  // guards events_
  std::condition_variable cv_;
  std::vector<msg::TrainLogEvent> events_;
};

class TrainJobTest : public ::testing::Test {
 protected:
  TrainJobTest() : kv_(all_families()) {
    std::string pattern = (fs::temp_directory_path() / "cairn-train-test-XXXXXX").string();
    dir_ = mkdtemp(pattern.data());
    registry_store_ = storage::RegistryStore::open(kv_).value();
    blobs_ = storage::BlobStore::open(dir_ + "/blobs").value();
    job_store_ = storage::JobStore::open(kv_, {false}).value();
    write_data(dir_ + "/data.jsonl", 80);
    start_node();
  }
  ~TrainJobTest() override {
    stop_node();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static void write_data(const std::string& path, int lines) {
    static const char* kWords[] = {"the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "big", "sun"};
    std::ofstream out(path);
    for (int i = 0; i < lines; ++i) {
      std::string text;
      for (int w = 0; w < 6 + i % 5; ++w) text += std::string(w ? " " : "") + kWords[(i * 7 + w * 3) % 12];
      out << "{\"text\": \"" << text << "\"}\n";
    }
  }

  // Starts the "node": an actor system with the registry and the job manager (which resumes the
  // jobs the store holds).
  void start_node(uint32_t max_restarts = 3) {
    config_ = std::make_unique<caf::actor_system_config>();
    config_->set("scheduler.max-threads", size_t{2});
    config_->set("logger.verbosity", caf::atom("quiet"));
    register_message_types(*config_);
    system_ = std::make_unique<caf::actor_system>(*config_);
    RegistryContext registry;
    registry.store = registry_store_.get();
    registry.blobs = blobs_.get();
    directory_.set("registry", spawn_registry(*system_, registry));
    TrainContext train;
    train.jobs = job_store_.get();
    train.blobs = blobs_.get();
    train.directory = &directory_;
    train.work_dir = dir_ + "/train";
    train.node_name = "test-node";
    train.options.max_restarts = max_restarts;
    directory_.set("train", spawn_job_manager(*system_, train));
  }

  // Stops the node as a shutdown does: the job manager stops its workers and joins them.
  void stop_node() {
    if (!system_) return;
    for (const char* name : {"train", "registry"}) {
      caf::anon_send_exit(directory_.find(name), caf::exit_reason::user_shutdown);
      directory_.erase(name);
    }
    system_->await_all_actors_done();
    system_.reset();
    config_.reset();
  }

  std::string config_yaml(const std::string& extra = "") const {
    return testing::tiny_job_yaml(dir_ + "/data.jsonl", "max_steps: 12\nlogging_steps: 1\nseed: 7\n" + extra);
  }

  template <class Reply, class Request>
  Result<Reply> call(std::string_view op, const Request& request, const std::string& actor = "train") {
    return call_local_blocking<Reply>(directory_, actor, std::string(op), request, kJobTimeout);
  }

  Result<msg::TrainSubmitReply> submit(const std::string& yaml, std::vector<std::string> overrides = {}) {
    msg::TrainSubmitRequest request;
    request.config_yaml = yaml;
    request.config_name = dir_ + "/job.yaml";
    request.overrides = std::move(overrides);
    return call<msg::TrainSubmitReply>(msg::kTrainSubmit, request);
  }

  // train.watch's final reply: the job in its final state.
  msg::JobStatus wait_final(const std::string& job_id) {
    auto status = call<msg::JobStatus>(msg::kTrainWatch, msg::TrainJobRequest{job_id});
    EXPECT_TRUE(status.ok()) << status.status().to_string();
    return status.ok() ? *status : msg::JobStatus{};
  }

  // Follows the job's log into `waiter`; the call ends with the job.
  CallPtr follow(const std::string& job_id, const std::shared_ptr<EventWaiter>& waiter,
                 std::function<void(const msg::TrainLogEvent&)> also = nullptr) {
    msg::TrainLogsRequest request;
    request.job_id = job_id;
    request.follow = true;
    LocalCallHandlers handlers;
    handlers.on_more = [waiter, also](std::string body) {
      auto event = wire::decode_bytes<msg::TrainLogEvent>(body);
      if (!event.ok()) return;
      if (also) also(*event);
      waiter->notify(*event);
    };
    return send_local_call(directory_, "train", std::string(msg::kTrainLogs), wire::encode(request),
                           std::move(handlers));
  }

  std::string dir_;
  storage::MemoryKvStore kv_;
  std::unique_ptr<storage::RegistryStore> registry_store_;
  std::unique_ptr<storage::BlobStore> blobs_;
  std::unique_ptr<storage::JobStore> job_store_;
  Directory directory_;
  std::unique_ptr<caf::actor_system_config> config_;
  std::unique_ptr<caf::actor_system> system_;
};

TEST_F(TrainJobTest, TinyJobFinishesWithMetricsAndCheckpointVersions) {
  auto submitted = submit(config_yaml("save_steps: 4\nval_set_size: 0.1\neval_steps: 6\noutput_model: tiny\n"));
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  EXPECT_EQ(submitted->job_id, "job-1");
  EXPECT_FALSE(submitted->run_id.empty());
  EXPECT_TRUE(submitted->warnings.empty());

  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_EQ(final.state, "succeeded") << final.reason;
  EXPECT_EQ(final.step, 12);
  EXPECT_EQ(final.total_steps, 12);
  EXPECT_GT(final.loss, 0);
  EXPECT_GT(final.eval_loss, 0);
  EXPECT_EQ(final.run_id, submitted->run_id);
  EXPECT_FALSE(final.parameters_digest.empty());
  EXPECT_EQ(final.last_checkpoint.model, "tiny");
  EXPECT_EQ(final.last_checkpoint.step, 12);
  ASSERT_EQ(final.workers.size(), 1u);
  EXPECT_EQ(final.workers[0].state, "done");
  EXPECT_EQ(final.workers[0].node, "test-node");

  // The run: a loss point per logging step, eval metrics, params, FINISHED.
  msg::GetMetricHistoryRequest history;
  history.run_id = submitted->run_id;
  history.metric_key = "loss";
  auto losses = call<msg::MetricHistoryReply>(msg::kGetMetricHistory, history, "registry");
  ASSERT_TRUE(losses.ok()) << losses.status().to_string();
  EXPECT_EQ(losses->metrics.size(), 12u);
  history.metric_key = "eval_loss";
  auto evals = call<msg::MetricHistoryReply>(msg::kGetMetricHistory, history, "registry");
  ASSERT_TRUE(evals.ok());
  EXPECT_EQ(evals->metrics.size(), 2u);  // steps 6 and 12
  auto run = call<msg::RunReply>(msg::kGetRun, msg::RunIdRequest{submitted->run_id}, "registry");
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->run.info.status, "FINISHED");
  EXPECT_FALSE(run->run.info.config_digest.empty());
  bool has_lr_param = false;
  for (const auto& p : run->run.data.params) has_lr_param = has_lr_param || (p.key == "learning_rate");
  EXPECT_TRUE(has_lr_param);

  // Checkpoints at steps 4, 8 and 12 are versions with lineage.
  msg::SearchVersionsRequest search;
  search.name = "tiny";
  auto versions = call<msg::SearchVersionsReply>(msg::kSearchVersions, search, "registry");
  ASSERT_TRUE(versions.ok()) << versions.status().to_string();
  ASSERT_EQ(versions->model_versions.size(), 3u);
  for (const auto& v : versions->model_versions) {
    EXPECT_EQ(v.run_id, submitted->run_id);
    std::map<std::string, std::string> tags;
    for (const auto& t : v.tags) tags[t.key] = t.value;
    EXPECT_EQ(tags["cairn.job_id"], "job-1");
    EXPECT_FALSE(tags["cairn.config_digest"].empty());
    EXPECT_FALSE(tags["cairn.dataset_digest"].empty());
    std::set<std::string> paths;
    for (const auto& a : v.artifacts) paths.insert(a.path);
    EXPECT_TRUE(paths.count("cairn/data_cursor.rank0.json")) << v.version;
    EXPECT_TRUE(paths.count("trainer_state.json")) << v.version;
    EXPECT_TRUE(paths.count("tokenizer.json")) << v.version;  // servable as registered
  }
  std::map<std::string, std::string> newest;
  for (const auto& t : versions->model_versions.front().tags) newest[t.key] = t.value;
  EXPECT_EQ(newest["cairn.step"], "12");
  EXPECT_EQ(newest["cairn.kind"], "final");

  // The record survives: list and status read it.
  auto listed = call<msg::TrainListReply>(msg::kTrainList, msg::TrainListRequest{});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->jobs.size(), 1u);
  EXPECT_EQ(listed->jobs[0].state, "succeeded");
  EXPECT_EQ(job_store_->get("job-1")->status.state, "succeeded");
}

TEST_F(TrainJobTest, BadConfigIsRejectedNamingTheKeyBeforeAnyCompute) {
  auto submitted = submit(config_yaml(), {"learning_rate=fast"});
  ASSERT_FALSE(submitted.ok());
  EXPECT_EQ(submitted.status().code(), Code::invalid_argument);
  EXPECT_NE(submitted.status().message().find("learning_rate"), std::string::npos) << submitted.status().message();
  EXPECT_NE(submitted.status().message().find("fast"), std::string::npos) << submitted.status().message();
  auto listed = call<msg::TrainListReply>(msg::kTrainList, msg::TrainListRequest{});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->jobs.empty());
}

TEST_F(TrainJobTest, UnknownKeyIsAWarningInTheSubmitReply) {
  auto submitted = submit(config_yaml("lora_rr: 4\n"), {"max_steps=2"});
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  ASSERT_EQ(submitted->warnings.size(), 1u);
  EXPECT_NE(submitted->warnings[0].find("lora_rr"), std::string::npos) << submitted->warnings[0];
  EXPECT_EQ(wait_final(submitted->job_id).state, "succeeded");
}

TEST_F(TrainJobTest, CancelStopsTheWorkers) {
  auto waiter = std::make_shared<EventWaiter>();
  auto submitted = submit(config_yaml(), {"max_steps=100000"});
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  follow(submitted->job_id, waiter);
  ASSERT_TRUE(waiter->wait_for_kind("progress", kJobTimeout));
  auto cancelled = call<msg::JobStatus>(msg::kTrainCancel, msg::TrainJobRequest{submitted->job_id});
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().to_string();
  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_EQ(final.state, "cancelled");
  EXPECT_NE(final.reason.find("cancelled by admin"), std::string::npos) << final.reason;
  EXPECT_LT(final.step, 100000);
  auto run = call<msg::RunReply>(msg::kGetRun, msg::RunIdRequest{submitted->run_id}, "registry");
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->run.info.status, "KILLED");
}

TEST_F(TrainJobTest, KilledTrainerResumesFromTheCheckpointWithTheSameFinalParameters) {
  const std::string yaml = config_yaml("save_steps: 5\n");
  auto reference = submit(yaml, {"max_steps=20"});
  ASSERT_TRUE(reference.ok()) << reference.status().to_string();
  msg::JobStatus uninterrupted = wait_final(reference->job_id);
  ASSERT_EQ(uninterrupted.state, "succeeded") << uninterrupted.reason;

  auto submitted = submit(yaml, {"max_steps=20"});
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  const std::string trainer = job_actor_name(submitted->job_id, "trainer", 0);
  auto waiter = std::make_shared<EventWaiter>();
  std::atomic<bool> killed{false};
  // Kill the trainer as soon as the first checkpoint is registered (on the job manager's thread,
  // so the job is surely mid-run).
  follow(submitted->job_id, waiter, [&](const msg::TrainLogEvent& event) {
    if (event.kind == "checkpoint" && !killed.exchange(true)) {
      caf::anon_send_exit(directory_.find(trainer), caf::exit_reason::kill);
    }
  });
  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_TRUE(killed.load());
  EXPECT_EQ(final.state, "succeeded") << final.reason;
  EXPECT_EQ(final.restarts, 1u);
  EXPECT_EQ(final.step, 20);
  EXPECT_EQ(final.parameters_digest, uninterrupted.parameters_digest);
}

TEST_F(TrainJobTest, NodeRestartResumesRunningJobsWithTheSameFinalParameters) {
  const std::string yaml = config_yaml("save_steps: 5\n");
  auto reference = submit(yaml, {"max_steps=20"});
  ASSERT_TRUE(reference.ok()) << reference.status().to_string();
  msg::JobStatus uninterrupted = wait_final(reference->job_id);
  ASSERT_EQ(uninterrupted.state, "succeeded") << uninterrupted.reason;

  auto submitted = submit(yaml, {"max_steps=20"});
  ASSERT_TRUE(submitted.ok());
  auto waiter = std::make_shared<EventWaiter>();
  follow(submitted->job_id, waiter);
  ASSERT_TRUE(waiter->wait_for_kind("checkpoint", kJobTimeout));
  stop_node();
  EXPECT_EQ(job_store_->get(submitted->job_id)->status.state, "running");
  start_node();
  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_EQ(final.state, "succeeded") << final.reason;
  EXPECT_EQ(final.restarts, 1u);
  EXPECT_EQ(final.parameters_digest, uninterrupted.parameters_digest);
}

TEST_F(TrainJobTest, LossWatchdogStopsTheJobWithTheReasonOnItsRun) {
  auto submitted = submit(config_yaml("loss_watchdog_threshold: 0.001\nloss_watchdog_patience: 2\n"));
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_EQ(final.state, "stopped");
  EXPECT_EQ(final.step, 2);
  EXPECT_NE(final.reason.find("loss watchdog"), std::string::npos) << final.reason;
  auto run = call<msg::RunReply>(msg::kGetRun, msg::RunIdRequest{submitted->run_id}, "registry");
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->run.info.status, "FAILED");
  std::string stop_reason;
  for (const auto& t : run->run.data.tags) {
    if (t.key == "cairn.stop_reason") stop_reason = t.value;
  }
  EXPECT_NE(stop_reason.find("loss watchdog"), std::string::npos);
}

TEST_F(TrainJobTest, EarlyStoppingStopsTheJobWithTheReasonOnItsRun) {
  // A learning rate far too high without clipping: the eval loss gets worse after the first step.
  auto submitted = submit(config_yaml("val_set_size: 0.2\neval_steps: 1\nearly_stopping_patience: 2\n"),
                          {"learning_rate=3.0", "max_grad_norm=0"});
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  msg::JobStatus final = wait_final(submitted->job_id);
  EXPECT_EQ(final.state, "stopped");
  EXPECT_LT(final.step, 12);
  EXPECT_NE(final.reason.find("early stopping"), std::string::npos) << final.reason;
  auto run = call<msg::RunReply>(msg::kGetRun, msg::RunIdRequest{submitted->run_id}, "registry");
  ASSERT_TRUE(run.ok());
  std::string stop_reason;
  for (const auto& t : run->run.data.tags) {
    if (t.key == "cairn.stop_reason") stop_reason = t.value;
  }
  EXPECT_NE(stop_reason.find("early stopping"), std::string::npos);
}

TEST_F(TrainJobTest, TwoWorkersInOneNodeTrainOneJob) {
  auto one = submit(config_yaml(), {"micro_batch_size=4", "max_steps=6"});
  ASSERT_TRUE(one.ok()) << one.status().to_string();
  msg::JobStatus single = wait_final(one->job_id);
  ASSERT_EQ(single.state, "succeeded") << single.reason;

  auto two = submit(config_yaml("save_steps: 3\n"), {"micro_batch_size=2", "num_workers=2", "max_steps=6"});
  ASSERT_TRUE(two.ok()) << two.status().to_string();
  msg::JobStatus pair = wait_final(two->job_id);
  ASSERT_EQ(pair.state, "succeeded") << pair.reason;
  ASSERT_EQ(pair.workers.size(), 2u);
  EXPECT_EQ(pair.workers[1].state, "done");
  // Every rank reports its step (what shows a rank on another node in the job's status).
  EXPECT_EQ(pair.workers[0].step, 6);
  EXPECT_EQ(pair.workers[1].step, 6);
  // The same global batches: the same losses up to float rounding.
  EXPECT_NEAR(pair.loss, single.loss, 1e-3 * std::max(1.0, single.loss));
}

TEST_F(TrainJobTest, LoraFineTuneOfARegisteredBaseModel) {
  // The fixture model, registered as tiny-base/1 (its files put in the blob store first).
  const std::string fixture = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama";
  msg::CreateVersionRequest version;
  version.name = "tiny-base";
  version.create_model = true;
  for (const char* file : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}) {
    auto blob = blobs_->put_file(fixture + "/" + file);
    ASSERT_TRUE(blob.ok()) << blob.status().to_string();
    version.artifacts.push_back({file, blob->sha256, blob->size});
  }
  // A base with a tokenizer_config.json: the fine-tuned versions carry it on.
  const std::string tokenizer_config = dir_ + "/tokenizer_config.json";
  { std::ofstream(tokenizer_config) << "{\"bos_token\": \"<s>\"}\n"; }
  auto config_blob = blobs_->put_file(tokenizer_config);
  ASSERT_TRUE(config_blob.ok()) << config_blob.status().to_string();
  version.artifacts.push_back({"tokenizer_config.json", config_blob->sha256, config_blob->size});
  ASSERT_TRUE(call<msg::VersionReply>(msg::kCreateVersion, version, "registry").ok());

  const std::string yaml = "base_model: tiny-base@latest\n"
                           "adapter: lora\n"
                           "lora_r: 4\n"
                           "datasets:\n"
                           "  - path: " + dir_ + "/data.jsonl\n"
                           "    type: completion\n"
                           "sequence_len: 32\n"
                           "excess_length_strategy: split\n"
                           "micro_batch_size: 2\n"
                           "learning_rate: 0.01\n"
                           "max_steps: 4\n"
                           "output_model: tiny-lora\n";
  auto submitted = submit(yaml);
  ASSERT_TRUE(submitted.ok()) << submitted.status().to_string();
  msg::JobStatus final = wait_final(submitted->job_id);
  ASSERT_EQ(final.state, "succeeded") << final.reason;
  msg::GetVersionRequest get;
  get.name = "tiny-lora";
  get.version = final.last_checkpoint.version;
  auto registered = call<msg::VersionReply>(msg::kGetVersion, get, "registry");
  ASSERT_TRUE(registered.ok()) << registered.status().to_string();
  EXPECT_EQ(registered->model_version.base_model, "tiny-base/1");
  std::set<std::string> paths;
  for (const auto& a : registered->model_version.artifacts) paths.insert(a.path);
  EXPECT_TRUE(paths.count("adapter_model.safetensors"));
  EXPECT_TRUE(paths.count("adapter_config.json"));
  EXPECT_TRUE(paths.count("tokenizer.json"));
  EXPECT_TRUE(paths.count("tokenizer_config.json"));
}

// The links of ranks on different nodes: bound first (train.join), peers later (train.start).
TEST(RingLinkTest, TwoRanksJoinOverLoopbackAndAnAbortReachesThePeer) {
  std::vector<std::shared_ptr<train::RingLink>> links;
  std::vector<HostPort> peers;
  for (int rank = 0; rank < 2; ++rank) {
    RingOptions options;
    options.rank = rank;
    options.world_size = 2;
    options.secret = "job-secret";
    options.connect_timeout_ms = 10000;
    auto link = train::RingLink::listen(HostPort{"127.0.0.1", 0}, options);
    ASSERT_TRUE(link.ok()) << link.status().to_string();
    peers.push_back((*link)->bound());
    links.push_back(*link);
  }
  EXPECT_EQ(links[0]->set_peers({peers[0]}).code(), Code::invalid_argument);
  for (auto& link : links) ASSERT_TRUE(link->set_peers(peers).ok());

  Status results[2];
  float sums[2] = {0, 0};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      auto collective = links[rank]->connect();
      if (!collective.ok()) {
        results[rank] = collective.status();
        return;
      }
      float value = static_cast<float>(rank + 1);
      results[rank] = (*collective)->all_reduce_sum(&value, 1);
      sums[rank] = value;
      if (results[rank].ok() && rank == 1) links[rank]->abort();
      if (results[rank].ok()) results[rank] = (*collective)->barrier();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(sums[0], 3.0f);
  EXPECT_EQ(sums[1], 3.0f);
  // Rank 1 aborted before the barrier: neither rank gets through it.
  EXPECT_FALSE(results[0].ok());
  EXPECT_FALSE(results[1].ok());

  // Aborted before connecting: connect() fails at once without dialling.
  RingOptions options;
  options.world_size = 2;
  options.secret = "s";
  auto early = train::RingLink::listen(HostPort{"127.0.0.1", 0}, options);
  ASSERT_TRUE(early.ok());
  ASSERT_TRUE((*early)->set_peers({(*early)->bound(), HostPort{"127.0.0.1", 1}}).ok());
  (*early)->abort();
  EXPECT_EQ((*early)->connect().status().code(), Code::cancelled);
}

}  // namespace
}  // namespace cairn
