// Internals of the training role shared by the job manager and the job's actors: what a job is
// once prepared, the bounded queue between a trainer actor and its thread, the collective link of
// one rank, the reports threads send to the job manager, and the two thread bodies (prepare_job,
// run_worker). Not a public API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/directory.h"
#include "cluster/collective.h"
#include "model/data.h"
#include "model/train_config.h"
#include "model/trainer.h"
#include "runtime/collective.h"
#include "runtime/messages/train.h"
#include "runtime/status.h"

namespace cairn::storage {
class BlobStore;
}

namespace cairn::train {

// A job resolved for running: immutable once made, shared by every thread and actor of one
// generation (a run of the job's workers; a restart makes the next).
struct PreparedJob {
  std::string job_id;
  uint64_t generation = 0;
  std::string run_id;
  std::string output_model;
  TrainJobConfig config;
  std::shared_ptr<const TokenizedDataset> dataset;  // loaded once per job, kept across generations
  TrainingSchedule schedule;
  TrainerInit init;
  std::string base_model_reference;  // lineage: "name/version", a local path, or "" (pretraining)
  std::string config_digest;
  int world_size = 1;
  // Resuming: the exported checkpoint directory ("" = from the start) and each rank's data cursor.
  std::string resume_dir;
  std::vector<std::optional<DataCursor>> resume_cursors;  // by rank; empty when not resuming
  int64_t resume_step = 0;
  std::string work_dir;  // this generation's scratch directory
};
using PreparedJobPtr = std::shared_ptr<const PreparedJob>;

// What prepare_job starts from: the job's record and what earlier generations loaded.
struct PrepareRequest {
  std::string job_id;
  uint64_t generation = 0;
  std::string config_yaml;
  std::string config_name;
  std::string run_id;
  msg::CheckpointRef resume_from;  // model "" = from the start
  std::shared_ptr<const TokenizedDataset> dataset;  // null: load it
  std::string work_dir;    // the job's directory: generations work under <work_dir>/gen-N
  std::string models_dir;  // registry base models are exported to <models_dir>/NAME/VERSION
  // A guest's ranks (train.join): registry versions (the base model, resume_from) come from the
  // home node's registry at `home` ("host:port"; "" = this node's registry), reached with
  // `peer_token`. Artifacts whose blob this node holds (a shared or earlier copy) are exported
  // from the local BlobStore; the rest are downloaded, verified.
  std::string home;
  std::string peer_token;
  // "NAME/VERSION": the registry base model as the home node resolved it; "" = resolve the
  // config's reference here.
  std::string pinned_base_model;
};

// Blocking: parses the config, resolves base_model (a local directory, or a registry version
// exported into <models_dir>/NAME/VERSION, or for a guest <models_dir>/remote/<content digest>,
// verified), loads the tokenizer and datasets (unless given), computes the schedule and exports
// the checkpoint to resume from. Errors name what failed (and the home node, for a guest).
Result<PreparedJobPtr> prepare_job(const PrepareRequest& request, const Directory& directory,
                                   storage::BlobStore& blobs, std::chrono::milliseconds registry_timeout);

// One micro-batch from a data shard, with the shard's cursor after its last row.
struct ShardBatch {
  std::vector<PackedRow> rows;
  std::string cursor_json;
};
using ShardBatchPtr = std::shared_ptr<const ShardBatch>;

// The queue between a trainer actor (which pushes what its shard sends) and the trainer's thread
// (which pops). Bounded by the credits the actor hands out, so it never holds more than
// TrainOptions::prefetch_batches. Thread-safe.
class BatchQueue {
 public:
  void push(ShardBatchPtr batch);
  // Blocks until a batch is there or the queue is closed; the close status then.
  Result<ShardBatchPtr> pop();
  // Wakes the consumer with `why`; later pushes are dropped. The first close wins.
  void close(const Status& why);

