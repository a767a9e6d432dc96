// create_nccl_collective in a build without CUDA or without NCCL.
#include "gpu/nccl_collective.h"

namespace cairn::gpu {

bool nccl_built() { return false; }

Result<std::unique_ptr<Collective>> create_nccl_collective(const NcclOptions&) {
#ifdef CAIRN_GPU_HAVE_CUDA
  return error(Code::unavailable, "nccl: built without NCCL (CUDA was found, nccl.h or libnccl was not)");
#else
  return error(Code::unavailable, "nccl: built without CUDA");
#endif
}

}  // namespace cairn::gpu
