// The registry actor on CAF's deterministic test scheduler, over an in-memory KvStore (which
// counts and can fail writes) and a BlobStore in a temporary directory: group commit, failures
// that fail alone or together, artifact upload and download streams, corruption, pacing,
// cancellation and a restart on the same stores.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "actors/messages.h"
#include "actors/registry.h"
#include "runtime/messages/registry.h"
#include "storage/blob_store.h"
#include "storage/registry_store.h"
#include "tests/actors/call_helpers.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing::make_call;
using testing::RecordedReply;
using testing::RecordingSink;

// A MemoryKvStore that counts batch writes: one synced write per group commit is the contract.
class CountingKvStore final : public storage::KvStore {
 public:
  explicit CountingKvStore(std::vector<std::string> families) : inner_(std::move(families)) {}
  storage::MemoryKvStore& inner() { return inner_; }
  int writes() const { return writes_; }

  Status put(std::string_view family, std::string_view key, std::string_view value,
             const storage::WriteOptions& options) override {
    ++writes_;
    return inner_.put(family, key, value, options);
  }
  Status erase(std::string_view family, std::string_view key, const storage::WriteOptions& options) override {
    ++writes_;
    return inner_.erase(family, key, options);
  }
  Status write(const storage::WriteBatch& batch, const storage::WriteOptions& options) override {
    ++writes_;
    return inner_.write(batch, options);
  }
  Result<std::optional<std::string>> get(std::string_view family, std::string_view key) override {
    return inner_.get(family, key);
  }
  Status scan(std::string_view family, std::string_view prefix, std::string_view start_after,
              const storage::ScanVisitor& visit) override {
    return inner_.scan(family, prefix, start_after, visit);
  }
  Status flush() override { return inner_.flush(); }

 private:
  storage::MemoryKvStore inner_;
  int writes_ = 0;  // only the test thread touches the store (the scheduler is deterministic)
};

// A sink whose connection claims to hold `unsent` bytes, to drive the download's pacing.
class SlowSink final : public RecordingSink {
 public:
  uint64_t unsent_bytes() const override { return unsent; }
  uint64_t unsent = 0;
};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

class RegistryActorTest : public ::testing::Test {
 protected:
  RegistryActorTest()
      : system_(make_config()), sched_(dynamic_cast<caf::scheduler::test_coordinator&>(system_.scheduler())) {
    std::string pattern = (fs::temp_directory_path() / "cairn_registry_actor_test_XXXXXX").string();
    dir_ = ::mkdtemp(pattern.data()) ? pattern : "";
  }

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

  void SetUp() override {
    ASSERT_FALSE(dir_.empty());
    kv_ = std::make_unique<CountingKvStore>(storage::registry_families());
    auto store = storage::RegistryStore::open(*kv_);
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    store_ = std::move(store).value();
    auto blobs = storage::BlobStore::open(dir_ + "/blobs");
    ASSERT_TRUE(blobs.ok()) << blobs.status().to_string();
    blobs_ = std::move(blobs).value();
    context_.store = store_.get();
    context_.blobs = blobs_.get();
    context_.options.default_chunk_bytes = 1000;
    context_.options.max_chunk_bytes = 4000;
    start();
  }

