// The actors of one training job, spawned and monitored by the job manager (job_manager.h).
//
//   data-shard   owns rank r's BatchStream over the training split (resumed from the checkpoint's
//                cursor) and answers each next_batch_atom with one micro-batch (ShardBatchPtr),
//                in order, with the cursor after it.
//   trainer      feeds rank r's thread: keeps at most `prefetch` micro-batches requested from its
//                shard or waiting in the thread's BatchQueue (credits: one more request per batch
//                the thread takes). When it stops for any reason (killed, its shard died, the job
//                ended) it closes the queue, so the thread stops at its next micro-batch.
//   param-sync   owns the job's rank links (the Collective of each rank) and monitors the trainer
//                actors: when one goes down, or param-sync itself stops, it aborts every link, so
//                no rank waits forever in a collective.
#pragma once

#include <memory>
#include <vector>

#include <caf/all.hpp>

#include "actors/train/worker.h"

namespace cairn::train {

// Ask a data shard for its next micro-batch; answered with ShardBatchPtr, or an error.
using next_batch_atom = caf::atom_constant<caf::atom("trnextb")>;
// From a trainer thread to its trainer actor: one batch was taken from the queue.
using batch_consumed_atom = caf::atom_constant<caf::atom("trconsum")>;

caf::actor spawn_data_shard(caf::actor_system& system, PreparedJobPtr job, int rank);
caf::actor spawn_trainer_actor(caf::actor_system& system, caf::actor shard, std::shared_ptr<BatchQueue> queue,
                               uint32_t prefetch);
caf::actor spawn_param_sync(caf::actor_system& system, std::vector<RankLinkPtr> links,
                            std::vector<caf::actor> trainers);

}  // namespace cairn::train
