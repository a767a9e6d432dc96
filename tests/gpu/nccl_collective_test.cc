// The NCCL collective against the CPU result; the device tests skip where there is no GPU.
//
// NCCL allows one rank per GPU in a communicator, so on one GPU only world_size 1 can run here:
// it exercises the whole path (id, init, enqueue, stream polling, abort) against the CPU. Two ranks
// on two GPUs (ids exchanged over the TCP ring) are checked on a multi-GPU machine by the job layer.
#include "gpu/nccl_collective.h"

#include <gtest/gtest.h>

#include <vector>

#include "gpu/gpu.h"

#ifdef CAIRN_TEST_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace cairn {
namespace {

TEST(NcclCollective, FactoryReportsWhatTheBuildLacks) {
  if (gpu::nccl_built()) GTEST_SKIP() << "built with NCCL";
  auto nccl = gpu::create_nccl_collective({});
  ASSERT_FALSE(nccl.ok());
  EXPECT_EQ(nccl.status().code(), Code::unavailable);
  EXPECT_NE(nccl.status().message().find("built without"), std::string::npos) << nccl.status().to_string();
}

TEST(NcclCollective, RejectsBadOptionsBeforeTouchingTheDevice) {
  if (!gpu::nccl_built()) GTEST_SKIP() << "built without NCCL";
  gpu::NcclOptions options;
  options.rank = 2;
  options.world_size = 2;
  EXPECT_EQ(gpu::create_nccl_collective(options).status().code(), Code::invalid_argument);
  options.rank = 1;  // world_size 2 without exchange_id
  EXPECT_EQ(gpu::create_nccl_collective(options).status().code(), Code::invalid_argument);
}

#ifdef CAIRN_TEST_WITH_CUDA

// Device memory for the test, freed on every exit path.
class DeviceFloats {
 public:
  explicit DeviceFloats(const std::vector<float>& host) : count_(host.size()) {
    if (cudaMalloc(&ptr_, count_ * sizeof(float)) == cudaSuccess) {
      cudaMemcpy(ptr_, host.data(), count_ * sizeof(float), cudaMemcpyHostToDevice);
    }
  }
  ~DeviceFloats() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
  float* get() const { return ptr_; }
  std::vector<float> to_host() const {
    std::vector<float> out(count_);
    cudaMemcpy(out.data(), ptr_, count_ * sizeof(float), cudaMemcpyDeviceToHost);
    return out;
  }

 private:
  float* ptr_ = nullptr;
  size_t count_;
};

TEST(NcclCollectiveDevice, OneRankMatchesTheCpu) {
  auto devices = gpu::devices();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  if (devices->empty()) GTEST_SKIP() << "no GPU on this machine";
  auto nccl = gpu::create_nccl_collective({});
  ASSERT_TRUE(nccl.ok()) << nccl.status().to_string();
  EXPECT_EQ((*nccl)->world_size(), 1);

  std::vector<float> host(1000003);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i % 977) * 0.25f - 3.0f;
  DeviceFloats device(host);
  ASSERT_NE(device.get(), nullptr);
  Status status = (*nccl)->all_reduce_sum(device.get(), host.size());
  ASSERT_TRUE(status.ok()) << status.to_string();
  EXPECT_EQ(device.to_host(), host);  // the sum over one rank is its own buffer, bitwise
  status = (*nccl)->broadcast(device.get(), host.size() * sizeof(float), 0);
  ASSERT_TRUE(status.ok()) << status.to_string();
  EXPECT_EQ(device.to_host(), host);
  ASSERT_TRUE((*nccl)->barrier().ok());
  ASSERT_TRUE((*nccl)->all_reduce_sum(device.get(), 0).ok());

  (*nccl)->abort();
  EXPECT_EQ((*nccl)->all_reduce_sum(device.get(), host.size()).code(), Code::cancelled);
  (*nccl)->abort();  // twice is harmless
}

#endif  // CAIRN_TEST_WITH_CUDA

}  // namespace
}  // namespace cairn