  void TearDown() override {
    if (registry_) caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
    sched_.run();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  void start() {
    registry_ = spawn_registry(system_, context_);
    sched_.run();
  }

  // Queues the call in the actor's mailbox without running the actor.
  template <class Body>
  CallPtr queue(const std::string& op, const Body& body, Role role = Role::client,
                std::shared_ptr<RecordingSink> sink = nullptr) {
    auto call = make_call(next_id_++, op, body, role, sink ? sink : sink_);
    caf::anon_send(registry_, CallMessage{call->op(), call});
    return call;
  }

  // Sends the call, runs the actor until idle, and returns the call's final reply.
  template <class Body>
  RecordedReply call(const std::string& op, const Body& body, Role role = Role::client) {
    auto sent = queue(op, body, role);
    sched_.run();
    return final_reply(sent->id());
  }

  RecordedReply final_reply(uint64_t id, const std::shared_ptr<RecordingSink>& sink = nullptr) const {
    for (const auto& r : (sink ? sink : sink_)->replies()) {
      if (r.id == id && r.kind != protocol::ReplyKind::more) return r;
    }
    return {id, protocol::ReplyKind::error, {}, Status(Code::internal, "no final reply")};
  }

  std::vector<RecordedReply> items(uint64_t id, const std::shared_ptr<RecordingSink>& sink = nullptr) const {
    std::vector<RecordedReply> out;
    for (const auto& r : (sink ? sink : sink_)->replies()) {
      if (r.id == id && r.kind == protocol::ReplyKind::more) out.push_back(r);
    }
    return out;
  }

  template <class T>
  T ok_body(const RecordedReply& reply) {
    EXPECT_EQ(reply.kind, protocol::ReplyKind::ok) << reply.error.to_string();
    auto decoded = wire::decode_bytes<T>(reply.body);
    EXPECT_TRUE(decoded.ok()) << decoded.status().to_string();
    return decoded.ok() ? std::move(decoded).value() : T{};
  }

  std::string create_run() {
    msg::CreateRunRequest request;
    request.experiment_id = "0";
    return ok_body<msg::RunReply>(call(std::string(msg::kCreateRun), request)).run.info.run_id;
  }

  static msg::LogBatchRequest batch(const std::string& run_id, const std::string& key, int64_t step, double value) {
    msg::LogBatchRequest request;
    request.run_id = run_id;
    request.metrics.push_back({key, value, 1000 + step, step});
    return request;
  }

  std::vector<msg::Metric> history(const std::string& run_id, const std::string& key) {
    msg::GetMetricHistoryRequest request;
    request.run_id = run_id;
    request.metric_key = key;
    return ok_body<msg::MetricHistoryReply>(call(std::string(msg::kGetMetricHistory), request)).metrics;
  }

  // Uploads `bytes` in chunks of `chunk` bytes; returns the last reply.
  RecordedReply upload(const std::string& bytes, size_t chunk) {
    const std::string sha = storage::sha256_hex(bytes);
    RecordedReply last;
    for (size_t offset = 0; offset < bytes.size() || offset == 0; offset += chunk) {
      msg::UploadChunk c;
      c.sha256 = sha;
      c.size = bytes.size();
      c.offset = offset;
      c.data.data = bytes.substr(offset, chunk);
      c.last = offset + chunk >= bytes.size();
      last = call(std::string(msg::kUploadArtifact), c);
      if (last.kind != protocol::ReplyKind::ok || c.last) break;
    }
    return last;
  }

  // The data of every chunk of download `id`, in order, checking the offsets.
  std::string downloaded(uint64_t id, const std::shared_ptr<RecordingSink>& sink = nullptr) {
    std::string out;
    for (const auto& item : items(id, sink)) {
      auto chunk = wire::decode_bytes<msg::DownloadChunk>(item.body);
      EXPECT_TRUE(chunk.ok());
      EXPECT_EQ(chunk->offset, out.size());
      out += chunk->data.data;
    }
    return out;
  }

  caf::actor_system system_;
  caf::scheduler::test_coordinator& sched_;
  std::string dir_;
  std::unique_ptr<CountingKvStore> kv_;
  std::unique_ptr<storage::RegistryStore> store_;
  std::unique_ptr<storage::BlobStore> blobs_;
  RegistryContext context_;
  caf::actor registry_;
  std::shared_ptr<RecordingSink> sink_ = std::make_shared<RecordingSink>();
  uint64_t next_id_ = 1;
};

TEST_F(RegistryActorTest, ServesTheRegistryOpsAndNamesTheOpInErrors) {
  msg::CreateExperimentRequest create;
  create.name = "exp";
  auto id = ok_body<msg::CreateExperimentReply>(call(std::string(msg::kCreateExperiment), create)).experiment_id;
  msg::GetExperimentRequest get;
  get.experiment_name = "exp";
  EXPECT_EQ(ok_body<msg::ExperimentReply>(call(std::string(msg::kGetExperiment), get)).experiment.experiment_id, id);

  auto again = call(std::string(msg::kCreateExperiment), create);
  EXPECT_EQ(again.error.code(), Code::already_exists);
  EXPECT_EQ(again.error.message().rfind("registry.create_experiment: ", 0), 0u) << again.error.message();

  auto missing = call(std::string(msg::kGetRun), msg::RunIdRequest{"0123456789abcdef0123456789abcdef"});
  EXPECT_EQ(missing.error.code(), Code::not_found);

  auto unknown = call("registry.nope", msg::Empty{});
  EXPECT_EQ(unknown.error.code(), Code::unknown_op);
}

TEST_F(RegistryActorTest, LogBatchesOfOneRoundShareOneCommitAndAreAnsweredAfterIt) {
  const std::string run = create_run();
  const int writes_before = kv_->writes();
  std::vector<CallPtr> calls;
  for (int i = 0; i < 5; ++i) calls.push_back(queue(std::string(msg::kLogBatch), batch(run, "loss", i, 1.0 / (i + 1))));

  // Every batch is staged before the flush that the first one queued behind them.
  for (int i = 0; i < 5; ++i) sched_.run_once();
  EXPECT_EQ(kv_->writes(), writes_before) << "nothing is written before the round ends";
  for (const auto& c : calls) EXPECT_FALSE(c->finished()) << "no answer before the commit";

  sched_.run();
  EXPECT_EQ(kv_->writes(), writes_before + 1) << "one synced write for the whole group";
  for (const auto& c : calls) EXPECT_EQ(final_reply(c->id()).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(history(run, "loss").size(), 5u);
}

TEST_F(RegistryActorTest, ABadRequestFailsAloneAndTheRestOfItsGroupCommits) {
  const std::string run = create_run();
  auto good1 = queue(std::string(msg::kLogBatch), batch(run, "loss", 1, 0.5));
  auto bad = queue(std::string(msg::kLogBatch), batch(run, "bad key!", 2, 0.5));
  auto good2 = queue(std::string(msg::kLogBatch), batch(run, "loss", 3, 0.25));
  const int writes_before = kv_->writes();
  sched_.run();

  EXPECT_EQ(final_reply(good1->id()).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(final_reply(good2->id()).kind, protocol::ReplyKind::ok);
  auto failed = final_reply(bad->id());
  EXPECT_EQ(failed.error.code(), Code::bad_request);
  EXPECT_NE(failed.error.message().find("bad key!"), std::string::npos) << failed.error.message();
  EXPECT_EQ(kv_->writes(), writes_before + 1);
  EXPECT_EQ(history(run, "loss").size(), 2u);
}

TEST_F(RegistryActorTest, AFailedCommitFailsEveryRequestOfTheGroupAndWritesNothing) {
  const std::string run = create_run();
  kv_->inner().fail_next_writes(1, Status(Code::io_error, "disk on fire"));
  auto a = queue(std::string(msg::kLogBatch), batch(run, "loss", 1, 0.5));
  auto b = queue(std::string(msg::kLogBatch), batch(run, "acc", 1, 0.9));
  sched_.run();

  // One injected failure, two failed calls: they were one write.
  for (const auto& c : {a, b}) {
    auto reply = final_reply(c->id());
    EXPECT_EQ(reply.error.code(), Code::io_error);
    EXPECT_NE(reply.error.message().find("disk on fire"), std::string::npos);
  }
  EXPECT_TRUE(history(run, "loss").empty());
  EXPECT_TRUE(history(run, "acc").empty());

  // The next group commits normally.
  EXPECT_EQ(call(std::string(msg::kLogBatch), batch(run, "loss", 2, 0.4)).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(history(run, "loss").size(), 1u);
}

TEST_F(RegistryActorTest, AGroupReachingItsSizeBoundCommitsWithoutWaitingForTheRound) {
  caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
  sched_.run();
  context_.options.max_group_points = 2;
  start();
  const std::string run = create_run();
  auto a = queue(std::string(msg::kLogBatch), batch(run, "loss", 1, 0.5));
  auto b = queue(std::string(msg::kLogBatch), batch(run, "loss", 2, 0.4));
  auto c = queue(std::string(msg::kLogBatch), batch(run, "loss", 3, 0.3));
  sched_.run_once();
  sched_.run_once();
  EXPECT_TRUE(a->finished() && b->finished()) << "the bound was reached: committed at once";
  EXPECT_FALSE(c->finished());
  sched_.run();
  EXPECT_EQ(final_reply(c->id()).kind, protocol::ReplyKind::ok);
}

TEST_F(RegistryActorTest, ReadsOfRunsSeeEveryBatchQueuedBeforeThem) {
  const std::string run = create_run();
  queue(std::string(msg::kLogBatch), batch(run, "loss", 1, 0.5));
  msg::GetMetricHistoryRequest request;
  request.run_id = run;
  request.metric_key = "loss";
  auto read = queue(std::string(msg::kGetMetricHistory), request);
  sched_.run();
  EXPECT_EQ(ok_body<msg::MetricHistoryReply>(final_reply(read->id())).metrics.size(), 1u);
}

TEST_F(RegistryActorTest, UploadThenDownloadRoundTripsInChunks) {
  const std::string bytes = random_bytes(10000, 1);
  const std::string sha = storage::sha256_hex(bytes);

  // An empty chunk asks what the node holds.
  msg::UploadChunk probe;
  probe.sha256 = sha;
  probe.size = bytes.size();
  auto held = ok_body<msg::UploadReply>(call(std::string(msg::kUploadArtifact), probe));
  EXPECT_EQ(held.received, 0u);
  EXPECT_FALSE(held.complete);

  auto done = ok_body<msg::UploadReply>(upload(bytes, 3000));
  EXPECT_TRUE(done.complete);
  EXPECT_EQ(done.received, bytes.size());
  EXPECT_TRUE(ok_body<msg::UploadReply>(call(std::string(msg::kUploadArtifact), probe)).complete)
      << "a second upload of the same content is deduplicated";

  msg::DownloadRequest request;
  request.sha256 = sha;
  request.chunk_bytes = 3000;
  auto download = queue(std::string(msg::kDownloadArtifact), request);
  sched_.run();
  EXPECT_EQ(final_reply(download->id()).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(items(download->id()).size(), 4u);
  EXPECT_EQ(downloaded(download->id()), bytes);

  // chunk_bytes 0 takes the default; larger than the maximum is capped.
  request.chunk_bytes = 0;
  auto by_default = queue(std::string(msg::kDownloadArtifact), request);
  request.chunk_bytes = 1u << 30;
  auto capped = queue(std::string(msg::kDownloadArtifact), request);
  sched_.run();
  EXPECT_EQ(items(by_default->id()).size(), 10u);
  EXPECT_EQ(items(capped->id()).size(), 3u);
  EXPECT_EQ(downloaded(capped->id()), bytes);
}

TEST_F(RegistryActorTest, DownloadsInterleaveWithOtherRequests) {
  const std::string bytes = random_bytes(5000, 2);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 5000)).complete);
  msg::DownloadRequest request;
  request.sha256 = storage::sha256_hex(bytes);
  auto download = queue(std::string(msg::kDownloadArtifact), request);
  auto experiments = queue(std::string(msg::kSearchExperiments), msg::SearchExperimentsRequest{});
  sched_.run_once();  // the download starts: one chunk
  sched_.run_once();  // the search is answered before the second chunk
  EXPECT_TRUE(experiments->finished());
  EXPECT_EQ(items(download->id()).size(), 1u);
  sched_.run();
  EXPECT_EQ(downloaded(download->id()), bytes);
}

TEST_F(RegistryActorTest, ACorruptBlobEndsTheDownloadWithDataLoss) {
  const std::string bytes = random_bytes(2500, 3);
  const std::string sha = storage::sha256_hex(bytes);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 2500)).complete);
  {
    const std::string path = dir_ + "/blobs/blobs/" + sha.substr(0, 2) + "/" + sha;
    fs::permissions(path, fs::perms::owner_write, fs::perm_options::add);
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(file.good());
    file.seekp(100);
    file.put(static_cast<char>(bytes[100] ^ 0x5a));
  }
  msg::DownloadRequest request;
  request.sha256 = sha;
  auto download = queue(std::string(msg::kDownloadArtifact), request);
  sched_.run();
  auto end = final_reply(download->id());
  EXPECT_EQ(end.error.code(), Code::data_loss) << end.error.to_string();
  EXPECT_LT(downloaded(download->id()).size(), bytes.size()) << "the last chunk is never served";
}

