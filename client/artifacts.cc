#include "cairn/artifacts.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>

#include <openssl/evp.h>

namespace cairn {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

Status io_error(const std::string& what, const std::string& path, int err = errno) {
  return Status(Code::io_error, what + " " + path + ": " + std::strerror(err));
}

// An open file descriptor, closed on destruction.
class FileHandle {
 public:
  explicit FileHandle(int fd = -1) : fd_(fd) {}
  ~FileHandle() { reset(); }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int get() const { return fd_; }
  // Closes now; returns close()'s errno, 0 on success.
  int reset() {
    int err = 0;
    if (fd_ >= 0 && ::close(fd_) != 0) err = errno;
    fd_ = -1;
    return err;
  }

 private:
  int fd_;
};

// SHA-256 through OpenSSL's EVP interface.
class Sha256Hasher {
 public:
  Sha256Hasher() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256Hasher() { EVP_MD_CTX_free(ctx_); }
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;
  void update(const char* data, size_t size) { EVP_DigestUpdate(ctx_, data, size); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_, digest, &length);
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
      out.push_back(kHex[digest[i] >> 4]);
      out.push_back(kHex[digest[i] & 15]);
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Reads exactly `size` bytes at `offset` (fewer only at end of file).
Result<size_t> read_at(int fd, char* out, size_t size, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("cannot read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status write_all(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("cannot write", path);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return Status();
}

void report(const ArtifactTransferOptions& options, const std::string& path, uint64_t done, uint64_t total,
            bool finished) {
  if (!options.on_progress) return;
  TransferProgress p;
  p.path = path;
  p.bytes_done = done;
  p.bytes_total = total;
  p.finished = finished;
  options.on_progress(p);
}

// Whether `path` is a relative path that stays inside the directory it is joined to.
bool is_contained_relative_path(const std::string& path) {
  if (path.empty() || path.front() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

}  // namespace

Result<std::string> sha256_file(const std::string& path) {
  FileHandle fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return io_error("cannot open", path);
  Sha256Hasher hasher;
  std::string buffer(1u << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("cannot read", path);
    }
    if (n == 0) break;
    hasher.update(buffer.data(), static_cast<size_t>(n));
  }
  return hasher.hex();
}

Result<UploadResult> upload_artifact(Client& client, const std::string& file, const std::string& artifact_path,
                                     const ArtifactTransferOptions& options) {
  if (options.chunk_bytes == 0) return Status(Code::invalid_argument, "chunk_bytes: must be at least 1");
  FileHandle fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return io_error("cannot open", file);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return io_error("cannot stat", file);
  auto sha256 = sha256_file(file);
  if (!sha256.ok()) return sha256.status();

  UploadResult result;
  result.artifact.path = artifact_path;
  result.artifact.sha256 = *sha256;
  result.artifact.size = static_cast<uint64_t>(st.st_size);
  const uint64_t size = result.artifact.size;

  // Chunks go out `upload_window` at a time; the node applies them in order (one connection, one
  // actor), so the window only hides round trips. Returns the first failure.
  auto send_from = [&](uint64_t offset) -> Status {
    struct InFlight {
      std::future<Result<std::string>> reply;
      bool last;
    };
    std::deque<InFlight> window;
    Status failure;
    auto settle_oldest = [&]() {
      InFlight oldest = std::move(window.front());
      window.pop_front();
      auto body = oldest.reply.get();
      if (!failure.ok()) return;
      if (!body.ok()) {
        failure = body.status().with_context(artifact_path);
        return;
      }
      auto reply = wire::decode_bytes<msg::UploadReply>(*body);
      if (!reply.ok()) {
        failure = reply.status().with_context(artifact_path);
      } else if (oldest.last && !reply->complete) {
        failure = Status(Code::internal, artifact_path + ": the node took the last chunk but did not complete the blob");
      } else {
        report(options, artifact_path, reply->received, size, oldest.last);
      }
    };
    msg::UploadChunk chunk;
    chunk.sha256 = result.artifact.sha256;
    chunk.size = size;
    for (;;) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(options.chunk_bytes, size - offset));
      chunk.data.data.resize(want);
      auto got = read_at(fd.get(), chunk.data.data.data(), want, offset, file);
      if (!got.ok()) {
        failure = got.status();
        break;
      }
      if (*got != want) {
        failure = Status(Code::data_loss, file + ": the file shrank while it was uploaded");
        break;
      }
      chunk.offset = offset;
      chunk.last = offset + want == size;
      window.push_back({client.call_future(msg::kUploadArtifact, wire::encode(chunk), options.timeout), chunk.last});
      result.bytes_sent += want;
      offset += want;
      if (window.size() >= std::max<uint32_t>(1, options.upload_window)) settle_oldest();
      if (!failure.ok() || chunk.last) break;
    }
    while (!window.empty()) settle_oldest();
    return failure;
  };