 private:
  std::mutex mutex_;  // guards everything below
  std::condition_variable cv_;
  std::deque<ShardBatchPtr> batches_;
  std::optional<Status> closed_;
};

// One rank's way into the job's collective. connect() runs on the rank's thread (it may block, for
// a TCP ring); abort() from any thread makes the rank's pending and later collectives fail.
class RankLink {
 public:
  virtual ~RankLink() = default;
  virtual Result<Collective*> connect() = 0;
  virtual void abort() = 0;
};
using RankLinkPtr = std::shared_ptr<RankLink>;

// Links for `world_size` ranks that are threads of this process (an InProcessGroup).
std::vector<RankLinkPtr> in_process_links(int world_size);

// One rank of a TCP ring between nodes (cluster/collective.h RingEndpoint), in the two phases of
// train.join / train.start: listen() binds at once, so the node can answer its bound() address
// before the peers are known; set_peers() (from train.start) completes the RingOptions; connect()
// on the rank's thread joins the ring. abort() before connect() makes it fail without dialling; an
// abort() during connect() takes effect when the dialling ends (within connect_timeout_ms).
class RingLink final : public RankLink {
 public:
  // `options` without peers: rank, world_size, secret and the timeouts.
  static Result<std::shared_ptr<RingLink>> listen(const HostPort& bind, RingOptions options);
  HostPort bound() const;
  // Every rank's address, indexed by rank; must be called before connect(). invalid_argument when
  // the count is not the world size.
  Status set_peers(std::vector<HostPort> peers);
  Result<Collective*> connect() override;
  void abort() override;

 private:
  RingLink(std::unique_ptr<RingEndpoint> endpoint, RingOptions options);
  const HostPort bound_;
  std::mutex mutex_;
  std::unique_ptr<RingEndpoint> endpoint_;  // consumed by connect()
  RingOptions options_;
  std::unique_ptr<Collective> collective_;  // set by connect(); abort() is thread-safe
  bool aborted_ = false;
};

// Reports from threads to the job manager (sent with anon_send; never waited on).
struct WorkerReport {
  enum class Kind : uint8_t { progress, eval, checkpoint, log };
  std::string job_id;
  uint64_t generation = 0;
  Kind kind = Kind::log;
  int rank = 0;  // progress comes from every rank (each logging step); the rest from rank 0
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  double eval_loss = 0, eval_perplexity = 0;
  msg::CheckpointRef checkpoint;
  std::string level = "info";
  std::string message;
};
using WorkerReportPtr = std::shared_ptr<const WorkerReport>;

struct WorkerDone {
  std::string job_id;
  uint64_t generation = 0;
  int rank = 0;
  Status status;            // ok: trained to the end, or stopped by a guard
  std::string stop_reason;  // a guard's message ("" = ran to the end)
  int64_t step = 0;
  std::string parameters_digest;
};
using WorkerDonePtr = std::shared_ptr<const WorkerDone>;

struct JobPrepared {
  std::string job_id;
  uint64_t generation = 0;
  Result<PreparedJobPtr> prepared{Status(Code::internal, "not prepared")};
};
using JobPreparedPtr = std::shared_ptr<const JobPrepared>;

// Everything one rank's thread needs.
struct WorkerContext {
  PreparedJobPtr job;
  int rank = 0;
  RankLinkPtr link;  // null when world_size is 1
  std::shared_ptr<BatchQueue> queue;
  std::shared_ptr<std::atomic<bool>> stop;  // set by the job manager to stop between micro-batches
  caf::actor trainer;      // told `batch_consumed_atom` after each pop, to hand out a credit
  caf::actor job_manager;  // receives WorkerReportPtr and WorkerDonePtr
  const Directory* directory = nullptr;
  storage::BlobStore* blobs = nullptr;
  std::chrono::milliseconds registry_timeout{120000};
};

// The body of a rank's thread: trains from the job's start or checkpoint to the end (or a guard,
// or stop), reporting as it goes, and sends WorkerDone last. Never throws.
void run_worker(const WorkerContext& context);

// Artifact paths of the data cursors inside a checkpoint version.
std::string cursor_artifact_path(int rank);

}  // namespace cairn::train

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(cairn::train::ShardBatchPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(cairn::train::WorkerReportPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(cairn::train::WorkerDonePtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(cairn::train::JobPreparedPtr)
