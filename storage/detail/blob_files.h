// POSIX file helpers for the BlobStore: an owner for file descriptors, a temporary file that
// removes itself unless committed, and the few syscalls the store makes, each turning a failure
// into io_error naming the call, the path and the errno text:
//   "fsync /data/blobs/tmp/put-1a2b3c: Input/output error".
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "runtime/status.h"

namespace cairn::storage::detail {

// io_error "<call> <path>: <strerror(err)>".
Status errno_status(std::string_view call, const std::string& path, int err);

// Owns one file descriptor and closes it when destroyed. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release();
  // Closes now, ignoring the result (for descriptors only read from, or already fsync'd).
  void reset();
  // Closes now and reports a failure (close can report a deferred write error).
  Status close(const std::string& path);

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC added; mode 0666 (less the umask) when a file is created. A file that
// is not there is Code::not_found (message "open <path>: No such file or directory").
Result<UniqueFd> open_file(const std::string& path, int flags);
// Writes all of `data`, retrying short writes and EINTR.
Status write_all(int fd, std::string_view data, const std::string& path);
// Reads up to `size` bytes into `buffer`, retrying short reads and EINTR; fewer only at the end
// of the file.
Result<size_t> read_full(int fd, char* buffer, size_t size, const std::string& path);
Status fsync_fd(int fd, const std::string& path);
// fsync of a directory, so that names created, renamed or removed in it are durable.
Status fsync_dir(const std::string& dir);
Status rename_file(const std::string& from, const std::string& to);
// Removing a file that is not there is ok.
Status unlink_file(const std::string& path);
// Sets a file's modification time (the store's clock stamps blobs and uploads, see
// BlobStoreOptions::now).
Status set_mtime(int fd, std::chrono::system_clock::time_point time, const std::string& path);
Status set_mtime(const std::string& path, std::chrono::system_clock::time_point time);

// What stat(2) says about a file, in the units the store uses.
struct FileStat {
  uint64_t size = 0;
  std::chrono::system_clock::time_point mtime;
  bool regular = false;
};
Result<FileStat> stat_fd(int fd, const std::string& path);
// stat(2) of `path`; Code::not_found (message "<path> does not exist") when it is not there.
Result<FileStat> stat_path(const std::string& path);

// A new file named `<prefix><random>` (prefix includes the directory), opened for writing.
// Destroying it closes and removes it unless disown() was called. Movable, not copyable.
class TempFile {
 public:
  static Result<TempFile> create(const std::string& prefix);
  ~TempFile();
  TempFile(TempFile&& other) noexcept;
  TempFile& operator=(TempFile&&) = delete;
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  // fsync and close; the file is still removed on destruction unless disowned.
  Status finish();
  // The file was renamed or removed by the caller: destruction leaves its name alone.
  void disown() { owned_ = false; }
  // finish(), rename to `dest` (replacing what is there), disown() and fsync dest's directory.
  Status commit(const std::string& dest);

 private:
  TempFile(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
  bool owned_ = true;
};

// The directory part of `path` ("." when it has none).
std::string parent_dir(const std::string& path);

}  // namespace cairn::storage::detail