  // Another client uploading the same content moves the node's copy under this one (our chunks
  // then arrive at offsets the node does not expect: bad_request). Ask again and continue from
  // what the node holds, or stop when the other upload completed the blob.
  constexpr int kAttempts = 3;
  Status failure;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    msg::UploadChunk probe;  // an empty chunk: what does the node hold?
    probe.sha256 = result.artifact.sha256;
    probe.size = size;
    auto held = client.call_as<msg::UploadReply>(msg::kUploadArtifact, probe, options.timeout);
    if (!held.ok()) return held.status().with_context(artifact_path);
    if (held->complete) {
      report(options, artifact_path, size, size, true);
      return result;
    }
    if (held->received > size) {
      return Status(Code::internal, artifact_path + ": the node holds " + std::to_string(held->received) +
                                        " bytes of an upload of " + std::to_string(size));
    }
    if (attempt == 0) result.bytes_resumed = held->received;
    failure = send_from(held->received);
    if (failure.ok()) return result;
    if (failure.code() != Code::bad_request) return failure;
  }
  return failure;
}

Result<std::vector<UploadResult>> upload_directory(Client& client, const std::string& dir,
                                                   const ArtifactTransferOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status(Code::invalid_argument, dir + ": not a directory");
  std::vector<std::pair<std::string, std::string>> files;  // (artifact path, file path)
  fs::recursive_directory_iterator it(dir, ec), end;
  if (ec) return Status(Code::io_error, "cannot list " + dir + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return Status(Code::io_error, "cannot list " + dir + ": " + ec.message());
    if (!it->is_regular_file(ec)) continue;
    files.emplace_back(fs::relative(it->path(), dir).generic_string(), it->path().string());
  }
  if (ec) return Status(Code::io_error, "cannot list " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  std::vector<UploadResult> results;
  for (const auto& [artifact_path, file] : files) {
    auto uploaded = upload_artifact(client, file, artifact_path, options);
    if (!uploaded.ok()) return uploaded.status();
    results.push_back(std::move(uploaded).value());
  }
  return results;
}

Status download_artifact(Client& client, const msg::ArtifactRef& artifact, const std::string& dest_file,
                         const ArtifactTransferOptions& options) {
  const fs::path dest(dest_file);
  const fs::path parent = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) return Status(Code::io_error, "cannot create " + parent.string() + ": " + ec.message());
  std::string temp = (parent / ("." + dest.filename().string() + ".XXXXXX")).string();
  FileHandle fd(::mkstemp(temp.data()));
  if (fd.get() < 0) return io_error("cannot create a temporary file in", parent.string());
  struct RemoveUnlessKept {
    std::string path;
    bool keep = false;
    ~RemoveUnlessKept() {
      if (!keep) ::unlink(path.c_str());
    }
  } temp_guard{temp};

  // Written by the client's I/O thread (items, end), read by this one; guarded by mutex.
  struct State {
    std::mutex mutex;
    std::condition_variable cv;
    int fd = -1;
    Sha256Hasher hasher;
    uint64_t received = 0;
    Clock::time_point last_item = Clock::now();
    Status failure;  // a local failure: the stream is cancelled
    bool ended = false;
    Status end;
  };
  auto state = std::make_shared<State>();
  state->fd = fd.get();
  const std::string path = artifact.path.empty() ? artifact.sha256 : artifact.path;
  const uint64_t size = artifact.size;

  // The writes happen on the I/O thread on purpose: while it writes it does not read, so a disk
  // slower than the network holds the node back through TCP instead of queueing chunks here.
  auto on_item = [state, path, size, &options](const std::string& body) {
    std::lock_guard<std::mutex> lock(state->mutex);
    if (!state->failure.ok() || state->fd < 0) return;
    state->last_item = Clock::now();
    auto chunk = wire::decode_bytes<msg::DownloadChunk>(body);
    if (!chunk.ok()) {
      state->failure = chunk.status().with_context(path);
    } else if (chunk->offset != state->received) {
      state->failure = Status(Code::data_loss, path + ": chunk at offset " + std::to_string(chunk->offset) +
                                                   ", expected " + std::to_string(state->received));
    } else if (state->received + chunk->data.data.size() > size) {
      state->failure = Status(Code::data_loss, path + ": the node sent more than " + std::to_string(size) + " bytes");
    } else {
      state->failure = write_all(state->fd, chunk->data.data.data(), chunk->data.data.size(), path);
      state->hasher.update(chunk->data.data.data(), chunk->data.data.size());
      state->received += chunk->data.data.size();
      report(options, path, state->received, size, false);
    }
    if (!state->failure.ok()) state->cv.notify_all();
  };
  auto on_end = [state](const Status& status) {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->ended = true;
    state->end = status;
    state->cv.notify_all();
  };
  msg::DownloadRequest request;
  request.sha256 = artifact.sha256;
  request.chunk_bytes = options.chunk_bytes;
  auto subscription = client.subscribe(msg::kDownloadArtifact, wire::encode(request), on_item, on_end);

  Status failure;
  {
    std::unique_lock<std::mutex> lock(state->mutex);
    for (;;) {
      if (state->ended || !state->failure.ok()) break;
      if (state->cv.wait_until(lock, state->last_item + options.timeout) == std::cv_status::timeout &&
          !state->ended && Clock::now() >= state->last_item + options.timeout) {
        state->failure = Status(Code::timeout, path + ": no data from the node for " +
                                                   std::to_string(options.timeout.count()) + " ms");
      }
    }
    if (!state->failure.ok()) {
      failure = state->failure;
    } else if (!state->end.ok()) {
      failure = state->end.with_context(path);
    }
    state->fd = -1;  // later items (after a local failure) write nothing
    if (!state->ended) {
      lock.unlock();
      subscription->cancel();
    }
  }
  if (!failure.ok()) return failure;
  if (state->received != size) {
    return Status(Code::data_loss, path + ": received " + std::to_string(state->received) + " of " +
                                       std::to_string(size) + " bytes");
  }
  const std::string actual = state->hasher.hex();
  if (actual != artifact.sha256) {
    return Status(Code::data_loss, path + ": sha256 is " + actual + ", expected " + artifact.sha256);
  }
  if (::fsync(fd.get()) != 0) return io_error("cannot fsync", temp);
  if (int err = fd.reset(); err != 0) return io_error("cannot close", temp, err);
  if (::rename(temp.c_str(), dest_file.c_str()) != 0) return io_error("cannot rename " + temp + " to", dest_file);
  temp_guard.keep = true;
  FileHandle dir_fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0 || ::fsync(dir_fd.get()) != 0) return io_error("cannot fsync", parent.string());
  report(options, path, size, size, true);
  return Status();
}

Status download_artifacts(Client& client, const std::vector<msg::ArtifactRef>& artifacts, const std::string& dir,
                          const ArtifactTransferOptions& options) {
  for (const auto& artifact : artifacts) {
    if (!is_contained_relative_path(artifact.path)) {
      return Status(Code::invalid_argument, "artifact path \"" + artifact.path +
                                                "\": not a relative path inside the destination; refusing to write it");
    }
  }
  for (const auto& artifact : artifacts) {
    CAIRN_RETURN_IF_ERROR(download_artifact(client, artifact, (fs::path(dir) / artifact.path).string(), options));
  }
  return Status();
}

}  // namespace cairn
