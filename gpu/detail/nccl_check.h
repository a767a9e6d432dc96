// Every NCCL call goes through CAIRN_NCCL_CHECK, which names the call, file and line, and maps
// NCCL's result to a Code: peers and networks failing are `unavailable`, misuse is
// `invalid_argument`, the rest `internal`.
#pragma once

#include <nccl.h>

#include <string>

#include "runtime/status.h"

namespace cairn::gpu::detail {

inline Code nccl_code(ncclResult_t result) {
  switch (result) {
    case ncclSystemError:
    case ncclRemoteError:
      return Code::unavailable;
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return Code::invalid_argument;
    default:
      return Code::internal;
  }
}

inline Status nccl_error(ncclResult_t result, const char* call, const char* file, int line) {
  std::string message = std::string(call) + " at " + file + ":" + std::to_string(line) + ": " + ncclGetErrorString(result);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') message += std::string(" (") + last + ")";
  return Status(nccl_code(result), std::move(message));
}

}  // namespace cairn::gpu::detail

#define CAIRN_NCCL_CHECK(call)                                                                  \
  do {                                                                                          \
    ncclResult_t cairn_nccl_result_ = (call);                                                   \
    if (cairn_nccl_result_ != ncclSuccess) {                                                    \
      return ::cairn::gpu::detail::nccl_error(cairn_nccl_result_, #call, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)
