#include "model/safetensors_torch.h"

#include <torch/version.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "model/detail/torch_error.h"

// libtorch names its float8 types from 2.1 on.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define CAIRN_TORCH_HAS_FLOAT8 1
#endif

namespace cairn::safetensors {

Result<at::ScalarType> scalar_type(Dtype dtype) {
  switch (dtype) {
    case Dtype::f64: return at::kDouble;
    case Dtype::f32: return at::kFloat;
    case Dtype::f16: return at::kHalf;
    case Dtype::bf16: return at::kBFloat16;
    case Dtype::i64: return at::kLong;
    case Dtype::i32: return at::kInt;
    case Dtype::i16: return at::kShort;
    case Dtype::i8: return at::kChar;
    case Dtype::u8: return at::kByte;
    case Dtype::boolean: return at::kBool;
#ifdef CAIRN_TORCH_HAS_FLOAT8
    case Dtype::f8_e4m3: return at::kFloat8_e4m3fn;
    case Dtype::f8_e5m2: return at::kFloat8_e5m2;
#else
    case Dtype::f8_e4m3:
    case Dtype::f8_e5m2:
      break;
#endif
  }
  return error(Code::invalid_argument,
               "dtype " + std::string(dtype_name(dtype)) + " has no libtorch type in this build (libtorch " +
                   TORCH_VERSION + ")");
}

Result<Dtype> dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return Dtype::f64;
    case at::kFloat: return Dtype::f32;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    case at::kLong: return Dtype::i64;
    case at::kInt: return Dtype::i32;
    case at::kShort: return Dtype::i16;
    case at::kChar: return Dtype::i8;
    case at::kByte: return Dtype::u8;
    case at::kBool: return Dtype::boolean;
#ifdef CAIRN_TORCH_HAS_FLOAT8
    case at::kFloat8_e4m3fn: return Dtype::f8_e4m3;
    case at::kFloat8_e5m2: return Dtype::f8_e5m2;
#endif
    default:
      break;
  }
  return error(Code::invalid_argument, std::string("libtorch dtype ") + c10::toString(type) +
                                           " cannot be stored in safetensors");
}

Result<at::Tensor> read_tensor(const Reader& reader, const TensorInfo& info) {
  auto type = scalar_type(info.dtype);
  if (!type.ok()) return type.status().with_context(reader.path() + ": tensor \"" + info.name + "\"");
  try {
    auto options = at::TensorOptions().dtype(*type).device(at::kCPU);
    if (info.size == 0) return at::empty(info.shape, options);
    std::byte* data = reader.data(info);
    if (reinterpret_cast<uintptr_t>(data) % dtype_size(info.dtype) != 0) {
      // A misaligned view would be slow or fault on some paths: copy instead.
      at::Tensor copy = at::empty(info.shape, options);
      std::memcpy(copy.data_ptr(), data, info.size);
      return copy;
    }
    std::shared_ptr<void> keep = reader.keep_alive();
    return at::from_blob(data, info.shape, [keep](void*) mutable { keep.reset(); }, options);
  } catch (...) {
    return detail::current_exception_status(reader.path() + ": tensor \"" + info.name + "\"");
  }
}

Result<at::Tensor> read_tensor(const Reader& reader, std::string_view name) {
  const TensorInfo* info = reader.find(name);
  if (info == nullptr) {
    return error(Code::not_found, reader.path() + ": no tensor \"" + std::string(name) + "\"");
  }
  return read_tensor(reader, *info);
}

Status write_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;  // contiguous CPU tensors whose memory write_file reads
  std::vector<TensorToWrite> entries;
  keep.reserve(tensors.size());
  entries.reserve(tensors.size());
  try {
    for (const auto& [name, tensor] : tensors) {
      if (!tensor.defined()) return error(Code::invalid_argument, path + ": tensor \"" + name + "\" is undefined");
      if (tensor.layout() != at::kStrided) {
        return error(Code::invalid_argument, path + ": tensor \"" + name + "\" is not a dense (strided) tensor");
      }
      auto dtype = dtype_of(tensor.scalar_type());
      if (!dtype.ok()) return dtype.status().with_context(path + ": tensor \"" + name + "\"");
      // Autograd must not see this; .cpu() and .contiguous() return the tensor itself when they can.
      at::Tensor cpu = tensor.detach().cpu().contiguous();
      keep.push_back(cpu);
      entries.push_back({name, *dtype, cpu.sizes().vec(), cpu.data_ptr()});
    }
  } catch (...) {
    return detail::current_exception_status(path);
  }
  return write_file(path, entries, metadata);
}

}  // namespace cairn::safetensors
