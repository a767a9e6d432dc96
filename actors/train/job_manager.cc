#include "actors/train/job_manager.h"

#include <algorithm>
#include <deque>
#include <filesystem>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/local_call.h"
#include "actors/messages.h"
#include "actors/train/job_actors.h"
#include "actors/train/worker.h"
#include "cairn/client.h"
#include "cluster/auth.h"
#include "runtime/messages/node.h"
#include "runtime/messages/registry.h"
#include "runtime/messages/train.h"
#include "storage/job_store.h"

namespace cairn {
namespace train {
namespace {

// Runs `run` on the job manager's thread: how replies that arrive on other actors' threads (the
// registry's) continue the job manager's work.
struct Continuation {
  std::function<void()> run;
};

}  // namespace
}  // namespace train
}  // namespace cairn

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(cairn::train::Continuation)

namespace cairn {

std::string job_actor_name(const std::string& job_id, const std::string& kind, int rank) {
  return "train/" + job_id + "/" + kind + (rank >= 0 ? "-" + std::to_string(rank) : "");
}

namespace train {
namespace {

namespace fs = std::filesystem;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The other nodes of a job spanning nodes, as its home node sees them. Filled by the coordinator
// thread, then used only on the job manager's thread (after the thread posted its result).
struct Peers {
  std::vector<std::string> nodes;                 // their protocol addresses, in placement order
  std::vector<std::vector<int>> ranks;            // the ranks each runs
  std::vector<std::unique_ptr<Client>> clients;   // one per node that was reached
  std::vector<std::shared_ptr<Subscription>> starts;  // train.start of each node, once sent
};

// Rank r of a job over `nodes` runs on nodes[r % nodes.size()]; every rank when `nodes` is empty.
std::vector<int> ranks_on(const std::vector<std::string>& nodes, int world_size, const std::string& address) {
  std::vector<int> ranks;
  for (int rank = 0; rank < world_size; ++rank) {
    if (nodes.empty() || nodes[static_cast<size_t>(rank) % nodes.size()] == address) ranks.push_back(rank);
  }
  return ranks;
}

// One run of a job's workers. A restart makes a new one.
struct Generation {
  uint64_t number = 0;
  PreparedJobPtr prepared;
  std::thread preparer;
  // The ranks run on this node, ascending; shards, trainers, queues, links and workers are in
  // their order.
  std::vector<int> ranks;
  std::vector<std::shared_ptr<RingLink>> rings;  // a job spanning nodes: this node's ring links
  std::shared_ptr<Peers> peers;                  // home of a job spanning nodes
  std::thread coordinator;                       // home: joins the other nodes (train.join)
  bool coordinating = false;
  bool started = false;  // the workers were started
  caf::actor param_sync;
  std::vector<caf::actor> shards;
  std::vector<caf::actor> trainers;
  std::vector<std::shared_ptr<BatchQueue>> queues;
  std::vector<RankLinkPtr> links;
  std::shared_ptr<std::atomic<bool>> stop = std::make_shared<std::atomic<bool>>(false);
  std::vector<std::thread> workers;
  size_t workers_running = 0;
  bool preparing = true;
  bool ending = false;  // stop_generation ran: actors told to stop, threads told to stop
  Status failure;       // the first failure of a worker or actor (ok: none)
  // The failure is not retried from a checkpoint: the job's other nodes could not be joined
  // within train.peer_timeout, or refused (the coordinator already retried what can be).
  bool fatal = false;
  std::string stop_reason;         // rank 0's guard message
  std::string parameters_digest;   // rank 0's, at the end
  // For the destructor: where the generation's actors are registered.
  Directory* directory = nullptr;
  std::string job_id;

  Generation() = default;
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;
  // Normally everything is stopped and joined before; this covers a job manager that is killed
  // (its exit handler does not run then): threads stop between micro-batches and are joined.
  ~Generation() {
    stop->store(true);
    for (auto& queue : queues) queue->close(Status(Code::cancelled, "the job manager stopped"));
    for (auto& link : links) link->abort();
    for (size_t i = 0; i < trainers.size(); ++i) {
      stop_actor(trainers[i], "trainer", ranks[i]);
      stop_actor(shards[i], "shard", ranks[i]);
    }
    stop_actor(param_sync, "param-sync", -1);
    if (preparer.joinable()) preparer.join();
    if (coordinator.joinable()) coordinator.join();
    for (auto& thread : workers) {
      if (thread.joinable()) thread.join();
    }
  }

