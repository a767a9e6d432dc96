// Message catalogue of the `train` domain: training jobs submitted to a node, their status,
// progress and logs, and the node-to-node ops that start the ranks of a job spanning several node
// processes. Times are Unix milliseconds. Wire names are part of protocol version 1: never rename
// them.
//
// A job runs on the node it was submitted to (its "home" node), which owns the job record, the
// registry run and the checkpoints. A job whose config lists other `nodes:` asks each of them to
// run some of its ranks with train.join / train.start; the client never talks to those nodes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/wire.h"

namespace cairn::msg {

// ---- ops (client) ----
inline constexpr std::string_view kTrainSubmit = "train.submit";
inline constexpr std::string_view kTrainStatus = "train.status";
inline constexpr std::string_view kTrainList = "train.list";
inline constexpr std::string_view kTrainCancel = "train.cancel";
inline constexpr std::string_view kTrainLogs = "train.logs";    // stream of TrainLogEvent
inline constexpr std::string_view kTrainWatch = "train.watch";  // stream of JobStatus
// ---- ops (node to node, admin) ----
inline constexpr std::string_view kTrainJoin = "train.join";    // prepare ranks, bind the ring
inline constexpr std::string_view kTrainStart = "train.start";  // connect the ring and train; stream
inline constexpr std::string_view kTrainAbort = "train.abort";  // stop the ranks of a job here

// Job states. queued: accepted, waiting for a slot (train.max_jobs) or for its workers to start;
// running; restarting: a worker failed and the job resumes from its last checkpoint; the rest are
// final. stopped: a guard (loss watchdog, early stopping) ended it; `reason` says which.
inline constexpr std::string_view kJobQueued = "queued";
inline constexpr std::string_view kJobRunning = "running";
inline constexpr std::string_view kJobRestarting = "restarting";
inline constexpr std::string_view kJobSucceeded = "succeeded";
inline constexpr std::string_view kJobFailed = "failed";
inline constexpr std::string_view kJobCancelled = "cancelled";
inline constexpr std::string_view kJobStopped = "stopped";

// True for the states a job never leaves.
inline bool job_state_is_final(std::string_view state) {
  return state == kJobSucceeded || state == kJobFailed || state == kJobCancelled || state == kJobStopped;
}

// ---- entities ----

// A registry model version written by the job (a checkpoint or the final model).
struct CheckpointRef {
  std::string model;    // registered model name
  std::string version;  // its version number
  int64_t step = 0;     // the optimizer step it holds
  template <class V>
  void fields(V& v) {
    v("model", model);
    v("version", version);
    v.optional("step", step);
  }
};

struct WorkerStatus {
  int32_t rank = 0;
  std::string node;   // the node's name (its `node.name` setting)
  std::string state;  // starting | running | restarting | done | failed | stopped
  int64_t step = 0;   // optimizer steps the rank has done, as of its last logging step
  template <class V>
  void fields(V& v) {
    v("rank", rank);
    v("node", node);
    v("state", state);
    v.optional("step", step);
  }
};

// Everything `train.status` knows about a job. Numbers the job has not produced yet are 0
// (eval_loss: 0 until the first evaluation; eta_s: 0 when unknown).
struct JobStatus {
  std::string job_id;
  std::string name;     // the output model name, else the config's file name
  std::string state;    // kJob* above
  std::string reason;   // why the job is in its state: an error, a guard's message, "cancelled by ..."
  int64_t step = 0;         // optimizer steps done
  int64_t total_steps = 0;  // max_steps, or the steps that num_epochs takes
  double epoch = 0;         // fractional epoch of `step`
  double loss = 0;          // the last logged training loss
  double eval_loss = 0;     // the last evaluation's loss
  double lr = 0;            // the learning rate of the last step
  double tokens_per_s = 0;  // training tokens per second over the last logging interval (all ranks)
  double eta_s = 0;         // seconds to total_steps at the current speed
  int64_t started_ms = 0;   // when the job was submitted
  int64_t updated_ms = 0;   // when this status last changed
  std::string run_id;         // the registry run that holds the job's params and metrics
  std::string experiment_id;  // the run's experiment
  CheckpointRef last_checkpoint;  // empty model until the first checkpoint
  std::vector<WorkerStatus> workers;
  uint32_t restarts = 0;  // times the workers were restarted from a checkpoint
  // Trainer::parameters_digest of rank 0 after the last step, once the job is final ("" before,
  // and for a job that failed before its first step). Equal digests: bitwise equal parameters.
  std::string parameters_digest;
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v("name", name);
    v("state", state);
    v.optional("reason", reason);
    v("step", step);
    v("total_steps", total_steps);
    v.optional("epoch", epoch);
    v.optional("loss", loss);
    v.optional("eval_loss", eval_loss);
    v.optional("lr", lr);
    v.optional("tokens_per_s", tokens_per_s);
    v.optional("eta_s", eta_s);
    v.optional("started_ms", started_ms);
    v.optional("updated_ms", updated_ms);
    v.optional("run_id", run_id);
    v.optional("experiment_id", experiment_id);
    v.optional("last_checkpoint", last_checkpoint);
    v.optional("workers", workers);
    v.optional("restarts", restarts);
    v.optional("parameters_digest", parameters_digest);
  }
};