TEST_F(RegistryActorTest, ADownloadWaitsWhileItsConnectionIsBehindAndStopsWhenCancelled) {
  const std::string bytes = random_bytes(5000, 4);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 5000)).complete);
  auto slow = std::make_shared<SlowSink>();
  slow->unsent = context_.options.max_unsent_bytes + 1;
  msg::DownloadRequest request;
  request.sha256 = storage::sha256_hex(bytes);
  auto download = queue(std::string(msg::kDownloadArtifact), request, Role::client, slow);
  sched_.run();
  EXPECT_TRUE(items(download->id(), slow).empty()) << "nothing is sent while the connection is behind";
  EXPECT_FALSE(download->finished());

  slow->unsent = 0;
  ASSERT_TRUE(sched_.trigger_timeout());
  sched_.run_once();
  EXPECT_EQ(items(download->id(), slow).size(), 1u);

  download->cancel(Status(Code::cancelled, "cancelled by the client"));
  sched_.run();
  EXPECT_EQ(items(download->id(), slow).size(), 1u) << "no chunk after the cancel";
  EXPECT_EQ(final_reply(download->id(), slow).error.code(), Code::cancelled);
}

TEST_F(RegistryActorTest, CreateVersionRefusesArtifactsThatAreNotStored) {
  const std::string bytes = random_bytes(100, 5);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 100)).complete);
  msg::CreateVersionRequest request;
  request.name = "m";
  request.create_model = true;
  request.artifacts.push_back({"model.safetensors", storage::sha256_hex(bytes), bytes.size()});
  request.artifacts.push_back({"config.json", storage::sha256_hex("never uploaded"), 14});
  auto refused = call(std::string(msg::kCreateVersion), request);
  EXPECT_EQ(refused.error.code(), Code::bad_request);
  EXPECT_NE(refused.error.message().find("artifacts[1]"), std::string::npos) << refused.error.message();
  EXPECT_EQ(call(std::string(msg::kGetModel), msg::ModelNameRequest{"m"}).error.code(), Code::not_found)
      << "nothing was written";

  request.artifacts.pop_back();
  request.artifacts[0].size = 99;
  EXPECT_EQ(call(std::string(msg::kCreateVersion), request).error.code(), Code::bad_request) << "wrong size";

  request.artifacts[0].size = bytes.size();
  auto version = ok_body<msg::VersionReply>(call(std::string(msg::kCreateVersion), request)).model_version;
  EXPECT_EQ(version.version, "1");
  EXPECT_EQ(version.status, "READY");
}

