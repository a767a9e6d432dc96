// The registry actor (role "registry"): serves every registry.* op of the message catalogue
// (runtime/messages/registry.h, docs/PROTOCOL.md) over the node's RegistryStore and BlobStore.
//
// Contracts:
// - One actor owns the RegistryStore (which is not thread-safe); the node owns the stores, and
//   they outlive the actor system, so an actor restarted after a crash continues on the same
//   stores. Nothing the actor keeps in memory is needed to read the data back.
// - A write is answered only once it is durable. registry.log_batch uses group commit: requests
//   are validated and staged as they arrive, and every request staged in one round of the
//   mailbox is made durable by one synced write, then all of them are answered (all with the
//   write's error if it fails). A request that fails validation fails alone, at once.
// - Ops that read or change runs (get_run, search_runs, get_metric_history, update_run,
//   delete_run, delete_experiment, create_version) first commit what is staged, so the requests
//   of one connection take effect in the order they were sent.
// - create_version refuses artifacts whose blobs are not in the BlobStore with the stated size,
//   so no version ever names a blob that is missing.
// - registry.download_artifact is a stream sent one chunk per step of the mailbox, so other
//   requests interleave; it pauses while the connection holds more than
//   RegistryOptions::max_unsent_bytes, and stops when the call is cancelled. Downloads end on
//   their own, so the actor needs no drain_atom: at shutdown they run until the grace period
//   ends, and what is left is answered shutting_down by the transport (or by the actor's exit).
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include <caf/all.hpp>

#include "runtime/messages/node.h"

namespace cairn {

namespace storage {
class BlobStore;
class RegistryStore;
}  // namespace storage

struct RegistryOptions {
  // Metric points staged before the group is committed without waiting for the end of the
  // mailbox round. Bounds the latency of the first request of a group and the size of one write.
  // Default 50000.
  size_t max_group_points = 50000;
  // Largest DownloadChunk sent; a request's chunk_bytes is capped to it. Must leave room for the
  // envelope within protocol.max_frame_bytes. Default 4 MiB.
  uint32_t max_chunk_bytes = 4u << 20;
  // chunk_bytes used when a download request gives 0. Default 1 MiB.
  uint32_t default_chunk_bytes = 1u << 20;
  // A download waits while its connection holds more unsent reply bytes than this, so a slow
  // reader is not closed for falling behind (protocol.max_pending_output_bytes). Default 8 MiB.
  uint64_t max_unsent_bytes = uint64_t{8} << 20;
  // How long a paused download waits before it looks at the connection again. Default 2 ms.
  std::chrono::milliseconds backpressure_retry{2};
  // registry.gc removes partial uploads untouched for this long. Unreferenced complete blobs are
  // kept for the BlobStore's gc_grace. Default 24 h.
  std::chrono::seconds gc_upload_max_age{std::chrono::hours(24)};
};

// What the registry works on. The stores are owned by the node and must outlive the actor
// system; the actor holds them by pointer.
struct RegistryContext {
  storage::RegistryStore* store = nullptr;
  storage::BlobStore* blobs = nullptr;
  RegistryOptions options;
};

// One op the registry serves and the least role that may call it.
struct RegistryOp {
  std::string_view name;
  Role min_role;
};
// Every op the registry serves: clients may read and write; registry.gc needs admin.
const std::vector<RegistryOp>& registry_ops();

// Spawns a registry actor over `context` (both stores set).
caf::actor spawn_registry(caf::actor_system& system, const RegistryContext& context);

}  // namespace cairn