// One entry of a job's log (train.logs). `message` is always a complete human-readable line, so a
// client may print it and ignore the rest. kind:
//   log        a line from the job (config warnings, resolution of the base model, restarts, ...)
//   progress   a logging step: metrics has loss, lr, grad_norm, tokens_per_s
//   eval       an evaluation: metrics has eval_loss, eval_perplexity
//   checkpoint a checkpoint was registered: message names model/version
//   state      the job changed state: message names the new state and reason
struct TrainLogEvent {
  uint64_t seq = 0;  // 1, 2, ... per job, in order
  int64_t time_ms = 0;
  std::string kind;
  std::string level = "info";  // info | warn | error
  int64_t step = 0;
  std::string message;
  std::map<std::string, double> metrics;
  template <class V>
  void fields(V& v) {
    v("seq", seq);
    v("time_ms", time_ms);
    v("kind", kind);
    v.optional("level", level);
    v("step", step);
    v("message", message);
    v.optional("metrics", metrics);
  }
};

// ---- requests and replies ----

// The job config is sent as text: the node parses and validates it (model/train_config.h) and
// answers invalid_argument naming the key and the value before any compute. Unknown keys are
// accepted and named in `warnings`.
struct TrainSubmitRequest {
  std::string config_yaml;
  std::string config_name;  // the file name the YAML came from, used in error messages ("job.yaml")
  // "key=value" pairs applied on top of the YAML before validation; the value is read as YAML
  // ("learning_rate=1e-4", "max_steps=20"). Keys name top-level config keys.
  std::vector<std::string> overrides;
  template <class V>
  void fields(V& v) {
    v("config_yaml", config_yaml);
    v.optional("config_name", config_name);
    v.optional("overrides", overrides);
  }
};
struct TrainSubmitReply {
  std::string job_id;
  std::string run_id;
  std::vector<std::string> warnings;  // e.g. "job.yaml: unknown key \"lora_rr\" (ignored)"
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v("run_id", run_id);
    v.optional("warnings", warnings);
  }
};

// train.status and train.cancel take a job id and answer the JobStatus (for cancel: as it is once
// the workers have been told to stop; the state becomes `cancelled` when they have).
struct TrainJobRequest {
  std::string job_id;
  template <class V>
  void fields(V& v) { v("job_id", job_id); }
};

struct TrainListRequest {
  std::string state;  // only jobs in this state; "" = all; "active" = every non-final state
  template <class V>
  void fields(V& v) { v.optional("state", state); }
};
struct TrainListReply {
  std::vector<JobStatus> jobs;  // newest first
  template <class V>
  void fields(V& v) { v("jobs", jobs); }
};