TEST_F(RegistryActorTest, AliasMovesRecordTheCallersRole) {
  const std::string bytes = random_bytes(10, 6);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 10)).complete);
  msg::CreateVersionRequest request;
  request.name = "m";
  request.create_model = true;
  request.artifacts.push_back({"w", storage::sha256_hex(bytes), bytes.size()});
  ASSERT_EQ(call(std::string(msg::kCreateVersion), request).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(call(std::string(msg::kSetAlias), msg::SetAliasRequest{"m", "production", "1"}, Role::admin).kind,
            protocol::ReplyKind::ok);
  auto events = ok_body<msg::AliasHistoryReply>(call(std::string(msg::kAliasHistory), msg::ModelNameRequest{"m"})).events;
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].who, "admin");
  EXPECT_EQ(events[0].to_version, "1");
}

TEST_F(RegistryActorTest, GcIsForAdminsAndKeepsReferencedBlobs) {
  EXPECT_EQ(call(std::string(msg::kCollectGarbage), msg::Empty{}, Role::client).error.code(), Code::permission_denied);
  const std::string bytes = random_bytes(10, 7);
  ASSERT_TRUE(ok_body<msg::UploadReply>(upload(bytes, 10)).complete);
  msg::CreateVersionRequest request;
  request.name = "m";
  request.create_model = true;
  request.artifacts.push_back({"w", storage::sha256_hex(bytes), bytes.size()});
  ASSERT_EQ(call(std::string(msg::kCreateVersion), request).kind, protocol::ReplyKind::ok);
  auto gc = ok_body<msg::GcReply>(call(std::string(msg::kCollectGarbage), msg::Empty{}, Role::admin));
  EXPECT_EQ(gc.blobs_removed, 0u);
  EXPECT_EQ(gc.blobs_kept, 1u);
}

