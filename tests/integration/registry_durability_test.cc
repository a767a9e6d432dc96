// The registry in a real node: what it acknowledged survives a SIGKILL, and nothing half-written
// shows after the restart; and the `cairn models` commands round-trip a model folder.
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "cairn/artifacts.h"
#include "runtime/messages/registry.h"
#include "test_util.h"

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

template <class Reply, class Request>
Result<Reply> call(Client& client, std::string_view op, const Request& request) {
  return client.call_as<Reply>(op, request, 10s);
}

// Everything the writers sent, and which of it the node acknowledged. Guarded by mutex.
struct Ledger {
  struct Batch {
    std::string run_id;
    std::vector<int64_t> steps;  // of metric "loss"; each step's value is its step / 1000
    bool acked = false;
  };
  struct Version {
    std::string model;
    std::string version;  // "" while unacknowledged
    std::vector<msg::ArtifactRef> artifacts;
  };

  std::mutex mutex;
  std::condition_variable progress;
  std::vector<std::string> acked_runs;
  std::vector<Batch> batches;  // sent, acknowledged or not
  std::vector<Version> acked_versions;
  std::set<std::string> models;
  size_t acked_batches = 0;
};

// One writer: runs, metric batches and versions with freshly uploaded artifacts, until the node
// stops answering. Records each write before sending it and marks it when acknowledged.
void writer(const NodeProcess& node, const std::string& experiment_id, int index, Ledger& ledger,
            const std::string& scratch_dir) {
  auto client = Client::connect(node.client_options(Role::client));
  if (!client.ok()) return;
  const std::string model = "durable-" + std::to_string(index);
  {
    std::lock_guard<std::mutex> lock(ledger.mutex);
    ledger.models.insert(model);
  }
  for (int round = 0;; ++round) {
    msg::CreateRunRequest create;
    create.experiment_id = experiment_id;
    create.run_name = "w" + std::to_string(index) + "-r" + std::to_string(round);
    auto run = call<msg::RunReply>(**client, msg::kCreateRun, create);
    if (!run.ok()) return;
    const std::string run_id = run->run.info.run_id;
    {
      std::lock_guard<std::mutex> lock(ledger.mutex);
      ledger.acked_runs.push_back(run_id);
    }

    // Batches pipelined eight at a time, so that group commit has company and the kill finds
    // some in flight; writers do different numbers of them, so that at any moment some are
    // logging while others upload or register.
    const int batches = 8 * (1 + index % 3);
    for (int b = 0; b < batches; b += 8) {
      std::vector<std::pair<size_t, std::future<Result<std::string>>>> inflight;
      for (int k = b; k < b + 8; ++k) {
        msg::LogBatchRequest batch;
        batch.run_id = run_id;
        Ledger::Batch record{run_id, {}, false};
        for (int p = 0; p < 50; ++p) {
          const int64_t step = k * 50 + p;
          batch.metrics.push_back({"loss", static_cast<double>(step) / 1000, 1000 + step, step});
          record.steps.push_back(step);
        }
        size_t slot;
        {
          std::lock_guard<std::mutex> lock(ledger.mutex);
          slot = ledger.batches.size();
          ledger.batches.push_back(std::move(record));
        }
        inflight.emplace_back(slot, (*client)->call_future(msg::kLogBatch, wire::encode(batch), 10s));
      }
      bool failed = false;
      for (auto& [slot, reply] : inflight) {
        auto result = reply.get();
        if (!result.ok()) {
          failed = true;
          continue;
        }
        std::lock_guard<std::mutex> lock(ledger.mutex);
        ledger.batches[slot].acked = true;
        ++ledger.acked_batches;
      }
      ledger.progress.notify_all();
      if (failed) return;
    }

    // A version of two artifacts: one new, one shared by every version (deduplicated).
    const std::string file = scratch_dir + "/w" + std::to_string(index) + "-" + std::to_string(round);
    std::ofstream(file, std::ios::binary) << random_bytes(20000 + 997 * static_cast<size_t>(round), index * 100000 + round);
    const std::string shared = scratch_dir + "/shared";
    auto weights = upload_artifact(**client, file, "weights.bin");
    if (!weights.ok()) return;
    auto config = upload_artifact(**client, shared, "config.json");
    if (!config.ok()) return;
    msg::CreateVersionRequest version;
    version.name = model;
    version.run_id = run_id;
    version.create_model = true;
    version.artifacts = {weights->artifact, config->artifact};
    auto created = call<msg::VersionReply>(**client, msg::kCreateVersion, version);
    if (!created.ok()) return;
    {
      std::lock_guard<std::mutex> lock(ledger.mutex);
      ledger.acked_versions.push_back({model, created->model_version.version, version.artifacts});
    }
    ledger.progress.notify_all();
  }
}

