// The NCCL transport of runtime/collective.h: ranks are GPUs, buffers are device memory. Compiled
// with NCCL only when the build has CUDA and finds NCCL; otherwise create_nccl_collective says so.
// Torch-free.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <memory>

#include "runtime/collective.h"
#include "runtime/status.h"

namespace cairn::gpu {

inline constexpr size_t kNcclUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
using NcclUniqueId = std::array<unsigned char, kNcclUniqueIdBytes>;

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  int device = 0;  // this rank's CUDA device index; one rank per device (NCCL's rule)
  // Shares rank 0's unique id with the other ranks, e.g. over the TCP ring:
  //   [&](gpu::NcclUniqueId& id) { return ring.broadcast(id.data(), id.size(), 0); }
  // On rank 0 `id` holds the fresh id to send; on every other rank the function stores rank 0's id
  // in it. Called once, on the thread that calls create_nccl_collective. Required when
  // world_size > 1.
  std::function<Status(NcclUniqueId& id)> exchange_id;
};

// Whether this build can create NCCL communicators (CUDA and NCCL were found).
bool nccl_built();

// Creates this rank's communicator: exchanges the id, then ncclCommInitRank, which returns once
// every rank has joined. The Collective's buffers are device memory on `device`, ready before the
// call (the caller's work on them finished); each collective runs on the communicator's own stream
// and returns once it has completed. Errors: `unavailable: built without CUDA` (or without NCCL),
// `invalid_argument` for bad options, otherwise the failing NCCL or CUDA call with file and line.
// abort() is ncclCommAbort: the pending call returns `cancelled`, as do later ones.
Result<std::unique_ptr<Collective>> create_nccl_collective(const NcclOptions& options);

}  // namespace cairn::gpu