// Streams the job's log as `more` replies of TrainLogEvent: every kept event with step >=
// since_step, then (follow) every new one until the job reaches a final state. The final reply is
// the job's JobStatus. Without follow the final reply comes at once after the kept events. The
// node keeps the last train.log_history events of each job.
struct TrainLogsRequest {
  std::string job_id;
  bool follow = false;
  int64_t since_step = 0;
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v.optional("follow", follow);
    v.optional("since_step", since_step);
  }
};

// train.watch {job_id}: a `more` reply of JobStatus now and on every logging step, evaluation,
// checkpoint and state change; the final reply is the JobStatus in its final state.

// ---- node to node ----
// The home node of a job that lists other nodes sends each of them train.join with the whole
// config and the ranks that node runs; the node resolves the job locally (datasets at the same
// path; a registry base model and the checkpoint to resume from fetched from `home`'s registry
// with registry.get_version and registry.download_artifact, using its train.peer_token), binds a ring
// endpoint and answers its address. When every node has answered, the home node sends each
// train.start with every rank's address; the node connects the ring and trains, streaming
// WorkerEvents, and answers TrainStartReply when its ranks finish. train.abort (or cancelling the
// train.start call) stops them. Every op carries the job secret the home node drew (a new one per
// generation); a node refuses a job id it knows with another secret. After a failure on any node
// the home node aborts the ranks everywhere and joins the nodes again with `resume_from` set to the
// job's last checkpoint: a new generation, as a restart on one node.

struct TrainJoinRequest {
  std::string job_id;
  std::string secret;       // random per job; the ring handshake checks it too
  std::string config_yaml;  // as submitted, overrides applied
  std::string config_name;
  std::string home;         // "host:port" of the home node's protocol listener
  std::string run_id;       // the home node's run, for log lines
  std::vector<int32_t> ranks;  // the ranks this node runs
  int32_t world_size = 0;
  // A registry base_model as the home node resolved it, "NAME/VERSION" ("" = not a registry
  // model): every node loads this exact version, fetched from the home node's registry (blobs
  // this node already holds are not transferred).
  std::string base_model;
  // The checkpoint in the home node's registry the ranks resume from (model "" = the start).
  CheckpointRef resume_from;
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v("secret", secret);
    v("config_yaml", config_yaml);
    v.optional("config_name", config_name);
    v("home", home);
    v.optional("run_id", run_id);
    v("ranks", ranks);
    v("world_size", world_size);
    v.optional("base_model", base_model);
    v.optional("resume_from", resume_from);
  }
};
struct TrainJoinReply {
  std::string address;  // "host:port" of this node's ring endpoint for the job's first local rank
  std::string node;     // this node's name
  std::vector<std::string> addresses;  // the ring endpoint of each of `ranks`, in their order
  template <class V>
  void fields(V& v) {
    v("address", address);
    v.optional("node", node);
    v.optional("addresses", addresses);
  }
};

struct TrainStartRequest {
  std::string job_id;
  std::string secret;
  std::vector<std::string> addresses;  // ring endpoint of every rank, indexed by rank
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v("secret", secret);
    v("addresses", addresses);
  }
};
// A `more` reply of train.start: when a rank starts (state running), on each of its logging steps
// (running, with the rank's step and its progress line) and when it ends (done, failed, stopped).
struct WorkerEvent {
  int32_t rank = 0;
  std::string state;  // WorkerStatus::state
  int64_t step = 0;
  std::string message;
  template <class V>
  void fields(V& v) {
    v("rank", rank);
    v("state", state);
    v("step", step);
    v.optional("message", message);
  }
};
// The final reply of train.start: the ranks finished. An error reply means they failed.
struct TrainStartReply {
  int64_t step = 0;
  std::string parameters_digest;  // of the first local rank's parameters after the last step
  template <class V>
  void fields(V& v) {
    v("step", step);
    v.optional("parameters_digest", parameters_digest);
  }
};

struct TrainAbortRequest {
  std::string job_id;
  std::string secret;
  std::string reason;
  template <class V>
  void fields(V& v) {
    v("job_id", job_id);
    v("secret", secret);
    v.optional("reason", reason);
  }
};

}  // namespace cairn::msg