// Downloads every artifact of `version` into a fresh folder under `dir` and checks each file.
Status check_downloadable(Client& client, const msg::ModelVersion& version, const std::string& dir) {
  const std::string into = dir + "/" + version.name + "-" + version.version;
  ArtifactTransferOptions options;
  options.timeout = 10s;
  CAIRN_RETURN_IF_ERROR(download_artifacts(client, version.artifacts, into, options));
  for (const auto& a : version.artifacts) {
    auto sha = sha256_file(into + "/" + a.path);
    if (!sha.ok()) return sha.status();
    if (*sha != a.sha256) return Status(Code::data_loss, into + "/" + a.path + ": wrong sha256");
  }
  return Status();
}

TEST(RegistryDurabilityTest, AcknowledgedWritesSurviveSigkillAndNothingHalfWrittenShows) {
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start({}));
  std::unique_ptr<Client> setup;
  CAIRN_ASSERT_OK_AND_ASSIGN(setup, Client::connect(node->client_options(Role::client)));
  msg::CreateExperimentRequest experiment;
  experiment.name = "durability";
  msg::CreateExperimentReply created_experiment;
  CAIRN_ASSERT_OK_AND_ASSIGN(created_experiment, call<msg::CreateExperimentReply>(*setup, msg::kCreateExperiment, experiment));

  TempDir scratch;
  ASSERT_FALSE(scratch.path().empty());
  std::ofstream(scratch.path("shared"), std::ios::binary) << random_bytes(5000, 42);

  // A partial upload, left unfinished: it must never be visible as a blob.
  const std::string partial = random_bytes(300000, 7);
  msg::UploadChunk chunk;
  {
    std::ofstream(scratch.path("partial"), std::ios::binary) << partial;
    chunk.sha256 = sha256_file(scratch.path("partial")).value();
    chunk.size = partial.size();
    chunk.data.data = partial.substr(0, 100000);
    ASSERT_TRUE(call<msg::UploadReply>(*setup, msg::kUploadArtifact, chunk).ok());
  }

  Ledger ledger;
  std::vector<std::thread> writers;
  for (int i = 0; i < 4; ++i) {
    writers.emplace_back(writer, std::cref(*node), created_experiment.experiment_id, i, std::ref(ledger),
                         scratch.path());
  }
  {
    // Kill once enough has been acknowledged, while the writers are still writing.
    std::unique_lock<std::mutex> lock(ledger.mutex);
    bool enough = ledger.progress.wait_for(lock, 90s, [&] {
      return ledger.acked_batches >= 300 && ledger.acked_versions.size() >= 6;
    });
    EXPECT_TRUE(enough) << "acknowledged " << ledger.acked_batches << " batches and " << ledger.acked_versions.size()
                        << " versions\n" << node->diagnostics();
  }
  ASSERT_TRUE(node->signal(SIGKILL));
  auto code = node->wait_exit();
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 128 + SIGKILL);
  for (auto& t : writers) t.join();
  setup.reset();

  NodeOptions again;
  again.data_dir = node->data_dir();
  again.admin_token = node->admin_token();
  again.client_token = node->client_token();
  std::unique_ptr<NodeProcess> restarted;
  CAIRN_ASSERT_OK_AND_ASSIGN(restarted, NodeProcess::start(again));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(restarted->client_options(Role::client)));

  std::lock_guard<std::mutex> lock(ledger.mutex);
  // Every acknowledged run is there.
  for (const auto& run_id : ledger.acked_runs) {
    auto run = call<msg::RunReply>(*client, msg::kGetRun, msg::RunIdRequest{run_id});
    ASSERT_TRUE(run.ok()) << run_id << ": " << run.status().to_string();
  }
  // Every acknowledged batch is there whole; every other batch is there whole or not at all.
  std::map<std::string, std::set<int64_t>> steps_by_run;
  for (const auto& run_id : ledger.acked_runs) {
    msg::GetMetricHistoryRequest request;
    request.run_id = run_id;
    request.metric_key = "loss";
    auto history = call<msg::MetricHistoryReply>(*client, msg::kGetMetricHistory, request);
    ASSERT_TRUE(history.ok()) << history.status().to_string();
    for (const auto& m : history->metrics) {
      EXPECT_DOUBLE_EQ(m.value, static_cast<double>(m.step) / 1000);
      steps_by_run[run_id].insert(m.step);
    }
  }
  size_t acked_points = 0;
  for (const auto& batch : ledger.batches) {
    const auto& present = steps_by_run[batch.run_id];
    size_t found = 0;
    for (int64_t step : batch.steps) found += present.count(step);
    if (batch.acked) {
      EXPECT_EQ(found, batch.steps.size()) << "an acknowledged batch of run " << batch.run_id << " lost points";
      acked_points += found;
    } else {
      EXPECT_TRUE(found == 0 || found == batch.steps.size())
          << "a batch of run " << batch.run_id << " is half there: " << found << " of " << batch.steps.size();
    }
  }
  EXPECT_GE(acked_points, 256u * 50u);

  // Every acknowledged version is there, READY, with its artifacts.
  for (const auto& v : ledger.acked_versions) {
    msg::GetVersionRequest request;
    request.name = v.model;
    request.version = v.version;
    auto got = call<msg::VersionReply>(*client, msg::kGetVersion, request);
    ASSERT_TRUE(got.ok()) << v.model << "/" << v.version << ": " << got.status().to_string();
    EXPECT_EQ(got->model_version.status, "READY");
    ASSERT_EQ(got->model_version.artifacts.size(), v.artifacts.size());
    for (size_t i = 0; i < v.artifacts.size(); ++i) {
      EXPECT_EQ(got->model_version.artifacts[i].sha256, v.artifacts[i].sha256);
    }
  }
  // Every version there (acknowledged or not) has every artifact, downloadable and verified.
  TempDir downloads;
  size_t versions_seen = 0;
  for (const auto& model : ledger.models) {
    msg::SearchVersionsRequest request;
    request.name = model;
    request.max_results = 10000;
    auto versions = call<msg::SearchVersionsReply>(*client, msg::kSearchVersions, request);
    if (!versions.ok() && versions.status().code() == Code::not_found) continue;
    ASSERT_TRUE(versions.ok()) << versions.status().to_string();
    for (const auto& version : versions->model_versions) {
      ++versions_seen;
      EXPECT_EQ(version.artifacts.size(), 2u);
      CAIRN_ASSERT_OK(check_downloadable(*client, version, downloads.path()));
    }
  }
  EXPECT_GE(versions_seen, ledger.acked_versions.size());
  std::cout << "killed with " << ledger.acked_runs.size() << " runs, " << ledger.acked_batches << " of "
            << ledger.batches.size() << " sent batches and " << ledger.acked_versions.size()
            << " versions acknowledged; after the restart " << versions_seen << " versions\n";

  // The unfinished upload is not a blob: it cannot be downloaded or named by a version.
  msg::DownloadRequest download;
  download.sha256 = chunk.sha256;
  auto stream = client->subscribe(msg::kDownloadArtifact, wire::encode(download), nullptr);
  EXPECT_EQ(stream->wait(10s).code(), Code::not_found);
  msg::UploadChunk probe;
  probe.sha256 = chunk.sha256;
  probe.size = partial.size();
  auto held = call<msg::UploadReply>(*client, msg::kUploadArtifact, probe);
  ASSERT_TRUE(held.ok()) << held.status().to_string();
  EXPECT_FALSE(held->complete);
  EXPECT_LE(held->received, 100000u);
  msg::CreateVersionRequest with_partial;
  with_partial.name = "partial";
  with_partial.create_model = true;
  with_partial.artifacts = {{"weights.bin", chunk.sha256, partial.size()}};
  EXPECT_EQ(call<msg::VersionReply>(*client, msg::kCreateVersion, with_partial).status().code(), Code::bad_request);
}

