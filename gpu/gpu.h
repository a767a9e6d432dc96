// GPU discovery and the smallest CUDA work the node does itself. Built with CUDA when nvcc is
// found (CAIRN_CUDA=AUTO/ON); otherwise the same API reports no devices.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/status.h"

namespace cairn::gpu {

struct DeviceInfo {
  int index = 0;
  std::string name;
  uint64_t memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

// Whether this binary was built with the CUDA backend.
bool built_with_cuda();

// The visible devices; empty when the build has no CUDA, or the machine no driver or GPU.
// Errors only for unexpected CUDA failures, naming the call.
Result<std::vector<DeviceInfo>> devices();

// out[i] = a[i] * x + b[i] on device `device`: a self-test of the CUDA path against the CPU.
Status saxpy(int device, float x, const std::vector<float>& a, const std::vector<float>& b, std::vector<float>& out);

}  // namespace cairn::gpu
