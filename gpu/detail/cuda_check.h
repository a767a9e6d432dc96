// Every CUDA runtime call goes through CAIRN_CUDA_CHECK, which names the call, file and line.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "runtime/status.h"

#define CAIRN_CUDA_CHECK(call)                                                                          \
  do {                                                                                                  \
    cudaError_t cairn_cuda_err_ = (call);                                                               \
    if (cairn_cuda_err_ != cudaSuccess) {                                                               \
      return ::cairn::Status(::cairn::Code::internal, std::string(#call) + " at " + __FILE__ + ":" +    \
                                                          std::to_string(__LINE__) + ": " +              \
                                                          cudaGetErrorString(cairn_cuda_err_));          \
    }                                                                                                   \
  } while (0)