// ---- the CLI ----

// Runs `cairn ARGS... --connect ADDR --token TOKEN`; returns its exit code and output.
std::pair<int, std::string> cairn(const NodeProcess& node, std::vector<std::string> args, const std::string& out_path) {
  std::vector<std::string> argv = {CAIRN_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--connect", node.address(), "--token", node.client_token()});
  auto code = run_program(argv, out_path, 60s);
  return {code.ok() ? *code : -1, read_file(out_path)};
}

TEST(RegistryCliTest, RegisterThenDownloadByAliasGivesTheSameFiles) {
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start({}));
  TempDir dir;
  const std::string model_dir = dir.path("model");
  fs::create_directories(model_dir + "/tokenizer");
  const std::map<std::string, std::string> files = {
      {"config.json", "{\"hidden_size\": 64}"},
      {"model.safetensors", random_bytes(3 << 20, 11)},
      {"tokenizer/tokenizer.json", "{\"model\": {}}"},
      {"empty.txt", ""},
  };
  for (const auto& [path, bytes] : files) std::ofstream(model_dir + "/" + path, std::ios::binary) << bytes;

  auto [registered, register_out] =
      cairn(*node, {"models", "register", "tiny", "--from", model_dir, "--label", "1.0.0", "--json"}, dir.path("out1"));
  ASSERT_EQ(registered, 0) << register_out << node->diagnostics();
  auto reply = nlohmann::json::parse(register_out);
  EXPECT_EQ(reply["model_version"]["version"], "1");
  EXPECT_EQ(reply["model_version"]["artifacts"].size(), files.size());

  auto [aliased, alias_out] = cairn(*node, {"models", "alias", "set", "tiny", "production", "1"}, dir.path("out2"));
  ASSERT_EQ(aliased, 0) << alias_out;

  const std::string to = dir.path("downloaded");
  auto [downloaded, download_out] = cairn(*node, {"models", "download", "tiny@production", "--to", to}, dir.path("out3"));
  ASSERT_EQ(downloaded, 0) << download_out;
  for (const auto& [path, bytes] : files) EXPECT_EQ(read_file(to + "/" + path), bytes) << path;
  size_t count = 0;
  for (const auto& entry : fs::recursive_directory_iterator(to)) count += entry.is_regular_file();
  EXPECT_EQ(count, files.size()) << "no temporary files are left behind";

  // A second registration of the same folder uploads nothing and makes version 2.
  auto [again, again_out] = cairn(*node, {"models", "register", "tiny", "--from", model_dir}, dir.path("out4"));
  ASSERT_EQ(again, 0) << again_out;
  EXPECT_NE(again_out.find("version 2"), std::string::npos) << again_out;
  EXPECT_NE(again_out.find("uploaded 0 B"), std::string::npos) << again_out;

  auto [listed, list_out] = cairn(*node, {"models", "versions", "tiny"}, dir.path("out5"));
  ASSERT_EQ(listed, 0) << list_out;
  EXPECT_NE(list_out.find("production"), std::string::npos) << list_out;

  auto [missing, missing_out] = cairn(*node, {"models", "download", "tiny/9", "--to", to}, dir.path("out6"));
  EXPECT_EQ(missing, 1) << missing_out;
  EXPECT_NE(missing_out.find("not_found"), std::string::npos) << missing_out;
}

TEST(RegistryCliTest, RunMetricsPrintsTheHistoryWithASparkline) {
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start({}));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node->client_options(Role::client)));
  msg::CreateRunRequest create;
  create.experiment_id = "0";
  msg::RunReply run;
  CAIRN_ASSERT_OK_AND_ASSIGN(run, call<msg::RunReply>(*client, msg::kCreateRun, create));
  msg::LogBatchRequest batch;
  batch.run_id = run.run.info.run_id;
  for (int step = 0; step < 8; ++step) batch.metrics.push_back({"loss", 8.0 - step, 1000 + step, step});
  ASSERT_TRUE(client->call(msg::kLogBatch, wire::encode(batch), 10s).ok());

  TempDir dir;
  auto [code, out] = cairn(*node, {"runs", "metrics", run.run.info.run_id, "loss"}, dir.path("out"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("█▇▆▅▄▃▂▁"), std::string::npos) << out;

  auto [listed, list_out] = cairn(*node, {"runs", "list", "--experiment", "Default", "--json"}, dir.path("out2"));
  ASSERT_EQ(listed, 0) << list_out;
  EXPECT_EQ(nlohmann::json::parse(list_out)["runs"].size(), 1u);
}

}  // namespace
}  // namespace cairn::testing
