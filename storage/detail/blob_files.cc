#include "storage/detail/blob_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <system_error>

namespace cairn::storage::detail {
namespace {

timespec to_timespec(std::chrono::system_clock::time_point time) {
  auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch());
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(seconds.count());
  ts.tv_nsec = static_cast<long>((since_epoch - seconds).count());
  return ts;
}

FileStat to_file_stat(const struct stat& st) {
  FileStat out;
  out.size = static_cast<uint64_t>(st.st_size);
  out.regular = S_ISREG(st.st_mode);
  auto since_epoch = std::chrono::seconds(st.st_mtim.tv_sec) + std::chrono::nanoseconds(st.st_mtim.tv_nsec);
  out.mtime = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(since_epoch));
  return out;
}

// 12 random lowercase alphanumerics; collisions are retried by TempFile::create.
std::string random_suffix() {
  static constexpr char kChars[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 generator{std::random_device{}()};
  std::uniform_int_distribution<int> pick(0, sizeof(kChars) - 2);
  std::string suffix(12, '0');
  for (char& c : suffix) c = kChars[pick(generator)];
  return suffix;
}

}  // namespace

Status errno_status(std::string_view call, const std::string& path, int err) {
  return error(Code::io_error,
               std::string(call) + " " + path + ": " + std::generic_category().message(err));
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = other.release();
  }
  return *this;
}

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status UniqueFd::close(const std::string& path) {
  int fd = release();
  if (fd >= 0 && ::close(fd) != 0) return errno_status("close", path, errno);
  return {};
}

Result<UniqueFd> open_file(const std::string& path, int flags) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, 0666);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int err = errno;
    Status status = errno_status("open", path, err);
    if (err == ENOENT) return Status(Code::not_found, status.message());
    return status;
  }
  return UniqueFd(fd);
}

Status write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Result<size_t> read_full(int fd, char* buffer, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd, buffer + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status fsync_fd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return errno_status("fsync", path, errno);
  return {};
}

Status fsync_dir(const std::string& dir) {
  auto fd = open_file(dir, O_RDONLY | O_DIRECTORY);
  if (!fd.ok()) return fd.status();
  return fsync_fd(fd->get(), dir);
}

Status rename_file(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return errno_status("rename", from + " to " + to, errno);
  return {};
}

Status unlink_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return errno_status("unlink", path, errno);
  return {};
}

Status set_mtime(int fd, std::chrono::system_clock::time_point time, const std::string& path) {
  timespec times[2] = {{0, UTIME_OMIT}, to_timespec(time)};
  if (::futimens(fd, times) != 0) return errno_status("futimens", path, errno);
  return {};
}

Status set_mtime(const std::string& path, std::chrono::system_clock::time_point time) {
  timespec times[2] = {{0, UTIME_OMIT}, to_timespec(time)};
  if (::utimensat(AT_FDCWD, path.c_str(), times, 0) != 0) return errno_status("utimensat", path, errno);
  return {};
}

Result<FileStat> stat_fd(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status("fstat", path, errno);
  return to_file_stat(st);
}

Result<FileStat> stat_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return error(Code::not_found, path + " does not exist");
    return errno_status("stat", path, errno);
  }
  return to_file_stat(st);
}

Result<TempFile> TempFile::create(const std::string& prefix) {
  // A name is taken only by a concurrent create that drew the same 12 random characters.
  constexpr int kAttempts = 8;
  std::string path;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    path = prefix + random_suffix();
    int fd;
    do {
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd >= 0) return TempFile(UniqueFd(fd), std::move(path));
    if (errno != EEXIST) break;
  }
  return errno_status("open", path, errno);
}

TempFile::~TempFile() {
  fd_.reset();
  if (owned_ && !path_.empty()) ::unlink(path_.c_str());  // best effort
}

TempFile::TempFile(TempFile&& other) noexcept
    : fd_(std::move(other.fd_)), path_(std::move(other.path_)), owned_(other.owned_) {
  other.owned_ = false;
}

Status TempFile::finish() {
  CAIRN_RETURN_IF_ERROR(fsync_fd(fd_.get(), path_));
  return fd_.close(path_);
}

Status TempFile::commit(const std::string& dest) {
  CAIRN_RETURN_IF_ERROR(finish());
  CAIRN_RETURN_IF_ERROR(rename_file(path_, dest));
  disown();
  return fsync_dir(parent_dir(dest));
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace cairn::storage::detail
