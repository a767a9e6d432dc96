#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this reader maps it as is");

namespace cairn::safetensors {
namespace {

using nlohmann::json;

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DtypeEntry, 12> kDtypes = {{
    {Dtype::f64, "F64", 8},
    {Dtype::f32, "F32", 4},
    {Dtype::f16, "F16", 2},
    {Dtype::bf16, "BF16", 2},
    {Dtype::i64, "I64", 8},
    {Dtype::i32, "I32", 4},
    {Dtype::i16, "I16", 2},
    {Dtype::i8, "I8", 1},
    {Dtype::u8, "U8", 1},
    {Dtype::boolean, "BOOL", 1},
    {Dtype::f8_e4m3, "F8_E4M3", 1},
    {Dtype::f8_e5m2, "F8_E5M2", 1},
}};

const DtypeEntry& entry(Dtype dtype) {
  for (const auto& e : kDtypes) {
    if (e.dtype == dtype) return e;
  }
  return kDtypes[1];  // unreachable: every enumerator is in the table
}

std::string errno_text() { return std::strerror(errno); }

// Closes a file descriptor on every path out of a scope.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Closes now, reporting failure (a failed close after writing can mean lost data).
  bool close() {
    int fd = std::exchange(fd_, -1);
    return fd < 0 || ::close(fd) == 0;
  }

 private:
  int fd_;
};

// product(shape) * element_size, or nullopt on overflow.
std::optional<uint64_t> byte_size(const std::vector<int64_t>& shape, size_t element_size) {
  uint64_t total = element_size;
  for (int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (dim != 0 && total > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(dim)) {
      return std::nullopt;
    }
    total *= static_cast<uint64_t>(dim);
  }
  return total;
}

// A JSON number that is a non-negative integer; nlohmann stores those as unsigned.
bool as_unsigned(const json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

// Parses and checks one tensor entry of the header; `data_size` is the data section's length.
Status parse_tensor(const std::string& name, const json& value, uint64_t data_size, TensorInfo* out) {
  auto corrupt = [&](const std::string& what) {
    return error(Code::data_loss, "tensor \"" + name + "\": " + what);
  };
  if (!value.is_object()) return corrupt("header entry is not an object");
  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end() || !dtype_it->is_string()) return corrupt("\"dtype\" is missing or not a string");
  auto dtype = dtype_from_name(dtype_it->get<std::string>());
  if (!dtype) {
    return error(Code::invalid_argument,
                 "tensor \"" + name + "\": unknown dtype \"" + dtype_it->get<std::string>() + "\"");
  }
  auto shape_it = value.find("shape");
  if (shape_it == value.end() || !shape_it->is_array()) return corrupt("\"shape\" is missing or not an array");
  std::vector<int64_t> shape;
  for (const auto& dim : *shape_it) {
    uint64_t d = 0;
    if (!as_unsigned(dim, &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return corrupt("shape " + shape_it->dump() + " has an entry that is not a non-negative integer");
    }
    shape.push_back(static_cast<int64_t>(d));
  }
  auto offsets_it = value.find("data_offsets");
  uint64_t begin = 0, end = 0;
  if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !as_unsigned((*offsets_it)[0], &begin) || !as_unsigned((*offsets_it)[1], &end)) {
    return corrupt("\"data_offsets\" is missing or not two non-negative integers");
  }
  if (begin > end) {
    return corrupt("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] end before they begin");
  }
  auto expected = byte_size(shape, dtype_size(*dtype));
  if (!expected) return corrupt("shape " + shape_it->dump() + " overflows");
  if (*expected != end - begin) {
    return corrupt("shape " + shape_it->dump() + " of " + std::string(dtype_name(*dtype)) + " needs " +
                   std::to_string(*expected) + " bytes but data_offsets [" + std::to_string(begin) + ", " +
                   std::to_string(end) + "] hold " + std::to_string(end - begin));
  }
  if (end > data_size) {
    return corrupt("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] run past the data section (" + std::to_string(data_size) + " bytes; is the file truncated?)");
  }
  out->name = name;
  out->dtype = *dtype;
  out->shape = std::move(shape);
  out->offset = begin;
  out->size = end - begin;
  return Status::ok_status();
}

Status write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return error(Code::io_error, "write: " + errno_text());
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return Status::ok_status();
}

Status sync_directory_of(const std::string& path) {
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return error(Code::io_error, dir + ": open for sync: " + errno_text());
  FdCloser closer(fd);
  if (::fsync(fd) != 0) return error(Code::io_error, dir + ": fsync: " + errno_text());
  return Status::ok_status();
}

}  // namespace

std::string_view dtype_name(Dtype dtype) { return entry(dtype).name; }

std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const auto& e : kDtypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

size_t dtype_size(Dtype dtype) { return entry(dtype).size; }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The mapped file; unmapped when the last owner goes.
struct Reader::Mapping {
  void* address = nullptr;
  size_t length = 0;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (address != nullptr) ::munmap(address, length);
  }
};

Reader::~Reader() = default;