 private:
  void stop_actor(caf::actor& actor, const std::string& kind, int rank) {
    if (!actor) return;
    if (directory != nullptr) directory->erase(job_actor_name(job_id, kind, rank));
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
    actor = nullptr;
  }
};

struct Job {
  storage::JobRecord record;
  std::deque<msg::TrainLogEvent> log;
  uint64_t next_seq = 1;
  std::vector<CallPtr> watchers;
  std::vector<CallPtr> followers;
  std::shared_ptr<const TokenizedDataset> dataset;  // kept across generations
  std::unique_ptr<Generation> generation;
  bool cancelling = false;
  std::string cancel_reason;
  int64_t steps_per_epoch = 0;
  std::chrono::steady_clock::time_point last_progress_time;
  int64_t last_progress_step = -1;
  // A job spanning nodes: the secret of its current generation (train.join / start / abort and
  // the ring handshake check it).
  std::string secret;
  // Guest: ranks of another node's job (train.join), never stored nor listed; the calls are
  // answered when the ranks are prepared (join) and when they end (start).
  bool guest = false;
  std::vector<int> guest_ranks;
  std::string home;               // the home node's protocol address
  std::string pinned_base_model;  // TrainJoinRequest::base_model
  CallPtr join_call;
  CallPtr start_call;
  // Guest: why its ranks were dropped before train.start came (expire_join); a late train.start
  // is refused with it. "" = not expired.
  std::string expired;
};

struct JobManagerState {
  TrainContext context;
  std::map<std::string, Job> jobs;
  std::vector<std::string> order;   // job ids, oldest first
  std::deque<std::string> waiting;  // jobs waiting for a slot, oldest first
  size_t active = 0;                // jobs holding a slot
  uint64_t next_generation = 1;
  static inline const char* name = "train";
};

using Self = caf::stateful_actor<JobManagerState>*;

storage::JobStore& store(Self self) { return *self->state.context.jobs; }
const TrainOptions& options(Self self) { return self->state.context.options; }

std::string who(const CallPtr& call) {
  std::string out(role_name(call->role()));
  if (!call->client_name().empty()) out += ":" + call->client_name();
  return out;
}

Job* find_job(Self self, const std::string& job_id) {
  auto it = self->state.jobs.find(job_id);
  return it == self->state.jobs.end() ? nullptr : &it->second;
}

Status unknown_job(const std::string& op, const std::string& job_id) {
  return Status(Code::not_found, op + ": no training job \"" + job_id + "\"");
}

// ---- status, logs, watchers ----

void persist(Self self, Job& job) {
  if (job.guest) return;
  Status written = store(self).put(job.record);
  if (!written.ok()) spdlog::error("train {}: job record not saved: {}", job.record.status.job_id, written.to_string());
}

void notify_watchers(Job& job) {
  auto& watchers = job.watchers;
  watchers.erase(std::remove_if(watchers.begin(), watchers.end(), [](const CallPtr& c) { return c->finished(); }),
                 watchers.end());
  if (watchers.empty()) return;
  std::string encoded = wire::encode(job.record.status);
  for (auto& call : watchers) call->more_encoded(encoded);
}

void append_log(Self self, Job& job, const std::string& kind, const std::string& level, int64_t step,
                const std::string& message, std::map<std::string, double> metrics = {}) {
  msg::TrainLogEvent event;
  event.seq = job.next_seq++;
  event.time_ms = unix_ms();
  event.kind = kind;
  event.level = level;
  event.step = step;
  event.message = message;
  event.metrics = std::move(metrics);
  if (level == "error") {
    spdlog::error("train {}: {}", job.record.status.job_id, message);
  } else if (level == "warn") {
    spdlog::warn("train {}: {}", job.record.status.job_id, message);
  } else if (kind != "progress") {
    spdlog::info("train {}: {}", job.record.status.job_id, message);
  }
  auto& followers = job.followers;
  followers.erase(std::remove_if(followers.begin(), followers.end(), [](const CallPtr& c) { return c->finished(); }),
                  followers.end());
  if (!followers.empty()) {
    std::string encoded = wire::encode(event);
    for (auto& call : followers) call->more_encoded(encoded);
  }
  job.log.push_back(std::move(event));
  while (job.log.size() > options(self).log_history) job.log.pop_front();
}

void set_state(Self self, Job& job, std::string_view state, const std::string& reason) {
  auto& status = job.record.status;
  status.state = std::string(state);
  status.reason = reason;
  status.updated_ms = unix_ms();
  persist(self, job);
  append_log(self, job, "state", msg::job_state_is_final(state) && state != msg::kJobSucceeded ? "warn" : "info",
             status.step, "job " + std::string(state) + (reason.empty() ? "" : ": " + reason));
  notify_watchers(job);
}

void set_workers(Job& job, int world_size, const std::string& node, const std::string& state) {
  auto& workers = job.record.status.workers;
  workers.clear();
  for (int rank = 0; rank < world_size; ++rank) workers.push_back({rank, node, state, job.record.status.step});
}

// Guest: a WorkerEvent for the home node on the train.start stream (none before it started).
void tell_home(Job& job, int rank, const std::string& state, int64_t step, const std::string& message) {
  if (!job.guest || !job.start_call || job.start_call->finished()) return;
  msg::WorkerEvent event;
  event.rank = rank;
  event.state = state;
  event.step = step;
  event.message = message;
  job.start_call->more(event);
}

// ---- registry calls ----

// Calls the registry; `then` runs on the job manager's thread with the reply body or error.
void registry_call(Self self, std::string_view op, std::string body, std::function<void(Result<std::string>)> then) {
  LocalCallHandlers handlers;
  handlers.on_done = [handle = caf::actor_cast<caf::actor>(self), then = std::move(then)](Result<std::string> reply) {
    caf::anon_send(handle, Continuation{[then, reply] { then(reply); }});
  };
  send_local_call(*self->state.context.directory, "registry", std::string(op), std::move(body), std::move(handlers));
}

// Fire and forget; failures are logged.
void registry_send(Self self, std::string_view op, std::string body, const std::string& job_id) {
  LocalCallHandlers handlers;
  handlers.on_done = [op = std::string(op), job_id](Result<std::string> reply) {
    if (!reply.ok()) spdlog::warn("train {}: {} failed: {}", job_id, op, reply.status().to_string());
  };
  send_local_call(*self->state.context.directory, "registry", std::string(op), std::move(body), std::move(handlers));
}

template <class Reply>
Result<Reply> decode_reply(const Result<std::string>& body) {
  if (!body.ok()) return body.status();
  return wire::decode_bytes<Reply>(*body);
}

// The config's canonical JSON flattened to MLflow params ("lora_r" = "8", "datasets.0.path" = ...).
std::vector<msg::Param> config_params(const TrainJobConfig& config) {
  std::vector<msg::Param> params;
  std::function<void(const std::string&, const nlohmann::json&)> walk = [&](const std::string& key,
                                                                             const nlohmann::json& value) {
    if (value.is_object()) {
      for (auto it = value.begin(); it != value.end(); ++it) walk(key.empty() ? it.key() : key + "." + it.key(), it.value());
    } else if (value.is_array() && !value.empty() && (value[0].is_object() || value[0].is_array())) {
      for (size_t i = 0; i < value.size(); ++i) walk(key + "." + std::to_string(i), value[i]);
    } else {
      std::string text = value.is_string() ? value.get<std::string>() : value.dump();
      if (text.size() > 6000) text.resize(6000);
      params.push_back({key, text});
    }
  };
  walk("", nlohmann::json::parse(to_canonical_json(config), nullptr, false));
  return params;
}

// ---- generations ----

void start_next(Self self);
void finalize(Self self, Job& job, std::string_view state, const std::string& reason);

void register_actor(Self self, const std::string& name, const caf::actor& actor) {
  self->state.context.directory->set(name, actor);
}

// Home of a job spanning nodes: tells the other nodes to stop the job's ranks (train.abort). Without
// `wait` it does not wait for the answers: the generation (and its clients) lives on until each
// node's train.start has ended. With `wait` (the generation ends at once after this: joined nodes
// that were never started) it waits up to a few seconds per node. A node that is down answers
// nothing; its ranks also fail on their own once this node's ring sockets close. Not while the
// coordinator thread still owns the clients.
void abort_peers(Generation& gen, const Job& job, const Status& why, bool wait = false) {
  if (!gen.peers || gen.coordinating || why.ok()) return;
  msg::TrainAbortRequest abort;
  abort.job_id = job.record.status.job_id;
  abort.secret = job.secret;
  abort.reason = why.ok() ? "the job is stopping" : why.to_string();
  const std::string body = wire::encode(abort);
  for (size_t i = 0; i < gen.peers->clients.size(); ++i) {
    if (wait) {
      auto sent = gen.peers->clients[i]->call(msg::kTrainAbort, body, std::chrono::seconds(5));
      if (!sent.ok()) {
        spdlog::warn("train {}: train.abort on node {}: {}", abort.job_id, gen.peers->nodes[i], sent.status().to_string());
      }
      continue;
    }
    gen.peers->clients[i]->call_async(
        msg::kTrainAbort, body,
        [job_id = abort.job_id, node = gen.peers->nodes[i]](Result<std::string> sent) {
          if (!sent.ok()) spdlog::warn("train {}: train.abort on node {}: {}", job_id, node, sent.status().to_string());
        },
        std::chrono::seconds(5));
  }
}

// Tells everything of the generation to stop: threads between micro-batches, collectives at once.
// The generation ends when every thread has reported (on_worker_done).
void stop_generation(Self self, Job& job, const Status& why) {
  Generation& gen = *job.generation;
  if (gen.failure.ok() && !why.ok()) gen.failure = why;
  if (gen.ending) return;
  gen.ending = true;
  gen.stop->store(true);
  for (auto& queue : gen.queues) queue->close(why.ok() ? Status(Code::cancelled, "the job is stopping") : why);
  for (auto& link : gen.links) link->abort();
  auto* directory = self->state.context.directory;
  const std::string& job_id = job.record.status.job_id;
  auto stop_actor = [&](caf::actor& actor, const std::string& name) {
    if (!actor) return;
    directory->erase(name);
    self->demonitor(actor);
    self->send_exit(actor, caf::exit_reason::user_shutdown);
    actor = nullptr;
  };
  for (size_t i = 0; i < gen.trainers.size(); ++i) {
    stop_actor(gen.trainers[i], job_actor_name(job_id, "trainer", gen.ranks[i]));
    stop_actor(gen.shards[i], job_actor_name(job_id, "shard", gen.ranks[i]));
  }
  stop_actor(gen.param_sync, job_actor_name(job_id, "param-sync"));
  abort_peers(gen, job, why);
}

// After the generation's threads are all done: the job ends or restarts.
void end_generation(Self self, Job& job) {
  if (!job.generation->ending) stop_generation(self, job, Status());
  std::unique_ptr<Generation> gen = std::move(job.generation);
  if (gen->preparer.joinable()) gen->preparer.join();
  for (auto& thread : gen->workers) thread.join();  // each has sent WorkerDone: about to return
  std::error_code ec;
  if (gen->prepared) fs::remove_all(gen->prepared->work_dir, ec);
  auto& status = job.record.status;
  if (job.cancelling) return finalize(self, job, msg::kJobCancelled, job.cancel_reason);
  if (job.guest && job.join_call && !gen->failure.ok()) {
    // The ranks could not be prepared here: the home node sees why, with its code (it retries
    // only what may pass later).
    job.join_call->fail(gen->failure.with_context("train.join on node " + self->state.context.node_name));
    job.join_call = nullptr;
  }
  if (!gen->failure.ok()) {
    // A job that cannot be prepared fails at once, as does one whose other nodes could not be
    // joined; a guest's ranks are restarted by their home node (a new train.join).
    const bool retryable = gen->prepared != nullptr && !job.guest && !gen->fatal;
    if (!retryable || status.restarts >= options(self).max_restarts) {
      std::string why = gen->failure.to_string();
      if (retryable) why += " (after " + std::to_string(status.restarts) + " restarts; train.max_restarts)";
      return finalize(self, job, msg::kJobFailed, why);
    }
    ++status.restarts;
    for (auto& worker : status.workers) worker.state = "restarting";
    set_state(self, job, msg::kJobRestarting,
              gen->failure.to_string() + "; restarting from " +
                  (status.last_checkpoint.model.empty()
                       ? std::string("the start")
                       : "checkpoint " + status.last_checkpoint.model + "/" + status.last_checkpoint.version));
    self->state.waiting.push_front(status.job_id);  // keeps its slot: it goes first
    --self->state.active;
    return start_next(self);
  }
  status.parameters_digest = gen->parameters_digest;
  if (!gen->stop_reason.empty()) return finalize(self, job, msg::kJobStopped, gen->stop_reason);
  finalize(self, job, msg::kJobSucceeded, "");
}

void maybe_end_generation(Self self, Job& job) {
  Generation& gen = *job.generation;
  if (gen.preparing || gen.coordinating || gen.workers_running > 0) return;
  end_generation(self, job);
}

// Guest: the ranks joined in generation `number` got no train.start within train.peer_timeout
// (the home node died after joining this node, or its start never came). They are dropped: their
// actors stop, their ring listeners close, their work files go (registry models stay). A later
// train.start of that generation is refused; a fresh train.join starts over.
void expire_join(Self self, const std::string& job_id, uint64_t number) {
  Job* job = find_job(self, job_id);
  if (job == nullptr || !job->guest || !job->generation || job->generation->number != number) return;
  Generation& gen = *job->generation;
  if (gen.started || gen.ending || job->cancelling) return;
  job->expired = "no train.start from the home node " + job->home + " within train.peer_timeout_ms (" +
                 std::to_string(options(self).peer_timeout.count()) + " ms)";
  stop_generation(self, *job, Status(Code::timeout, "the join of job " + job_id + " expired: " + job->expired));
  maybe_end_generation(self, *job);
}

void start_generation(Self self, Job& job) {
  auto gen = std::make_unique<Generation>();
  gen->number = self->state.next_generation++;
  auto& status = job.record.status;
  gen->directory = self->state.context.directory;
  gen->job_id = status.job_id;
  PrepareRequest request;
  request.job_id = status.job_id;
  request.generation = gen->number;
  request.config_yaml = job.record.config_yaml;
  request.config_name = job.record.config_name;
  request.run_id = status.run_id;
  request.resume_from = status.last_checkpoint;
  request.dataset = job.dataset;
  request.work_dir = self->state.context.work_dir + "/jobs/" + status.job_id;
  request.models_dir = self->state.context.work_dir + "/models";
  if (job.guest) {
    request.home = job.home;
    request.peer_token = self->state.context.peer_token;
    request.pinned_base_model = job.pinned_base_model;
  }
  const Directory* directory = self->state.context.directory;
  storage::BlobStore* blobs = self->state.context.blobs;
  const auto timeout = options(self).registry_timeout;
  gen->preparer = std::thread([request, directory, blobs, timeout, handle = caf::actor_cast<caf::actor>(self)] {
    auto prepared = std::make_shared<JobPrepared>();
    prepared->job_id = request.job_id;
    prepared->generation = request.generation;
    try {
      prepared->prepared = prepare_job(request, *directory, *blobs, timeout);
    } catch (const std::exception& e) {
      prepared->prepared = Status(Code::internal, std::string("preparing the job threw: ") + e.what());
    }
    caf::anon_send(handle, JobPreparedPtr(std::move(prepared)));
  });
  job.generation = std::move(gen);
  if (status.state != msg::kJobRestarting) set_state(self, job, msg::kJobRunning, "");
  append_log(self, job, "log", "info", status.step,
             status.last_checkpoint.model.empty()
                 ? "preparing: tokenizer, datasets, base model"
                 : "preparing to resume from " + status.last_checkpoint.model + "/" + status.last_checkpoint.version);
}

void spawn_job_actors(Self self, Job& job);
void start_workers(Self self, Job& job);
void coordinate(Self self, Job& job, const std::string& self_address);

void on_prepared(Self self, const JobPrepared& message) {
  Job* job = find_job(self, message.job_id);
  if (job == nullptr || !job->generation || job->generation->number != message.generation) return;
  Generation& gen = *job->generation;
  gen.preparing = false;
  if (gen.preparer.joinable()) gen.preparer.join();
  if (!message.prepared.ok()) {
    gen.failure = message.prepared.status();
    return end_generation(self, *job);
  }
  gen.prepared = *message.prepared;
  if (gen.ending || job->cancelling) return end_generation(self, *job);
  const PreparedJob& prepared = *gen.prepared;
  job->dataset = prepared.dataset;
  auto& status = job->record.status;
  status.total_steps = prepared.schedule.total_steps;
  job->steps_per_epoch = prepared.schedule.steps_per_epoch;
  status.step = prepared.resume_step;
  job->last_progress_step = -1;

  const int world = prepared.world_size;
  const auto& nodes = prepared.config.nodes;
  const std::string self_address =
      nodes.empty() || !self->state.context.self_address ? std::string() : self->state.context.self_address();
  gen.ranks = job->guest ? job->guest_ranks : ranks_on(nodes, world, self_address);
  const bool spans = job->guest || static_cast<int>(gen.ranks.size()) < world;
  if (!spans) {
    gen.links = world > 1 ? in_process_links(world) : std::vector<RankLinkPtr>();
    spawn_job_actors(self, *job);
    return start_workers(self, *job);
  }

  // A job spanning nodes: one ring link per local rank, bound now so the home node can learn the
  // addresses before any rank dials.
  for (int rank : gen.ranks) {
    if (rank < 0 || rank >= world) {
      gen.failure = Status(Code::invalid_argument, "rank " + std::to_string(rank) + " is not in a job of " +
                                                       std::to_string(world) + " workers");
      return end_generation(self, *job);
    }
  }
  // The ring listens on the host this node's protocol listener is bound to.
  HostPort host{"127.0.0.1", 0};
  if (auto bound = parse_host_port(self_address); bound.ok()) host.host = bound->host;
  // A fresh secret per generation: ranks or calls of an earlier generation cannot join this one.
  if (!job->guest) job->secret = generate_token();
  for (int rank : gen.ranks) {
    RingOptions ring;
    ring.rank = rank;
    ring.world_size = world;
    ring.secret = job->secret;
    auto link = RingLink::listen(host, ring);
    if (!link.ok()) {
      gen.failure = link.status().with_context("ring endpoint of rank " + std::to_string(rank));
      return end_generation(self, *job);
    }
    gen.rings.push_back(*link);
    gen.links.push_back(*link);
  }
  spawn_job_actors(self, *job);
  if (job->guest) {
    msg::TrainJoinReply joined;
    joined.node = self->state.context.node_name;
    for (const auto& ring : gen.rings) joined.addresses.push_back(ring->bound().to_string());
    joined.address = joined.addresses.front();
    if (job->join_call) job->join_call->reply(joined);
    job->join_call = nullptr;
    self->delayed_send(self, options(self).peer_timeout,
                       Continuation{[self, job_id = job->record.status.job_id, number = gen.number] {
                         expire_join(self, job_id, number);
                       }});
    return;  // train.start starts the workers
  }
  coordinate(self, *job, self_address);
}

// Spawns the generation's actors for its local ranks: shards, trainers, then param-sync.
void spawn_job_actors(Self self, Job& job) {
  Generation& gen = *job.generation;
  const std::string& job_id = job.record.status.job_id;
  auto& system = self->system();
  for (int rank : gen.ranks) {
    caf::actor shard = spawn_data_shard(system, gen.prepared, rank);
    auto queue = std::make_shared<BatchQueue>();
    caf::actor trainer = spawn_trainer_actor(system, shard, queue, options(self).prefetch_batches);
    self->monitor(shard);
    self->monitor(trainer);
    register_actor(self, job_actor_name(job_id, "shard", rank), shard);
    register_actor(self, job_actor_name(job_id, "trainer", rank), trainer);
    gen.shards.push_back(shard);
    gen.trainers.push_back(trainer);
    gen.queues.push_back(queue);
  }
  gen.param_sync = spawn_param_sync(system, gen.links, gen.trainers);
  self->monitor(gen.param_sync);
  register_actor(self, job_actor_name(job_id, "param-sync"), gen.param_sync);
}

// Starts one thread per local rank.
void start_workers(Self self, Job& job) {
  Generation& gen = *job.generation;
  const PreparedJob& prepared = *gen.prepared;
  const int world = prepared.world_size;
  for (size_t i = 0; i < gen.ranks.size(); ++i) {
    WorkerContext context;
    context.job = gen.prepared;
    context.rank = gen.ranks[i];
    context.link = gen.links.empty() ? nullptr : gen.links[i];
    context.queue = gen.queues[i];
    context.stop = gen.stop;
    context.trainer = gen.trainers[i];
    context.job_manager = caf::actor_cast<caf::actor>(self);
    context.directory = self->state.context.directory;
    context.blobs = self->state.context.blobs;
    context.registry_timeout = options(self).registry_timeout;
    gen.workers.emplace_back([context] { run_worker(context); });
    ++gen.workers_running;
  }
  gen.started = true;
  auto& status = job.record.status;
  set_workers(job, world, self->state.context.node_name, "running");
  for (int rank : gen.ranks) tell_home(job, rank, "running", status.step, "");
  if (gen.peers) {
    for (size_t i = 0; i < gen.peers->nodes.size(); ++i) {
      for (int rank : gen.peers->ranks[i]) status.workers[static_cast<size_t>(rank)].node = gen.peers->nodes[i];
    }
  }
  set_state(self, job, msg::kJobRunning, "");
  append_log(self, job, "log", "info", status.step,
             std::to_string(world) + " worker(s)" +
                 (gen.peers ? " (" + std::to_string(gen.ranks.size()) + " on this node)" : std::string()) + ", " +
                 std::to_string(prepared.schedule.total_steps) + " steps, dataset " + prepared.dataset->digest +
                 ", output model " + prepared.output_model);
}

// A peer's train.start ended (its ranks finished or failed, or the node went away).
void on_peer_done(Self self, const std::string& job_id, uint64_t number, const std::string& node,
                  const Status& ended) {
  Job* job = find_job(self, job_id);
  if (job == nullptr || !job->generation || job->generation->number != number) return;
  Generation& gen = *job->generation;
  --gen.workers_running;
  if (!ended.ok() && !gen.ending) stop_generation(self, *job, ended.with_context("the job's ranks on node " + node));
  maybe_end_generation(self, *job);
}

// A rank on another node started, logged a step or ended: its entry in the job's status changes
// and watchers see it, as for a rank of this node.
void on_peer_event(Self self, const std::string& job_id, uint64_t number, const std::string& node,
                   const msg::WorkerEvent& event) {
  Job* job = find_job(self, job_id);
  if (job == nullptr || !job->generation || job->generation->number != number) return;
  auto& status = job->record.status;
  if (event.rank < 0 || event.rank >= static_cast<int>(status.workers.size())) return;
  auto& worker = status.workers[static_cast<size_t>(event.rank)];
  const bool changed = worker.state != event.state;
  worker.state = event.state;
  worker.node = node;
  worker.step = std::max(worker.step, event.step);
  status.updated_ms = unix_ms();
  if (changed && event.state != "running") {
    append_log(self, *job, "log", event.state == "failed" ? "warn" : "info", event.step,
               "rank " + std::to_string(event.rank) + " on node " + node + " " + event.state +
                   (event.message.empty() ? "" : ": " + event.message));
  }
  notify_watchers(*job);
}

// The coordinator thread is done: every other node joined (their ring addresses are known), or
// one failed. Then the rings get their peers, the other nodes start, and so do the local ranks.
void on_joined(Self self, const std::string& job_id, uint64_t number, const Status& joined,
               const std::vector<std::string>& addresses) {
  Job* job = find_job(self, job_id);
  if (job == nullptr || !job->generation || job->generation->number != number) return;
  Generation& gen = *job->generation;
  if (gen.coordinator.joinable()) gen.coordinator.join();
  if (!joined.ok() || gen.ending || job->cancelling) {
    // A join failed (not retried from a checkpoint: join_node already retried what may pass), or
    // the job stopped meanwhile. stop_generation sends no train.abort while coordinating; the
    // nodes that joined were never started and the generation ends right here, so they are told
    // now and the answers awaited.
    gen.fatal = !joined.ok();
    const Status why = !joined.ok()        ? joined
                       : gen.failure.ok() ? Status(Code::cancelled, job->cancel_reason)
                                          : gen.failure;
    stop_generation(self, *job, why);
    gen.coordinating = false;
    abort_peers(gen, *job, why, /*wait=*/true);
    return end_generation(self, *job);
  }
  gen.coordinating = false;
  std::vector<HostPort> peers;
  for (const auto& address : addresses) {
    auto parsed = parse_host_port(address);
    if (!parsed.ok()) {
      stop_generation(self, *job, parsed.status().with_context("ring address"));
      return end_generation(self, *job);
    }
    peers.push_back(*parsed);
  }
  for (const auto& ring : gen.rings) {
    Status set = ring->set_peers(peers);
    if (!set.ok()) {
      stop_generation(self, *job, set);
      return end_generation(self, *job);
    }
  }
  msg::TrainStartRequest start;
  start.job_id = job_id;
  start.secret = job->secret;
  start.addresses = addresses;
  const std::string body = wire::encode(start);
  auto handle = caf::actor_cast<caf::actor>(self);
  for (size_t i = 0; i < gen.peers->clients.size(); ++i) {
    ++gen.workers_running;
    const std::string node = gen.peers->nodes[i];
    gen.peers->starts.push_back(gen.peers->clients[i]->subscribe(
        msg::kTrainStart, body,
        [self, handle, job_id, number, node](const std::string& item) {
          auto event = wire::decode_bytes<msg::WorkerEvent>(item);
          if (!event.ok()) return;
          caf::anon_send(handle, Continuation{[=] { on_peer_event(self, job_id, number, node, *event); }});
        },
        [self, handle, job_id, number, node](const Status& ended) {
          caf::anon_send(handle, Continuation{[=] { on_peer_done(self, job_id, number, node, ended); }});
        }));
  }
  start_workers(self, *job);
}

// Whether train.join may pass if tried again: the node is down or restarting, or still stopping the
// job's ranks of the previous generation.
bool join_may_pass_later(const Status& status) {
  return status.code() == Code::unavailable || status.code() == Code::timeout ||
         status.code() == Code::shutting_down || status.code() == Code::overloaded;
}

// On the coordinator thread: connects to `node` with the peer token and sends train.join, trying
// again with backoff while the failure may pass (join_may_pass_later) until `timeout` has passed
// or `stop` is set. The connected client is appended to `clients`. Errors name the node; a refused
// token says so.
Result<msg::TrainJoinReply> join_node(const std::string& node, const std::string& token,
                                      const msg::TrainJoinRequest& request, std::chrono::milliseconds timeout,
                                      const std::atomic<bool>& stop, std::vector<std::unique_ptr<Client>>& clients) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto backoff = std::chrono::milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    Status failed;
    ClientOptions client_options;
    client_options.address = node;
    client_options.token = token;
    client_options.reconnect = false;
    client_options.client_name = "cairn-node/train";
    auto client = Client::connect(client_options);
    if (!client.ok()) {
      failed = client.status();
    } else {
      // Preparing loads the tokenizer, the datasets and maybe the base model there: allow it time.
      auto reply = (*client)->call_as<msg::TrainJoinReply>(msg::kTrainJoin, request, std::chrono::minutes(30));
      if (reply.ok()) {
        clients.push_back(std::move(client).value());
        return reply;
      }
      failed = reply.status();
    }
    if (failed.code() == Code::unauthenticated || failed.code() == Code::permission_denied) {
      return Status(failed.code(), "train.join on node " + node + ": the node refused this node's token (set "
                                   "train.peer_token to an admin token of that node): " + failed.message());
    }
    const auto now = std::chrono::steady_clock::now();
    if (!join_may_pass_later(failed) || stop.load() || now + backoff >= deadline) {
      std::string why = "train.join on node " + node + ": " + failed.message();
      if (join_may_pass_later(failed) && !stop.load()) {
        why += " (still failing after " + std::to_string(attempt) + " attempts in train.peer_timeout_ms " +
               std::to_string(timeout.count()) + ")";
      }
      return Status(failed.code(), why);
    }
    spdlog::info("train {}: train.join on node {} failed ({}); trying again", request.job_id, node, failed.message());
    std::this_thread::sleep_for(backoff);  // waiting on another process: nothing to wake us sooner
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

// Home of a job spanning nodes: a thread asks each other node to join (train.join), then posts the
// ring address of every rank to on_joined.
void coordinate(Self self, Job& job, const std::string& self_address) {
  Generation& gen = *job.generation;
  const PreparedJob& prepared = *gen.prepared;
  const auto& nodes = prepared.config.nodes;
  const int world = prepared.world_size;
  auto peers = std::make_shared<Peers>();
  for (int rank = 0; rank < world; ++rank) {
    const std::string& node = nodes[static_cast<size_t>(rank) % nodes.size()];
    if (node == self_address) continue;
    auto it = std::find(peers->nodes.begin(), peers->nodes.end(), node);
    if (it == peers->nodes.end()) {
      peers->nodes.push_back(node);
      peers->ranks.emplace_back();
      it = peers->nodes.end() - 1;
    }
    peers->ranks[static_cast<size_t>(it - peers->nodes.begin())].push_back(rank);
  }
  gen.peers = peers;
  std::vector<std::string> addresses(static_cast<size_t>(world));
  for (size_t i = 0; i < gen.ranks.size(); ++i) addresses[static_cast<size_t>(gen.ranks[i])] = gen.rings[i]->bound().to_string();
  msg::TrainJoinRequest join;
  join.job_id = job.record.status.job_id;
  join.secret = job.secret;
  join.config_yaml = job.record.config_yaml;
  join.config_name = job.record.config_name;
  join.home = self_address;
  join.run_id = job.record.status.run_id;
  join.world_size = world;
  if (prepared.config.base_model.kind == ModelReference::Kind::registry) join.base_model = prepared.base_model_reference;
  join.resume_from = job.record.status.last_checkpoint;
  std::string listed;
  for (const auto& node : peers->nodes) listed += (listed.empty() ? "" : ", ") + node;
  append_log(self, job, "log", "info", job.record.status.step, "joining the job's other nodes: " + listed);
  gen.coordinating = true;
  gen.coordinator = std::thread([self, handle = caf::actor_cast<caf::actor>(self), peers, join, addresses,
                                 token = self->state.context.peer_token, stop = gen.stop,
                                 timeout = options(self).peer_timeout, number = gen.number]() mutable {
    Status joined;
    for (size_t i = 0; i < peers->nodes.size() && joined.ok(); ++i) {
      auto request = join;
      request.ranks = peers->ranks[i];
      auto reply = join_node(peers->nodes[i], token, request, timeout, *stop, peers->clients);
      if (!reply.ok()) {
        joined = reply.status();
        break;
      }
      std::vector<std::string> got = reply->addresses;
      if (got.empty()) got.push_back(reply->address);
      if (got.size() != request.ranks.size()) {
        joined = Status(Code::internal, "train.join on node " + peers->nodes[i] + ": " + std::to_string(got.size()) +
                                            " ring addresses for " + std::to_string(request.ranks.size()) + " ranks");
        break;
      }
      for (size_t j = 0; j < got.size(); ++j) addresses[static_cast<size_t>(request.ranks[j])] = got[j];
    }
    const std::string job_id = join.job_id;
    caf::anon_send(handle, Continuation{[=] { on_joined(self, job_id, number, joined, addresses); }});
  });
}

void on_worker_done(Self self, const WorkerDone& done) {
  Job* job = find_job(self, done.job_id);
  if (job == nullptr || !job->generation || job->generation->number != done.generation) return;
  Generation& gen = *job->generation;
  --gen.workers_running;
  auto& workers = job->record.status.workers;
  const std::string state = done.status.ok() ? "done" : gen.ending ? "stopped" : "failed";
  if (done.rank < static_cast<int>(workers.size())) workers[static_cast<size_t>(done.rank)].state = state;
  tell_home(*job, done.rank, state, done.step, done.status.ok() ? done.stop_reason : done.status.to_string());
  if (!gen.ranks.empty() && done.rank == gen.ranks.front() && done.status.ok()) {
    gen.stop_reason = done.stop_reason;
    gen.parameters_digest = done.parameters_digest;
    job->record.status.step = done.step;
  }
  if (!done.status.ok() && !gen.ending) {
    stop_generation(self, *job, done.status.with_context("worker " + std::to_string(done.rank)));
  }
  maybe_end_generation(self, *job);
}

void on_report(Self self, const WorkerReport& report) {
  Job* job = find_job(self, report.job_id);
  if (job == nullptr || !job->generation || job->generation->number != report.generation) return;
  auto& status = job->record.status;
  if (report.kind == WorkerReport::Kind::progress && report.rank >= 0 &&
      report.rank < static_cast<int>(status.workers.size())) {
    status.workers[static_cast<size_t>(report.rank)].step = report.step;
  }
  if (job->guest) {
    // The home node shows the progress of these ranks (on_peer_event there).
    if (report.kind == WorkerReport::Kind::progress) tell_home(*job, report.rank, "running", report.step, report.message);
    return;
  }
  // Rank 0 reports the job's metrics; another rank of this node only its step (above), which
  // watchers see with rank 0's next report.
  if (report.kind == WorkerReport::Kind::progress && report.rank != 0) return;
  status.updated_ms = unix_ms();
  switch (report.kind) {
    case WorkerReport::Kind::progress: {
      const auto now = std::chrono::steady_clock::now();
      if (job->last_progress_step >= 0 && report.step > job->last_progress_step) {
        const double per_step = std::chrono::duration<double>(now - job->last_progress_time).count() /
                                static_cast<double>(report.step - job->last_progress_step);
        status.eta_s = per_step * static_cast<double>(std::max<int64_t>(status.total_steps - report.step, 0));
      }
      job->last_progress_time = now;
      job->last_progress_step = report.step;
      status.step = report.step;
      status.loss = report.loss;
      status.lr = report.lr;
      status.tokens_per_s = report.tokens_per_s;
      if (job->steps_per_epoch > 0) status.epoch = static_cast<double>(report.step) / static_cast<double>(job->steps_per_epoch);
      append_log(self, *job, "progress", "info", report.step, report.message,
                 {{"loss", report.loss},
                  {"lr", report.lr},
                  {"grad_norm", report.grad_norm},
                  {"tokens_per_s", report.tokens_per_s}});
      break;
    }
    case WorkerReport::Kind::eval:
      status.eval_loss = report.eval_loss;
      append_log(self, *job, "eval", "info", report.step, report.message,
                 {{"eval_loss", report.eval_loss}, {"eval_perplexity", report.eval_perplexity}});
      break;
    case WorkerReport::Kind::checkpoint:
      status.last_checkpoint = report.checkpoint;
      persist(self, *job);  // the point a restart resumes from
      append_log(self, *job, "checkpoint", "info", report.step, report.message);
      break;
    case WorkerReport::Kind::log:
      append_log(self, *job, "log", report.level, report.step, report.message);
      break;
  }
  notify_watchers(*job);
}

// A job actor went down. Ours only while its generation runs; a stop we asked for is not seen
// (stop_generation demonitors first).
void on_down(Self self, const caf::down_msg& down) {
  for (auto& [id, job] : self->state.jobs) {
    if (!job.generation || job.generation->ending) continue;
    Generation& gen = *job.generation;
    auto matches = [&](const caf::actor& a) { return a && a.address() == down.source; };
    std::string what;
    for (size_t i = 0; i < gen.trainers.size() && what.empty(); ++i) {
      if (matches(gen.trainers[i])) what = job_actor_name(id, "trainer", gen.ranks[i]);
      if (matches(gen.shards[i])) what = job_actor_name(id, "shard", gen.ranks[i]);
    }
    if (what.empty() && matches(gen.param_sync)) what = job_actor_name(id, "param-sync");
    if (what.empty()) continue;
    const std::string reason = down.reason ? self->system().render(down.reason) : "exited";
    stop_generation(self, job, Status(Code::unavailable, what + " went down: " + reason));
    return;
  }
}

// Finishes the job: records, tells the run, answers watchers and followers, frees the slot.
void finalize(Self self, Job& job, std::string_view state, const std::string& reason) {
  auto& status = job.record.status;
  if (state == msg::kJobFailed || state == msg::kJobCancelled) {
    for (auto& worker : status.workers) {
      if (worker.state != "done") worker.state = state == msg::kJobCancelled ? "stopped" : "failed";
    }
  }
  status.eta_s = 0;
  set_state(self, job, state, reason);
  if (job.guest) {
    if (job.join_call) job.join_call->fail(Status(Code::unavailable, "train.join: " + reason));
    if (job.start_call) {
      if (state == msg::kJobSucceeded || state == msg::kJobStopped) {
        msg::TrainStartReply done;
        done.step = status.step;
        done.parameters_digest = status.parameters_digest;
        job.start_call->reply(done);
      } else {
        job.start_call->fail(Status(state == msg::kJobCancelled ? Code::cancelled : Code::unavailable,
                                    "ranks of job " + status.job_id + " on node " + self->state.context.node_name +
                                        " " + std::string(state) + ": " + reason));
      }
    }
    job.join_call = nullptr;
    job.start_call = nullptr;
    job.generation.reset();
    return;
  }
  if (!status.run_id.empty()) {
    msg::LogBatchRequest tags;
    tags.run_id = status.run_id;
    tags.tags.push_back({"cairn.job_state", std::string(state)});
    if (!reason.empty()) tags.tags.push_back({"cairn.stop_reason", reason.substr(0, 5000)});
    if (!status.last_checkpoint.model.empty()) {
      tags.tags.push_back({"cairn.final_model", status.last_checkpoint.model + "/" + status.last_checkpoint.version});
    }
    registry_send(self, msg::kLogBatch, wire::encode(tags), status.job_id);
    msg::UpdateRunRequest update;
    update.run_id = status.run_id;
    const bool watchdog = reason.rfind("loss watchdog", 0) == 0;
    update.status = state == msg::kJobSucceeded                      ? "FINISHED"
                    : state == msg::kJobStopped && !watchdog         ? "FINISHED"
                    : state == msg::kJobCancelled                    ? "KILLED"
                                                                     : "FAILED";
    registry_send(self, msg::kUpdateRun, wire::encode(update), status.job_id);
  }
  std::string encoded = wire::encode(status);
  for (auto& call : job.watchers) call->reply_encoded(encoded);
  for (auto& call : job.followers) call->reply_encoded(encoded);
  job.watchers.clear();
  job.followers.clear();
  job.generation.reset();
  auto& waiting = self->state.waiting;
  auto it = std::find(waiting.begin(), waiting.end(), status.job_id);
  if (it != waiting.end()) {
    waiting.erase(it);
  } else if (self->state.active > 0) {
    --self->state.active;
  }
  start_next(self);
}

void start_next(Self self) {
  auto& st = self->state;
  while (st.active < std::max<uint32_t>(options(self).max_jobs, 1) && !st.waiting.empty()) {
    std::string job_id = st.waiting.front();
    st.waiting.pop_front();
    Job* job = find_job(self, job_id);
    if (job == nullptr || msg::job_state_is_final(job->record.status.state)) continue;
    ++st.active;
    start_generation(self, *job);
  }
}

// ---- ops ----

void submit(Self self, const CallPtr& call) {
  auto request = call->body<msg::TrainSubmitRequest>();
  if (!request.ok()) return call->fail(request.status());
  const std::string source = request->config_name.empty() ? "job.yaml" : request->config_name;
  auto yaml = apply_train_config_overrides(request->config_yaml, request->overrides);
  if (!yaml.ok()) return call->fail(yaml.status().with_context(call->op()));
  std::vector<ConfigWarning> warnings;
  auto config = parse_train_config(*yaml, source, &warnings);
  if (!config.ok()) return call->fail(config.status());
  if (!config->nodes.empty()) {
    const auto& address = self->state.context.self_address;
    const std::string here = address ? address() : std::string();
    if (here.empty()) {
      return call->fail(Status(Code::invalid_argument,
                               source + ": nodes: this node cannot place workers on other nodes (it does not know "
                                        "its own address); leave nodes out to run every worker here"));
    }
    if (config->nodes.front() != here) {
      return call->fail(Status(Code::invalid_argument,
                               source + ": nodes: the first entry must be this node (" + here +
                                   "), which runs rank 0 and owns the job; got \"" + config->nodes.front() + "\""));
    }
  }
  if (!self->state.context.directory->find("registry")) {
    return call->fail(Status(Code::unavailable, call->op() +
                                                    ": training needs the registry role on this node (runs, metrics "
                                                    "and checkpoints go there)"));
  }
  storage::JobRecord record;
  record.config_yaml = *yaml;
  record.config_name = source;
  record.submitted_by = who(call);
  auto& status = record.status;
  status.name = !config->output_model.empty() ? config->output_model : fs::path(source).filename().string();
  status.state = std::string(msg::kJobQueued);
  status.started_ms = status.updated_ms = unix_ms();
  auto created = store(self).create(record);
  if (!created.ok()) return call->fail(created.status().with_context(call->op()));
  const std::string job_id = *created;
  self->state.jobs[job_id].record = record;
  self->state.order.push_back(job_id);
  Job& job = self->state.jobs[job_id];
  std::vector<std::string> warning_texts;
  for (const auto& w : warnings) {
    warning_texts.push_back(w.message);
    append_log(self, job, "log", "warn", 0, w.message);
  }

  // The run: experiment (found or created), run, params; then the reply.
  auto experiment_name = config->experiment;
  auto params = config_params(*config);
  auto digest = train_config_digest(*config);
  auto run_name = config->run_name.empty() ? job_id : config->run_name;
  auto fail_submit = [self, call, job_id](const Status& why) {
    Job* job = find_job(self, job_id);
    if (job != nullptr) {
      job->record.status.state = std::string(msg::kJobFailed);
      job->record.status.reason = why.to_string();
      persist(self, *job);
    }
    call->fail(why.with_context(call->op()));
  };
  auto create_run = [self, call, job_id, params, digest, run_name, warning_texts, fail_submit](
                        const std::string& experiment_id) {
    msg::CreateRunRequest run;
    run.experiment_id = experiment_id;
    run.run_name = run_name;
    run.user_id = who(call);
    run.config_digest = digest;
    run.tags = {{"cairn.job_id", job_id}, {"cairn.source", "train"}};
    registry_call(self, msg::kCreateRun, wire::encode(run),
                  [self, call, job_id, params, experiment_id, warning_texts, fail_submit](Result<std::string> body) {
                    auto reply = decode_reply<msg::RunReply>(body);
                    if (!reply.ok()) return fail_submit(reply.status());
                    Job* job = find_job(self, job_id);
                    if (job == nullptr) return;
                    job->record.status.run_id = reply->run.info.run_id;
                    job->record.status.experiment_id = experiment_id;
                    persist(self, *job);
                    for (size_t i = 0; i < params.size(); i += 100) {
                      msg::LogBatchRequest batch;
                      batch.run_id = reply->run.info.run_id;
                      batch.params.assign(params.begin() + static_cast<std::ptrdiff_t>(i),
                                          params.begin() + static_cast<std::ptrdiff_t>(std::min(i + 100, params.size())));
                      registry_send(self, msg::kLogBatch, wire::encode(batch), job_id);
                    }
                    msg::TrainSubmitReply submitted;
                    submitted.job_id = job_id;
                    submitted.run_id = reply->run.info.run_id;
                    submitted.warnings = warning_texts;
                    call->reply(submitted);
                    append_log(self, *job, "log", "info", 0,
                               "submitted by " + job->record.submitted_by + "; run " + submitted.run_id);
                    self->state.waiting.push_back(job_id);
                    start_next(self);
                  });
  };
  msg::GetExperimentRequest get;
  get.experiment_name = experiment_name;
  registry_call(self, msg::kGetExperiment, wire::encode(get),
                [self, experiment_name, create_run, fail_submit](Result<std::string> body) {
                  auto found = decode_reply<msg::ExperimentReply>(body);
                  if (found.ok()) return create_run(found->experiment.experiment_id);
                  if (found.status().code() != Code::not_found) return fail_submit(found.status());
                  msg::CreateExperimentRequest create;
                  create.name = experiment_name;
                  registry_call(self, msg::kCreateExperiment, wire::encode(create),
                                [create_run, fail_submit](Result<std::string> body) {
                                  auto created = decode_reply<msg::CreateExperimentReply>(body);
                                  if (!created.ok()) return fail_submit(created.status());
                                  create_run(created->experiment_id);
                                });
                });
}

// ---- node to node: the ranks of another node's job ----

void join(Self self, const CallPtr& call) {
  auto request = call->body<msg::TrainJoinRequest>();
  if (!request.ok()) return call->fail(request.status());
  if (request->ranks.empty() || request->secret.empty()) {
    return call->fail(Status(Code::bad_request, call->op() + ": ranks and secret must not be empty"));
  }
  if (Job* existing = find_job(self, request->job_id)) {
    if (!existing->guest) {
      return call->fail(Status(Code::already_exists, call->op() + ": job " + request->job_id + " is a job of this node"));
    }
    if (existing->generation) {
      return call->fail(
          Status(Code::unavailable, call->op() + ": the ranks of job " + request->job_id + " are still running here"));
    }
    self->state.jobs.erase(request->job_id);
  }
  Job& job = self->state.jobs[request->job_id];
  job.guest = true;
  job.secret = request->secret;
  job.guest_ranks = request->ranks;
  job.home = request->home;
  job.pinned_base_model = request->base_model;
  job.join_call = call;
  job.record.config_yaml = request->config_yaml;
  job.record.config_name = request->config_name.empty() ? "job.yaml" : request->config_name;
  job.record.submitted_by = who(call);
  auto& status = job.record.status;
  status.job_id = request->job_id;
  status.name = request->job_id;
  status.state = std::string(msg::kJobQueued);
  status.started_ms = status.updated_ms = unix_ms();
  status.last_checkpoint = request->resume_from;
  append_log(self, job, "log", "info", 0,
             "joined from node " + request->home + " (run " + request->run_id + ")" +
                 (request->resume_from.model.empty()
                      ? std::string()
                      : "; resuming from " + request->resume_from.model + "/" + request->resume_from.version));
  start_generation(self, job);
}

// The guest job `job_id` if `secret` is its secret; else fails the call.
Job* guest_job(Self self, const CallPtr& call, const std::string& job_id, const std::string& secret) {
  Job* job = find_job(self, job_id);
  if (job == nullptr || !job->guest) {
    call->fail(Status(Code::not_found, call->op() + ": no joined job \"" + job_id + "\""));
    return nullptr;
  }
  if (job->secret != secret) {
    call->fail(Status(Code::permission_denied, call->op() + ": wrong secret for job " + job_id));
    return nullptr;
  }
  return job;
}

void start_guest(Self self, const CallPtr& call) {
  auto request = call->body<msg::TrainStartRequest>();
  if (!request.ok()) return call->fail(request.status());
  Job* job = guest_job(self, call, request->job_id, request->secret);
  if (job == nullptr) return;
  if (!job->expired.empty()) {
    return call->fail(Status(Code::timeout, call->op() + ": the join of job " + request->job_id + " expired (" +
                                                job->expired + "); the home node must send train.join again"));
  }
  Generation* gen = job->generation.get();
  if (gen == nullptr || gen->preparing || gen->started || gen->ending) {
    return call->fail(Status(Code::unavailable, call->op() + ": job " + request->job_id + " is not waiting to start"));
  }
  std::vector<HostPort> peers;
  for (const auto& address : request->addresses) {
    auto parsed = parse_host_port(address);
    if (!parsed.ok()) return call->fail(parsed.status().with_context(call->op() + ": addresses"));
    peers.push_back(*parsed);
  }
  for (const auto& ring : gen->rings) {
    Status set = ring->set_peers(peers);
    if (!set.ok()) return call->fail(set.with_context(call->op()));
  }
  job->start_call = call;
  call->on_cancel([self, handle = caf::actor_cast<caf::actor>(self), job_id = request->job_id, number = gen->number] {
    caf::anon_send(handle, Continuation{[=] {
                     Job* job = find_job(self, job_id);
                     if (job == nullptr || !job->generation || job->generation->number != number) return;
                     job->start_call = nullptr;
                     job->cancelling = true;
                     job->cancel_reason = "train.start was cancelled by the home node";
                     stop_generation(self, *job, Status(Code::cancelled, job->cancel_reason));
                     maybe_end_generation(self, *job);
                   }});
  });
  start_workers(self, *job);
}

void abort_guest(Self self, const CallPtr& call) {
  auto request = call->body<msg::TrainAbortRequest>();
  if (!request.ok()) return call->fail(request.status());
  Job* job = guest_job(self, call, request->job_id, request->secret);
  if (job == nullptr) return;
  if (job->generation && !job->cancelling) {
    job->cancelling = true;
    job->cancel_reason = "aborted by the home node" + (request->reason.empty() ? "" : ": " + request->reason);
    if (!job->generation->preparing) {
      stop_generation(self, *job, Status(Code::cancelled, job->cancel_reason));
      maybe_end_generation(self, *job);
    }
  }
  call->reply(msg::Empty{});
}

void serve(Self self, const CallPtr& call) {
  const std::string& op = call->op();
  if (op == msg::kTrainSubmit) return submit(self, call);
  if (op == msg::kTrainJoin) return join(self, call);
  if (op == msg::kTrainStart) return start_guest(self, call);
  if (op == msg::kTrainAbort) return abort_guest(self, call);
  if (op == msg::kTrainList) {
    auto request = call->body<msg::TrainListRequest>();
    if (!request.ok()) return call->fail(request.status());
    msg::TrainListReply reply;
    for (auto it = self->state.order.rbegin(); it != self->state.order.rend(); ++it) {
      const auto& status = self->state.jobs.at(*it).record.status;
      const bool final = msg::job_state_is_final(status.state);
      if (request->state.empty() || (request->state == "active" && !final) || request->state == status.state) {
        reply.jobs.push_back(status);
      }
    }
    return call->reply(reply);
  }
  if (op == msg::kTrainLogs) {
    auto request = call->body<msg::TrainLogsRequest>();
    if (!request.ok()) return call->fail(request.status());
    Job* job = find_job(self, request->job_id);
    if (job == nullptr) return call->fail(unknown_job(op, request->job_id));
    for (const auto& event : job->log) {
      if (event.step >= request->since_step) call->more(event);
    }
    if (request->follow && !msg::job_state_is_final(job->record.status.state)) {
      job->followers.push_back(call);
    } else {
      call->reply(job->record.status);
    }
    return;
  }
  auto request = call->body<msg::TrainJobRequest>();
  if (!request.ok()) return call->fail(request.status());
  Job* job = find_job(self, request->job_id);
  if (job == nullptr) return call->fail(unknown_job(op, request->job_id));
  auto& status = job->record.status;
  if (op == msg::kTrainStatus) return call->reply(status);
  if (op == msg::kTrainWatch) {
    if (msg::job_state_is_final(status.state)) return call->reply(status);
    call->more(status);
    job->watchers.push_back(call);
    return;
  }
  if (op == msg::kTrainCancel) {
    if (msg::job_state_is_final(status.state) || job->cancelling) return call->reply(status);
    const std::string reason = "cancelled by " + who(call);
    job->cancelling = true;
    job->cancel_reason = reason;
    if (!job->generation) {
      finalize(self, *job, msg::kJobCancelled, reason);
    } else {
      append_log(self, *job, "log", "info", status.step, reason + "; stopping the workers");
      if (!job->generation->preparing) stop_generation(self, *job, Status(Code::cancelled, reason));
    }
    return call->reply(status);
  }
  call->fail(Status(Code::unknown_op, "the job manager does not serve \"" + op + "\""));
}

// At start: jobs that were not final when the node stopped resume from their last checkpoint.
void recover(Self self) {
  std::vector<storage::JobRecord> records;
  Status listed = store(self).for_each([&](const storage::JobRecord& record) {
    records.push_back(record);
    return true;
  });
  if (!listed.ok()) spdlog::error("train: cannot read the job records: {}", listed.to_string());
  std::reverse(records.begin(), records.end());  // oldest first
  for (auto& record : records) {
    const std::string job_id = record.status.job_id;
    self->state.order.push_back(job_id);
    Job& job = self->state.jobs[job_id];
    job.record = std::move(record);
    auto& status = job.record.status;
    if (msg::job_state_is_final(status.state)) continue;
    if (status.run_id.empty()) {
      set_state(self, job, msg::kJobFailed, "the node stopped before the job's run was created; submit it again");
      continue;
    }
    if (status.state != msg::kJobQueued) {
      ++status.restarts;
      set_state(self, job, msg::kJobRestarting,
                "the node restarted; resuming from " +
                    (status.last_checkpoint.model.empty()
                         ? std::string("the start")
                         : "checkpoint " + status.last_checkpoint.model + "/" + status.last_checkpoint.version));
    }
    self->state.waiting.push_back(job_id);
  }
  start_next(self);
}

// Node shutdown: every thread stops between micro-batches and is joined, so none outlives the
// stores. Jobs keep their non-final state and resume when the node starts again.
void shut_down(Self self) {
  for (auto& [id, job] : self->state.jobs) {
    for (auto& call : job.watchers) call->cancel(Status(Code::shutting_down, "train.watch: the node is stopping"));
    for (auto& call : job.followers) call->cancel(Status(Code::shutting_down, "train.logs: the node is stopping"));
    job.watchers.clear();
    job.followers.clear();
    if (!job.generation) continue;
    stop_generation(self, job, Status(Code::shutting_down, "the node is stopping"));
    job.generation.reset();  // joins its threads
  }
}

caf::behavior job_manager(Self self, TrainContext context) {
  self->state.context = std::move(context);
  self->set_down_handler([self](caf::down_msg& down) { on_down(self, down); });
  self->set_exit_handler([self](caf::exit_msg& exit) {
    shut_down(self);
    self->quit(exit.reason);
  });
  recover(self);
  return {
      [self](CallMessage& message) {
        try {
          serve(self, message.call);
        } catch (const std::exception& e) {
          spdlog::error("train: {} threw: {}", message.call->op(), e.what());
          message.call->fail(Status(Code::internal, message.call->op() + ": unexpected exception: " + e.what()));
        }
      },
      [self](Continuation& k) { k.run(); },
      [self](const JobPreparedPtr& prepared) { on_prepared(self, *prepared); },
      [self](const WorkerReportPtr& report) { on_report(self, *report); },
      [self](const WorkerDonePtr& done) { on_worker_done(self, *done); },
      [self](drain_atom) {
        for (auto& [id, job] : self->state.jobs) {
          for (auto& c : job.watchers) c->cancel(Status(Code::shutting_down, "train.watch: the node is stopping"));
          for (auto& c : job.followers) c->cancel(Status(Code::shutting_down, "train.logs: the node is stopping"));
          job.watchers.clear();
          job.followers.clear();
        }
      },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

}  // namespace
}  // namespace train

caf::actor spawn_job_manager(caf::actor_system& system, const TrainContext& context) {
  return system.spawn(train::job_manager, context);
}

}  // namespace cairn
