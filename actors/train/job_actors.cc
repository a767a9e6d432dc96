#include "actors/train/job_actors.h"

#include <spdlog/spdlog.h>

#include "actors/messages.h"

namespace cairn::train {
namespace {

// ---- data shard ----

struct ShardState {
  std::optional<BatchStream> stream;
  Status broken;  // the stream could not be created: every request gets this
  int64_t rows_per_batch = 1;
  static inline const char* name = "train.data_shard";
};

caf::behavior data_shard(caf::stateful_actor<ShardState>* self, PreparedJobPtr job, int rank) {
  auto& st = self->state;
  st.rows_per_batch = job->config.micro_batch_size;
  StreamOptions options = stream_options(job->config, rank);
  // Always endless: the job stops by step count, so every step takes full micro-batches on every
  // rank (a step never runs short, and all ranks accumulate the same number of times).
  options.num_epochs = 0;
  const DataCursor* resume = nullptr;
  if (rank < static_cast<int>(job->resume_cursors.size()) && job->resume_cursors[rank]) {
    resume = &*job->resume_cursors[rank];
  }
  auto stream = BatchStream::create(*job->dataset, DataSplit::train, options, resume);
  if (stream.ok()) {
    st.stream.emplace(std::move(stream).value());
  } else {
    st.broken = stream.status().with_context("data shard " + std::to_string(rank));
  }
  return {
      [self](next_batch_atom) -> caf::result<ShardBatchPtr> {
        auto& st = self->state;
        if (!st.broken.ok()) return caf::make_error(caf::sec::runtime_error, st.broken.to_string());
        auto batch = std::make_shared<ShardBatch>();
        batch->rows.reserve(static_cast<size_t>(st.rows_per_batch));
        while (static_cast<int64_t>(batch->rows.size()) < st.rows_per_batch) {
          auto row = st.stream->next();
          if (!row) return caf::make_error(caf::sec::runtime_error, "data shard: the training split has no rows");
          batch->rows.push_back(std::move(*row));
        }
        batch->cursor_json = st.stream->cursor().to_json();
        return ShardBatchPtr(std::move(batch));
      },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

// ---- trainer ----

struct TrainerActorState {
  std::shared_ptr<BatchQueue> queue;
  ~TrainerActorState() {
    if (queue) queue->close(Status(Code::cancelled, "the trainer actor stopped"));
  }
  static inline const char* name = "train.trainer";
};

void request_batch(caf::stateful_actor<TrainerActorState>* self, const caf::actor& shard) {
  self->request(shard, caf::infinite, next_batch_atom::value)
      .then([self](const ShardBatchPtr& batch) { self->state.queue->push(batch); },
            [self](caf::error& error) {
              const std::string why = "data shard: " + self->system().render(error);
              self->state.queue->close(Status(Code::unavailable, why));
              self->quit(caf::make_error(caf::sec::runtime_error, why));
            });
}

caf::behavior trainer_actor(caf::stateful_actor<TrainerActorState>* self, caf::actor shard,
                            std::shared_ptr<BatchQueue> queue, uint32_t prefetch) {
  self->state.queue = std::move(queue);
  self->monitor(shard);
  self->set_down_handler([self](caf::down_msg& down) {
    self->state.queue->close(Status(Code::unavailable, "the data shard stopped"));
    self->quit(down.reason ? down.reason : caf::make_error(caf::sec::runtime_error, "data shard stopped"));
  });
  for (uint32_t i = 0; i < std::max<uint32_t>(prefetch, 1); ++i) request_batch(self, shard);
  return {
      [self, shard](batch_consumed_atom) { request_batch(self, shard); },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

// ---- param sync ----

struct ParamSyncState {
  std::vector<RankLinkPtr> links;
  void abort_all() {
    for (auto& link : links) link->abort();
  }
  ~ParamSyncState() { abort_all(); }
  static inline const char* name = "train.param_sync";
};

caf::behavior param_sync(caf::stateful_actor<ParamSyncState>* self, std::vector<RankLinkPtr> links,
                         std::vector<caf::actor> trainers) {
  self->state.links = std::move(links);
  for (auto& trainer : trainers) self->monitor(trainer);
  self->set_down_handler([self](caf::down_msg&) {
    // A rank is gone: the others must not wait for it in a collective.
    self->state.abort_all();
  });
  return {
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

}  // namespace

caf::actor spawn_data_shard(caf::actor_system& system, PreparedJobPtr job, int rank) {
  return system.spawn(data_shard, std::move(job), rank);
}

caf::actor spawn_trainer_actor(caf::actor_system& system, caf::actor shard, std::shared_ptr<BatchQueue> queue,
                               uint32_t prefetch) {
  return system.spawn(trainer_actor, std::move(shard), std::move(queue), prefetch);
}

caf::actor spawn_param_sync(caf::actor_system& system, std::vector<RankLinkPtr> links,
                            std::vector<caf::actor> trainers) {
  return system.spawn(param_sync, std::move(links), std::move(trainers));
}

}  // namespace cairn::train
