// NcclCollective: one rank's NCCL communicator, built when CUDA and NCCL are found.
#include "gpu/nccl_collective.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <mutex>
#include <thread>

#include "gpu/detail/cuda_check.h"
#include "gpu/detail/nccl_check.h"

namespace cairn::gpu {
namespace {

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes, "NcclUniqueId must match ncclUniqueId");

// Owns the communicator, its stream and a one-float device scratch for barriers; not copyable.
// Collectives enqueue on the stream and then poll it (and NCCL's asynchronous error), so that
// abort() from another thread can end a wait that a blocking synchronize would never return from.
class NcclCollective final : public Collective {
 public:
  static Result<std::unique_ptr<Collective>> create(const NcclOptions& options);

  ~NcclCollective() override {
    if (comm_ != nullptr && !aborted_) ncclCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (scratch_ != nullptr) cudaFree(scratch_);
  }
  NcclCollective(const NcclCollective&) = delete;
  NcclCollective& operator=(const NcclCollective&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  Status all_reduce_sum(float* data, size_t count) override {
    if (count == 0) return {};
    std::lock_guard<std::mutex> op(op_mutex_);
    {
      std::lock_guard<std::mutex> lock(comm_mutex_);
      CAIRN_RETURN_IF_ERROR(usable());
      CAIRN_CUDA_CHECK(cudaSetDevice(device_));
      CAIRN_NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_));
    }
    return wait("all_reduce_sum");
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= world_size_) {
      return error(Code::invalid_argument, "nccl broadcast: root " + std::to_string(root) + " is not a rank of " +
                                               std::to_string(world_size_));
    }
    if (bytes == 0) return {};
    std::lock_guard<std::mutex> op(op_mutex_);
    {
      std::lock_guard<std::mutex> lock(comm_mutex_);
      CAIRN_RETURN_IF_ERROR(usable());
      CAIRN_CUDA_CHECK(cudaSetDevice(device_));
      CAIRN_NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclInt8, root, comm_, stream_));
    }
    return wait("broadcast");
  }

  Status barrier() override {
    std::lock_guard<std::mutex> op(op_mutex_);
    {
      std::lock_guard<std::mutex> lock(comm_mutex_);
      CAIRN_RETURN_IF_ERROR(usable());
      CAIRN_CUDA_CHECK(cudaSetDevice(device_));
      CAIRN_NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
    }
    return wait("barrier");
  }

  void abort() override {
    std::lock_guard<std::mutex> lock(comm_mutex_);
    if (aborted_ || comm_ == nullptr) return;
    aborted_ = true;
    ncclCommAbort(comm_);  // frees the communicator; its kernels stop
  }

 private:
  NcclCollective(int rank, int world_size, int device) : rank_(rank), world_size_(world_size), device_(device) {}

  // Requires comm_mutex_.
  Status usable() const {
    if (aborted_) return error(Code::cancelled, "nccl rank " + std::to_string(rank_) + ": aborted");
    return {};
  }

  // Polls the stream until the enqueued collective completes, NCCL reports an asynchronous error
  // (a peer failed: the communicator is then aborted), or abort() is called.
  Status wait(const char* op) {
    for (;;) {
      cudaError_t query = cudaStreamQuery(stream_);
      {
        std::lock_guard<std::mutex> lock(comm_mutex_);
        CAIRN_RETURN_IF_ERROR(usable());
        if (query == cudaSuccess) return {};
        if (query != cudaErrorNotReady) {
          return error(Code::internal, std::string("nccl ") + op + ": cudaStreamQuery: " + cudaGetErrorString(query));
        }
        ncclResult_t async = ncclSuccess;
        CAIRN_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
        if (async != ncclSuccess && async != ncclInProgress) {
          Status failed = detail::nccl_error(async, op, __FILE__, __LINE__);
          aborted_ = true;
          ncclCommAbort(comm_);
          return failed;
        }
      }
      std::this_thread::yield();
    }
  }

  // Constant after construction.
  const int rank_, world_size_, device_;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;

  std::mutex op_mutex_;    // one collective at a time
  std::mutex comm_mutex_;  // guards comm_ and aborted_ against abort() from another thread
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
};

Result<std::unique_ptr<Collective>> NcclCollective::create(const NcclOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return error(Code::invalid_argument, "nccl: rank " + std::to_string(o.rank) + " of world_size " +
                                             std::to_string(o.world_size) + " is not a valid rank");
  }
  if (o.world_size > 1 && !o.exchange_id) {
    return error(Code::invalid_argument, "nccl: exchange_id is required when world_size > 1");
  }
  CAIRN_CUDA_CHECK(cudaSetDevice(o.device));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (o.rank == 0) CAIRN_NCCL_CHECK(ncclGetUniqueId(&id));
  if (o.world_size > 1) {
    NcclUniqueId bytes;
    std::memcpy(bytes.data(), &id, sizeof id);
    CAIRN_RETURN_IF_ERROR(o.exchange_id(bytes).with_context("nccl: exchanging the unique id"));
    std::memcpy(&id, bytes.data(), sizeof id);
  }
  std::unique_ptr<NcclCollective> self(new NcclCollective(o.rank, o.world_size, o.device));
  CAIRN_CUDA_CHECK(cudaStreamCreateWithFlags(&self->stream_, cudaStreamNonBlocking));
  CAIRN_CUDA_CHECK(cudaMalloc(&self->scratch_, sizeof(float)));
  CAIRN_NCCL_CHECK(ncclCommInitRank(&self->comm_, o.world_size, id, o.rank));
  return std::unique_ptr<Collective>(std::move(self));
}

}  // namespace

bool nccl_built() { return true; }

Result<std::unique_ptr<Collective>> create_nccl_collective(const NcclOptions& options) {
  return NcclCollective::create(options);
}

}  // namespace cairn::gpu