Result<Reader> Reader::open(const std::string& path) {
  auto fail = [&](Code code, const std::string& what) { return error(code, path + ": " + what); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno == ENOENT ? Code::not_found : Code::io_error, "open: " + errno_text());
  FdCloser closer(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(Code::io_error, "fstat: " + errno_text());
  if (!S_ISREG(st.st_mode)) return fail(Code::invalid_argument, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return fail(Code::data_loss, "truncated: " + std::to_string(file_size) +
                                     " bytes, but a safetensors file starts with an 8-byte header length");
  }

  auto mapping = std::make_shared<Mapping>();
  // Private and writable: copy-on-write pages, so tensors that view the file may be modified in
  // place without touching it. The fd may close once mapped.
  void* address = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (address == MAP_FAILED) return fail(Code::io_error, "mmap: " + errno_text());
  mapping->address = address;
  mapping->length = file_size;
  auto* bytes = static_cast<std::byte*>(address);

  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);
  if (header_size > kMaxHeaderBytes) {
    return fail(Code::data_loss, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                                     std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_size > file_size - 8) {
    return fail(Code::data_loss, "truncated: header length " + std::to_string(header_size) +
                                     " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
  }
  const uint64_t data_size = file_size - 8 - header_size;
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header = json::parse(header_begin, header_begin + header_size, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return fail(Code::data_loss, "header is not valid JSON");
  if (!header.is_object()) return fail(Code::data_loss, "header is not a JSON object");

  Reader reader;
  reader.path_ = path;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return fail(Code::data_loss, "\"__metadata__\" is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return fail(Code::data_loss, "\"__metadata__\" value of \"" + m.key() + "\" is not a string");
        }
        reader.metadata_.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    TensorInfo info;
    Status status = parse_tensor(it.key(), it.value(), data_size, &info);
    if (!status.ok()) return status.with_context(path);
    reader.tensors_.push_back(std::move(info));
  }

  // Ranges may leave gaps but must not overlap (zero-sized tensors occupy nothing).
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : reader.tensors_) {
    if (t.size > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& cur = *by_offset[i];
    if (cur.offset < prev.offset + prev.size) {
      return fail(Code::data_loss, "tensor \"" + cur.name + "\" (bytes " + std::to_string(cur.offset) + ".." +
                                       std::to_string(cur.offset + cur.size) + ") overlaps tensor \"" +
                                       prev.name + "\" (bytes " + std::to_string(prev.offset) + ".." +
                                       std::to_string(prev.offset + prev.size) + ")");
    }
  }
  // nlohmann::json objects iterate in key order, so tensors_ is already sorted by name.
  reader.mapping_ = std::move(mapping);
  reader.data_section_ = bytes + 8 + header_size;
  return reader;
}

const TensorInfo* Reader::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

std::byte* Reader::data(const TensorInfo& info) const { return data_section_ + info.offset; }

Status write_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  auto invalid = [&](const std::string& what) { return error(Code::invalid_argument, path + ": " + what); };
  std::vector<const TensorToWrite*> order;
  for (const auto& t : tensors) {
    if (t.name.empty()) return invalid("a tensor has an empty name");
    if (t.name == "__metadata__") return invalid("\"__metadata__\" is reserved and cannot name a tensor");
    auto size = byte_size(t.shape, dtype_size(t.dtype));
    if (!size) return invalid("tensor \"" + t.name + "\" has a negative or overflowing shape");
    if (*size > 0 && t.data == nullptr) return invalid("tensor \"" + t.name + "\" has no data");
    order.push_back(&t);
  }
  // Largest element first, then by name: the reference layout, which keeps every tensor aligned to
  // its element size when the header is padded to 8 bytes.
  std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    if (sa != sb) return sa > sb;
    return a->name < b->name;
  });
  {
    std::vector<std::string_view> names;
    for (const auto* t : order) names.push_back(t->name);
    std::sort(names.begin(), names.end());
    auto dup = std::adjacent_find(names.begin(), names.end());
    if (dup != names.end()) return invalid("tensor \"" + std::string(*dup) + "\" appears twice");
  }

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto* t : order) {
    uint64_t size = *byte_size(t->shape, dtype_size(t->dtype));
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return error(Code::io_error, temp + ": open: " + errno_text());
  FdCloser closer(fd);
  auto abandon = [&](const Status& status) {
    closer.close();
    ::unlink(temp.c_str());
    return status.with_context(temp);
  };
  Status status = write_all(fd, &header_size, 8);
  if (status.ok()) status = write_all(fd, header_text.data(), header_text.size());
  for (const auto* t : order) {
    if (!status.ok()) break;
    status = write_all(fd, t->data, *byte_size(t->shape, dtype_size(t->dtype)));
  }
  if (!status.ok()) return abandon(status);
  if (::fsync(fd) != 0) return abandon(error(Code::io_error, "fsync: " + errno_text()));
  if (!closer.close()) return abandon(error(Code::io_error, "close: " + errno_text()));
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    Status failed = error(Code::io_error, "rename to " + path + ": " + errno_text());
    ::unlink(temp.c_str());
    return failed.with_context(temp);
  }
  return sync_directory_of(path);
}

}  // namespace cairn::safetensors
