// The CUDA path against the CPU reference; skipped where there is no GPU.
#include <gtest/gtest.h>

#include "gpu/gpu.h"

namespace cairn {
namespace {

TEST(Gpu, DiscoveryNeverFailsOnAMachineWithoutAGpu) {
  auto devices = gpu::devices();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  if (!gpu::built_with_cuda()) EXPECT_TRUE(devices->empty());
}

TEST(GpuDevice, SaxpyMatchesTheCpu) {
  auto devices = gpu::devices();
  ASSERT_TRUE(devices.ok());
  if (devices->empty()) GTEST_SKIP() << "no GPU on this machine";
  std::vector<float> a(100003), b(a.size()), out;
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>(i) * 0.5f;
    b[i] = 1.0f - static_cast<float>(i);
  }
  Status s = gpu::saxpy(0, 3.0f, a, b, out);
  ASSERT_TRUE(s.ok()) << s.to_string();
  for (size_t i = 0; i < a.size(); ++i) ASSERT_FLOAT_EQ(out[i], a[i] * 3.0f + b[i]) << "at " << i;
}

}  // namespace
}  // namespace cairn
