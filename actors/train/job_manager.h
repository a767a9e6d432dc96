// The training role ("train"): the job manager actor serves the train.* ops of
// runtime/messages/train.h, keeps every job in the node's JobStore, and runs each job as a set of
// actors it spawns and supervises (actors/train/job_actors.h):
//   one data-shard actor per worker: owns its BatchStream shard, serves micro-batches on request;
//   one trainer actor per worker: feeds the worker's thread (which runs the Trainer's blocking
//     compute) from its shard with credits (at most TrainOptions::prefetch_batches requested or
//     queued). The job manager owns the thread, not the actor: a killed actor cannot join it, and
//     the job manager must join every thread before the node's stores go away;
//   one param-sync actor per job: owns the job's Collective links, aborts them when a worker dies.
//
// Contracts:
// - Every blocking thing a job does (loading the tokenizer and datasets, resolving a registry base
//   model, exporting a checkpoint to resume from, training, saving checkpoints) runs on threads the
//   job manager owns, never on the actor system's scheduler threads. The job manager joins them;
//   at its exit (node shutdown) it stops them first (between micro-batches) and joins them, so no
//   thread outlives the stores it uses.
// - A job's workers start from the job's last checkpoint (a registry model version holding the
//   trainer state, the optimizer, the RNG state and each shard's data cursor), or from the start:
//   when a worker fails (error, crash, kill through node.kill_actor) the job manager stops the
//   others, aborts the collective and restarts every worker from the last checkpoint, at most
//   TrainOptions::max_restarts times per job. For a job spanning nodes the home node does this for
//   every node: a rank failing anywhere (or another node's process dying) stops the ranks on all
//   nodes (train.abort), and the next generation joins them again from the last checkpoint,
//   waiting up to TrainOptions::peer_timeout for a node to come back. A node that starts on a data dir with jobs that
//   were not final resumes them the same way. Steps after the checkpoint are recomputed from the
//   checkpoint's state, so the final parameters equal an uninterrupted run's.
// - Metrics go to the job's registry run as fire-and-forget registry.log_batch calls (one per
//   logging step); training never waits for them. Checkpoints are registered with
//   registry.create_version by rank 0's thread, which waits for the registration (it is the
//   point the job can resume from).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/directory.h"

namespace cairn {

namespace storage {
class BlobStore;
class JobStore;
}  // namespace storage

struct TrainOptions {
  // Jobs training at once on this node; later submissions wait as `queued`. Default 1.
  uint32_t max_jobs = 1;
  // Times a job's workers are restarted from the last checkpoint before the job fails. Default 3.
  uint32_t max_restarts = 3;
  // Micro-batches a trainer holds ahead of its compute (requested from its shard or queued). More
  // hides the shard's latency; each one holds micro_batch_size rows. Default 2.
  uint32_t prefetch_batches = 2;
  // train.logs events kept per job. Default 1000.
  uint32_t log_history = 1000;
  // How long a thread waits for the registry actor to answer (checkpoint registration, base
  // model lookup). Default 120 s.
  std::chrono::milliseconds registry_timeout{120000};
  // Home of a job spanning nodes: how long train.join keeps trying to reach another node that
  // is down, restarting or still stopping the job's previous ranks (retrying with backoff) before
  // the job fails, naming the node. Applies to every generation (the first one and each restart).
  // Also, on a node that joined another node's job: how long the joined ranks wait for train.start
  // after answering train.join before they are dropped (a late train.start is refused). Default 60 s.
  std::chrono::milliseconds peer_timeout{60000};
};

// What the job manager works on. Everything pointed to is owned by the node and outlives the
// actor system.
struct TrainContext {
  storage::JobStore* jobs = nullptr;
  storage::BlobStore* blobs = nullptr;   // checkpoints are stored here (the registry's store)
  Directory* directory = nullptr;  // to reach the registry actor, and to name job actors
  // Work files of jobs (checkpoints being written, resumed checkpoints, registry base models) go
  // under <work_dir>/; created as needed.
  std::string work_dir;
  std::string node_name;  // for WorkerStatus::node
  // This node's protocol address ("host:port", as bound), read when a job lists `nodes:`: the job
  // runs the ranks placed on the entry equal to it. Unset or "": jobs with nodes are refused.
  std::function<std::string()> self_address;
  // The token this node presents to the other nodes of a job spanning nodes (the setting
  // train.peer_token, else the node's own admin token): as home, for train.join / start / abort,
  // which need the admin role there; as a guest, to fetch registry versions from the home node.
  std::string peer_token;
  TrainOptions options;
};

// The name a job's actor is registered under in the Directory while it runs, so node.kill_actor
// can name it: "train/job-3/trainer-0", "train/job-3/shard-1", "train/job-3/param-sync".
std::string job_actor_name(const std::string& job_id, const std::string& kind, int rank = -1);

// Spawns the job manager over `context` (jobs, blobs and directory set). It resumes the jobs the
// JobStore holds that were not final.
caf::actor spawn_job_manager(caf::actor_system& system, const TrainContext& context);

}  // namespace cairn