TEST_F(RegistryActorTest, ARestartedActorContinuesOnTheSameStores) {
  const std::string run = create_run();
  ASSERT_EQ(call(std::string(msg::kLogBatch), batch(run, "loss", 1, 0.5)).kind, protocol::ReplyKind::ok);
  caf::anon_send_exit(registry_, caf::exit_reason::kill);
  sched_.run();
  start();
  EXPECT_EQ(history(run, "loss").size(), 1u);
  EXPECT_EQ(call(std::string(msg::kLogBatch), batch(run, "loss", 2, 0.4)).kind, protocol::ReplyKind::ok);
  EXPECT_EQ(history(run, "loss").size(), 2u);
}

TEST(RegistryOps, EveryCatalogueOpIsServedAndOnlyGcNeedsAdmin) {
  std::map<std::string_view, Role> ops;
  for (const auto& op : registry_ops()) ops.emplace(op.name, op.min_role);
  for (std::string_view name :
       {msg::kCreateExperiment, msg::kGetExperiment, msg::kSearchExperiments, msg::kDeleteExperiment, msg::kCreateRun,
        msg::kGetRun, msg::kUpdateRun, msg::kDeleteRun, msg::kSearchRuns, msg::kLogBatch, msg::kGetMetricHistory,
        msg::kCreateModel, msg::kGetModel, msg::kUpdateModel, msg::kDeleteModel, msg::kSearchModels,
        msg::kCreateVersion, msg::kGetVersion, msg::kUpdateVersion, msg::kSearchVersions, msg::kGetLatestVersions,
        msg::kSetAlias, msg::kDeleteAlias, msg::kAliasHistory, msg::kUploadArtifact, msg::kDownloadArtifact,
        msg::kCollectGarbage}) {
    ASSERT_EQ(ops.count(name), 1u) << name;
    EXPECT_EQ(ops[name], name == msg::kCollectGarbage ? Role::admin : Role::client) << name;
  }
  EXPECT_EQ(ops.size(), 27u);
}

}  // namespace
}  // namespace cairn
