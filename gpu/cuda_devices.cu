#include "gpu/detail/cuda_check.h"
#include "gpu/gpu.h"

namespace cairn::gpu {
namespace {

__global__ void saxpy_kernel(int n, float x, const float* a, const float* b, float* out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] * x + b[i];
}

// Frees device memory on every exit path.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float** out() { return &ptr_; }
  float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
};

}  // namespace

bool built_with_cuda() { return true; }

Result<std::vector<DeviceInfo>> devices() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  // No driver or no device is a normal machine, not an error.
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    return std::vector<DeviceInfo>{};
  }
  if (err != cudaSuccess) {
    return Status(Code::internal, std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err));
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    out.push_back({i, prop.name, static_cast<uint64_t>(prop.totalGlobalMem), prop.major, prop.minor});
  }
  return out;
}

namespace {
Status saxpy_impl(int device, float x, const std::vector<float>& a, const std::vector<float>& b,
                  std::vector<float>& out) {
  const size_t n = a.size();
  const size_t bytes = n * sizeof(float);
  CAIRN_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer da, db, dout;
  CAIRN_CUDA_CHECK(cudaMalloc(da.out(), bytes));
  CAIRN_CUDA_CHECK(cudaMalloc(db.out(), bytes));
  CAIRN_CUDA_CHECK(cudaMalloc(dout.out(), bytes));
  CAIRN_CUDA_CHECK(cudaMemcpy(da.get(), a.data(), bytes, cudaMemcpyHostToDevice));
  CAIRN_CUDA_CHECK(cudaMemcpy(db.get(), b.data(), bytes, cudaMemcpyHostToDevice));
  int threads = 256;
  int blocks = static_cast<int>((n + threads - 1) / threads);
  saxpy_kernel<<<blocks, threads>>>(static_cast<int>(n), x, da.get(), db.get(), dout.get());
  CAIRN_CUDA_CHECK(cudaGetLastError());
  out.resize(n);
  CAIRN_CUDA_CHECK(cudaMemcpy(out.data(), dout.get(), bytes, cudaMemcpyDeviceToHost));
  return {};
}
}  // namespace

Status saxpy(int device, float x, const std::vector<float>& a, const std::vector<float>& b, std::vector<float>& out) {
  if (a.size() != b.size()) return Status(Code::invalid_argument, "saxpy: a and b differ in length");
  return saxpy_impl(device, x, a, b, out);
}

}  // namespace cairn::gpu
