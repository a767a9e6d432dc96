// The gpu/ API in a build without CUDA: no devices.
#include "gpu/gpu.h"

namespace cairn::gpu {

bool built_with_cuda() { return false; }

Result<std::vector<DeviceInfo>> devices() { return std::vector<DeviceInfo>{}; }

Status saxpy(int, float, const std::vector<float>&, const std::vector<float>&, std::vector<float>&) {
  return Status(Code::unavailable, "saxpy: this build has no CUDA backend");
}

}  // namespace cairn::gpu
