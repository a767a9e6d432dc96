// The bridge between safetensors files (model/safetensors.h) and at::Tensor.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/safetensors.h"
#include "runtime/status.h"

namespace cairn::safetensors {

// The at::ScalarType for a file dtype. invalid_argument for the F8 types where this libtorch has
// no float8 types (before 2.1).
Result<at::ScalarType> scalar_type(Dtype dtype);
// The file dtype for an at::ScalarType; invalid_argument for types safetensors cannot hold
// (complex, quantized).
Result<Dtype> dtype_of(at::ScalarType type);

// A CPU tensor with `info`'s contents (`info` from `reader`). It views the reader's mapping
// without a copy, keeping the mapping alive, when the data is aligned to its element size
// (always so for files written by the reference layout); otherwise it is a copy. Writes to the
// view change this process's copy-on-write pages only, never the file.
// Errors: invalid_argument for a dtype libtorch lacks; internal for a libtorch failure.
Result<at::Tensor> read_tensor(const Reader& reader, const TensorInfo& info);
// The same, by name; not_found (naming file and tensor) when the file has no such tensor.
Result<at::Tensor> read_tensor(const Reader& reader, std::string_view name);

// Writes named tensors with write_file (atomically, reference layout). Tensors may live on any
// device and be non-contiguous: only those that are not contiguous CPU tensors are copied first.
// Errors: those of write_file; invalid_argument for a dtype safetensors cannot hold or a sparse
// tensor, naming it.
Status write_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata = {});

}  // namespace cairn::safetensors
