// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON describing every tensor (dtype, shape, byte range in the data section)
// plus an optional "__metadata__" map of strings, then the data section.
//
// This header is torch-free. model/safetensors_torch.h turns entries into at::Tensors and writes
// at::Tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn::safetensors {

// Element types, named in files as "F32", "BF16", ... Files are little-endian, as is every host
// Cairn builds on.
enum class Dtype : uint8_t {
  f64,
  f32,
  f16,
  bf16,
  i64,
  i32,
  i16,
  i8,
  u8,
  boolean,  // "BOOL", one byte per element
  f8_e4m3,  // "F8_E4M3"
  f8_e5m2,  // "F8_E5M2"
};

// The file's name for a dtype: "F32".
std::string_view dtype_name(Dtype dtype);
// The dtype a file names "F32", or nullopt for a name this reader does not know.
std::optional<Dtype> dtype_from_name(std::string_view name);
// Bytes per element.
size_t dtype_size(Dtype dtype);

// A header may be at most this long (the limit of the reference implementation).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// One tensor's entry in the header.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::f32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t size = 0;    // bytes: product(shape) * dtype_size(dtype)

  int64_t numel() const;
};

// A safetensors file opened for reading: the whole file is memory-mapped once and its header
// validated; tensors are then read from the mapping without copies.
//
// The mapping is private and copy-on-write: writing through data() changes this process's view,
// never the file. It lives as long as the Reader or any handle from keep_alive(), so tensors that
// view it (model/safetensors_torch.h) outlive the Reader. Movable, not copyable; thread-safe for
// concurrent readers.
class Reader {
 public:
  // Opens and validates `path`. Errors name the file (and the tensor when one is at fault):
  //   not_found / io_error: the file cannot be opened, stat'ed or mapped;
  //   data_loss: the file is truncated, the header length is out of range, the header is not JSON
  //     or not the expected shape, a tensor's shape does not match its byte range, a range lies
  //     outside the data section or overlaps another;
  //   invalid_argument: a tensor's dtype is one this reader does not know.
  static Result<Reader> open(const std::string& path);

  Reader(Reader&&) noexcept = default;
  Reader& operator=(Reader&&) noexcept = default;
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  ~Reader();

  const std::string& path() const { return path_; }
  // Every tensor, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The tensor with this name, or nullptr.
  const TensorInfo* find(std::string_view name) const;
  // The "__metadata__" map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The first byte of a tensor's data (info must come from this Reader). Valid while the mapping
  // lives; writable, copy-on-write.
  std::byte* data(const TensorInfo& info) const;
  // A handle that keeps the mapping alive; for views that outlive the Reader.
  std::shared_ptr<void> keep_alive() const { return mapping_; }

 private:
  struct Mapping;
  Reader() = default;

  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  std::byte* data_section_ = nullptr;  // inside mapping_
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write. `data` points at size() bytes in the file's byte order (little-endian);
// it must stay valid until write_file returns.
struct TensorToWrite {
  std::string name;
  Dtype dtype = Dtype::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a safetensors file the way the reference implementation lays it out: tensors ordered by
// alignment (largest element first) then name, so every tensor starts at a multiple of its
// element size; the header padded with spaces to a multiple of 8 bytes. The file is written to
// "<path>.tmp-<pid>", synced, renamed over `path`, and the directory synced, so `path` is either
// the old file or the complete new one.
// Errors: invalid_argument for an empty, duplicate or reserved ("__metadata__") name, a negative
// dimension or a null `data` with a non-empty shape; io_error when writing fails (the temporary
// file is removed).
Status write_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace cairn::safetensors
