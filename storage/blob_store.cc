#include "storage/blob_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>
#include <utility>

#include "storage/detail/blob_files.h"

namespace cairn::storage {

namespace detail {

// One chunked upload, shared by the calls working on it (see BlobStore::uploads_).
struct BlobUpload {
  std::mutex mutex;
  // Guarded by mutex:
  // Taken out of BlobStore::uploads_ (completed, discarded or collected): a caller that finds
  // this after locking starts over, looking the upload up again.
  bool abandoned = false;
  // hash and received describe the .part file; false until it was read, and after a failure
  // that may have left the file and them apart (the next call reads the file again).
  bool loaded = false;
  Sha256 hash;
  uint64_t received = 0;
};

}  // namespace detail

namespace {

using detail::BlobUpload;
using detail::FileStat;
using detail::TempFile;
using detail::UniqueFd;

// How much one read or write of a copy moves: large enough that syscalls cost little next to
// the disk, small enough to sit on every thread's stack of work without thought.
constexpr size_t kCopyBufferBytes = size_t{1} << 20;
constexpr std::string_view kPartSuffix = ".part";

Status check_sha256(std::string_view sha256) {
  if (is_sha256_hex(sha256)) return {};
  // Echo at most this much of a bad argument: enough to recognise it, not a whole payload.
  constexpr size_t kShown = 80;
  std::string shown(sha256.substr(0, kShown));
  if (sha256.size() > kShown) shown += "...";
  return error(Code::bad_request, "sha256 \"" + shown + "\" (" + std::to_string(sha256.size()) +
                                      " characters) is not 64 lowercase hex characters");
}

// Whether the directory was created (false: it was there).
Result<bool> make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0777) == 0) return true;
  if (errno == EEXIST) return false;
  return detail::errno_status("mkdir", path, errno);
}

// The names in `dir`, sorted; only regular files and directories' names, never "." or "..".
Result<std::vector<std::string>> list_dir(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> names;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return error(Code::io_error, "list " + dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

std::string not_in_store(std::string_view sha256) {
  return "blob " + std::string(sha256) + " is not in the store";
}

// Reads a blob file from its start, hashing every byte; see BlobReader.
class FileBlobReader final : public BlobReader {
 public:
  FileBlobReader(std::string sha256, std::string path, UniqueFd fd, uint64_t size)
      : sha256_(std::move(sha256)), path_(std::move(path)), fd_(std::move(fd)), size_(size) {}

  // Reads and hashes the first `offset` bytes (offset <= size()); the read that reaches the end
  // verifies, even when that is the first read after this.
  Status skip_to(uint64_t offset) {
    while (offset_ < offset) {
      auto chunk = read_hashed(static_cast<size_t>(std::min<uint64_t>(kCopyBufferBytes, offset - offset_)));
      if (!chunk.ok()) return chunk.status();
    }
    return {};
  }

  Result<std::string> read(size_t max_bytes) override {
    if (max_bytes == 0) return error(Code::invalid_argument, "BlobReader::read: max_bytes is 0");
    auto bytes = read_hashed(max_bytes);
    if (!bytes.ok() || offset_ < size_ || verified_) return bytes;
    std::string digest = hash_.hex_digest();
    if (digest != sha256_) {
      return fail(error(Code::data_loss, "blob " + sha256_ + " is corrupt: the " + std::to_string(size_) +
                                             " bytes of " + path_ + " hash to " + digest));
    }
    verified_ = true;
    return bytes;
  }
  uint64_t size() const override { return size_; }
  uint64_t offset() const override { return offset_; }

 private:
  // The next up to max_bytes bytes, added to hash_; "" at the end.
  Result<std::string> read_hashed(size_t max_bytes) {
    if (!failure_.ok()) return failure_;
    auto want = static_cast<size_t>(std::min<uint64_t>(max_bytes, size_ - offset_));
    std::string bytes(want, '\0');
    auto got = detail::read_full(fd_.get(), bytes.data(), want, path_);
    if (!got.ok()) return fail(got.status());
    if (*got < want) {
      return fail(error(Code::data_loss, "blob " + sha256_ + " is truncated: " + path_ + " ends at byte " +
                                             std::to_string(offset_ + *got) + " of " + std::to_string(size_)));
    }
    hash_.update(bytes);
    offset_ += want;
    return bytes;
  }

  Status fail(Status status) {
    failure_ = std::move(status);
    return failure_;
  }

  const std::string sha256_;
  const std::string path_;
  UniqueFd fd_;
  const uint64_t size_;
  uint64_t offset_ = 0;
  Sha256 hash_;
  bool verified_ = false;  // the whole blob was read and hashes to sha256_
  Status failure_;         // sticky, see BlobReader
};

}  // namespace

BlobReader::~BlobReader() = default;

Result<std::unique_ptr<BlobStore>> BlobStore::open(const std::string& dir, const BlobStoreOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return error(Code::io_error, "create_directories " + dir + ": " + ec.message());

  std::string lock_path = dir + "/LOCK";
  auto lock = detail::open_file(lock_path, O_RDWR | O_CREAT);
  if (!lock.ok()) return lock.status();
  if (::flock(lock->get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return error(Code::unavailable, "blob store " + dir + " is already open (" + lock_path +
                                          " is locked by another BlobStore)");
    }
    return detail::errno_status("flock", lock_path, errno);
  }

  std::unique_ptr<BlobStore> store(
      new BlobStore(dir, options, std::make_unique<UniqueFd>(std::move(*lock))));
  for (const std::string* sub : {&store->blobs_dir_, &store->uploads_dir_, &store->tmp_dir_}) {
    auto made = make_dir(*sub);
    if (!made.ok()) return made.status();
  }
  // Once the directories are durable, renames into them need only their own directory's fsync.
  CAIRN_RETURN_IF_ERROR(detail::fsync_dir(dir));

  // Only a put in progress writes to tmp/, and we hold the lock: anything there is left over.
  auto leftovers = list_dir(store->tmp_dir_);
  if (!leftovers.ok()) return leftovers.status();
  for (const std::string& name : *leftovers) {
    CAIRN_RETURN_IF_ERROR(detail::unlink_file(store->tmp_dir_ + "/" + name));
  }
  return store;
}

BlobStore::BlobStore(std::string dir, const BlobStoreOptions& options, std::unique_ptr<UniqueFd> lock)
    : dir_(std::move(dir)),
      blobs_dir_(dir_ + "/blobs"),
      uploads_dir_(dir_ + "/uploads"),
      tmp_dir_(dir_ + "/tmp"),
      options_(options),
      lock_(std::move(lock)) {}

BlobStore::~BlobStore() = default;

std::chrono::system_clock::time_point BlobStore::now() const {
  return options_.now ? options_.now() : std::chrono::system_clock::now();
}

std::string BlobStore::blob_path(std::string_view sha256) const {
  return blobs_dir_ + "/" + std::string(sha256.substr(0, 2)) + "/" + std::string(sha256);
}

std::string BlobStore::upload_path(std::string_view sha256) const {
  return uploads_dir_ + "/" + std::string(sha256) + std::string(kPartSuffix);
}

bool BlobStore::contains(std::string_view sha256) const { return stat(sha256).ok(); }

Result<BlobInfo> BlobStore::stat(std::string_view sha256) const {
  CAIRN_RETURN_IF_ERROR(check_sha256(sha256));
  auto st = detail::stat_path(blob_path(sha256));
  if (!st.ok()) {
    if (st.status().code() == Code::not_found) return error(Code::not_found, not_in_store(sha256));
    return st.status();
  }
  return BlobInfo{std::string(sha256), st->size};
}

// ---- Writing blobs --------------------------------------------------------------------------

Result<bool> BlobStore::stamp_if_present(std::string_view sha256, uint64_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  return stamp_if_present_locked(sha256, size);
}

// A blob file of another size cannot hold the blob: it is reported absent, so that the caller
// writes the blob and its rename replaces the damaged file.
Result<bool> BlobStore::stamp_if_present_locked(std::string_view sha256, uint64_t size) {
  std::string path = blob_path(sha256);
  auto st = detail::stat_path(path);
  if (!st.ok()) {
    if (st.status().code() == Code::not_found) return false;
    return st.status();
  }
  if (!st->regular || st->size != size) return false;
  CAIRN_RETURN_IF_ERROR(detail::set_mtime(path, now()));
  return true;
}

// `temp_path` is fsync'd and holds the blob; mutex_ is held. Afterwards temp_path is gone.
Status BlobStore::commit_locked(const std::string& temp_path, std::string_view sha256, uint64_t size) {
  auto present = stamp_if_present_locked(sha256, size);
  if (!present.ok()) return present.status();
  if (*present) return detail::unlink_file(temp_path);
  std::string path = blob_path(sha256);
  std::string prefix_dir = detail::parent_dir(path);
  auto made = make_dir(prefix_dir);
  if (!made.ok()) return made.status();
  if (*made) CAIRN_RETURN_IF_ERROR(detail::fsync_dir(blobs_dir_));
  CAIRN_RETURN_IF_ERROR(detail::rename_file(temp_path, path));
  return detail::fsync_dir(prefix_dir);
}

Result<BlobInfo> BlobStore::store_stream(const std::function<Result<std::string_view>()>& next_chunk) {
  auto temp = TempFile::create(tmp_dir_ + "/put-");
  if (!temp.ok()) return temp.status();
  Sha256 hash;
  uint64_t size = 0;
  for (;;) {
    auto chunk = next_chunk();
    if (!chunk.ok()) return chunk.status();
    if (chunk->empty()) break;
    hash.update(*chunk);
    CAIRN_RETURN_IF_ERROR(detail::write_all(temp->fd(), *chunk, temp->path()));
    size += chunk->size();
  }
  CAIRN_RETURN_IF_ERROR(detail::set_mtime(temp->fd(), now(), temp->path()));
  CAIRN_RETURN_IF_ERROR(temp->finish());
  BlobInfo info{hash.hex_digest(), size};
  std::lock_guard<std::mutex> lock(mutex_);
  CAIRN_RETURN_IF_ERROR(commit_locked(temp->path(), info.sha256, size));
  temp->disown();
  return info;
}

Result<BlobInfo> BlobStore::put_bytes(std::string_view bytes) {
  // Hashing first costs far less than writing, and skips the write of a blob already stored.
  BlobInfo info{sha256_hex(bytes), bytes.size()};
  auto present = stamp_if_present(info.sha256, info.size);
  if (!present.ok()) return present.status();
  if (*present) return info;
  bool sent = false;
  return store_stream([&]() -> Result<std::string_view> {
    if (sent) return std::string_view();
    sent = true;
    return bytes;
  });
}

Result<BlobInfo> BlobStore::put_file(const std::string& path) {
  auto source = detail::open_file(path, O_RDONLY);
  if (!source.ok()) return error(Code::io_error, source.status().message());  // also when missing
  std::string buffer(kCopyBufferBytes, '\0');
  return store_stream([&]() -> Result<std::string_view> {
    auto got = detail::read_full(source->get(), buffer.data(), buffer.size(), path);
    if (!got.ok()) return got.status();
    return std::string_view(buffer.data(), *got);
  });
}

// ---- Chunked uploads ------------------------------------------------------------------------

std::shared_ptr<BlobUpload> BlobStore::acquire_upload(std::string_view sha256) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = uploads_.find(sha256);
  if (it == uploads_.end()) it = uploads_.emplace(std::string(sha256), std::make_shared<BlobUpload>()).first;
  return it->second;
}

// The caller holds upload.mutex.
void BlobStore::forget_upload(BlobUpload& upload, std::string_view sha256) {
  upload.abandoned = true;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = uploads_.find(sha256);
  if (it != uploads_.end() && it->second.get() == &upload) uploads_.erase(it);
}

Result<UploadProgress> BlobStore::write_chunk(std::string_view sha256, uint64_t size, uint64_t offset,
                                              std::string_view data, bool last) {
  CAIRN_RETURN_IF_ERROR(check_sha256(sha256));
  if (size > options_.max_upload_bytes) {
    return error(Code::bad_request, "upload of " + std::string(sha256) + ": size " + std::to_string(size) +
                                        " exceeds the maximum of " + std::to_string(options_.max_upload_bytes) +
                                        " bytes");
  }
  for (;;) {
    auto present = stamp_if_present(sha256, size);
    if (!present.ok()) return present.status();
    if (*present) return UploadProgress{size, true};
    std::shared_ptr<BlobUpload> upload = acquire_upload(sha256);
    std::lock_guard<std::mutex> lock(upload->mutex);
    if (upload->abandoned) continue;  // completed or removed meanwhile: look again
    auto progress = write_chunk_locked(*upload, sha256, size, offset, data, last);
    // An upload holding no bytes costs nothing to rebuild: keep uploads_ to uploads with a file,
    // which collect_garbage finds and removes, whatever a client asks about.
    if (!upload->abandoned && upload->loaded && upload->received == 0) forget_upload(*upload, sha256);
    return progress;
  }
}

Result<UploadProgress> BlobStore::write_chunk_locked(BlobUpload& upload, std::string_view sha256,
                                                     uint64_t size, uint64_t offset, std::string_view data,
                                                     bool last) {
  const std::string part = upload_path(sha256);
  const std::string name = "upload of " + std::string(sha256);
  if (!upload.loaded) {
    upload.hash = Sha256();
    upload.received = 0;
    auto fd = detail::open_file(part, O_RDONLY);
    if (!fd.ok() && fd.status().code() != Code::not_found) return fd.status();
    if (fd.ok()) {
      std::string buffer(kCopyBufferBytes, '\0');
      for (;;) {
        auto got = detail::read_full(fd->get(), buffer.data(), buffer.size(), part);
        if (!got.ok()) return got.status();
        if (*got == 0) break;
        upload.hash.update(std::string_view(buffer.data(), *got));
        upload.received += *got;
      }
    }
    upload.loaded = true;
  }

  if (upload.received > size) {
    return error(Code::bad_request, name + ": the store holds " + std::to_string(upload.received) +
                                        " bytes, more than the stated size " + std::to_string(size));
  }
  bool asks_progress = data.empty() && offset == 0;
  if (offset != upload.received && !asks_progress) {
    return error(Code::bad_request, name + ": chunk at offset " + std::to_string(offset) + ", but the store holds " +
                                        std::to_string(upload.received) + " bytes (send from offset " +
                                        std::to_string(upload.received) + ")");
  }
  if (data.size() > size - upload.received) {
    return error(Code::bad_request, name + ": a chunk of " + std::to_string(data.size()) + " bytes at offset " +
                                        std::to_string(offset) + " passes the stated size " + std::to_string(size));
  }

  if (!data.empty()) {
    auto fd = detail::open_file(part, O_WRONLY | O_CREAT | O_APPEND);
    if (!fd.ok()) return fd.status();
    auto st = detail::stat_fd(fd->get(), part);
    if (!st.ok()) return st.status();
    if (st->size != upload.received) {
      upload.loaded = false;
      return error(Code::io_error, name + ": " + part + " holds " + std::to_string(st->size) + " bytes, expected " +
                                       std::to_string(upload.received) + "; it changed outside the store");
    }
    upload.loaded = false;  // until the whole chunk is on disk and hashed
    CAIRN_RETURN_IF_ERROR(detail::write_all(fd->get(), data, part));
    CAIRN_RETURN_IF_ERROR(detail::set_mtime(fd->get(), now(), part));
    CAIRN_RETURN_IF_ERROR(fd->close(part));
    upload.hash.update(data);
    upload.received += data.size();
    upload.loaded = true;
  }

  // `last` on a progress question is ignored: it must not discard what an upload holds.
  if (upload.received == size || (last && !asks_progress)) return finish_upload(upload, sha256, size);
  return UploadProgress{upload.received, false};
}

// Verifies the upload and moves it into the store, or discards it; the caller holds upload.mutex.
Result<UploadProgress> BlobStore::finish_upload(BlobUpload& upload, std::string_view sha256, uint64_t size) {
  const std::string part = upload_path(sha256);
  const std::string name = "upload of " + std::string(sha256);
  auto discard = [&](std::string problem) -> Status {
    Status removed = detail::unlink_file(part);
    forget_upload(upload, sha256);
    problem += "; the partial upload is discarded";
    if (!removed.ok()) problem += " (but " + removed.message() + ")";
    return error(Code::data_loss, name + ": " + problem);
  };
  if (upload.received != size) {
    return discard("it ended at " + std::to_string(upload.received) + " bytes, but its stated size is " +
                   std::to_string(size));
  }
  upload.loaded = false;  // hex_digest() starts the hash over
  std::string digest = upload.hash.hex_digest();
  if (digest != sha256) {
    return discard("the " + std::to_string(size) + " bytes received hash to " + digest);
  }

  // O_CREAT: an empty blob completes without any chunk having created the file.
  auto fd = detail::open_file(part, O_WRONLY | O_CREAT);
  if (!fd.ok()) return fd.status();
  CAIRN_RETURN_IF_ERROR(detail::set_mtime(fd->get(), now(), part));
  CAIRN_RETURN_IF_ERROR(detail::fsync_fd(fd->get(), part));
  CAIRN_RETURN_IF_ERROR(fd->close(part));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CAIRN_RETURN_IF_ERROR(commit_locked(part, sha256, size));
  }
  forget_upload(upload, sha256);
  return UploadProgress{size, true};
}

// ---- Reading blobs --------------------------------------------------------------------------

Result<std::unique_ptr<BlobReader>> BlobStore::open_reader(std::string_view sha256, uint64_t offset) const {
  CAIRN_RETURN_IF_ERROR(check_sha256(sha256));
  std::string path = blob_path(sha256);
  auto fd = detail::open_file(path, O_RDONLY);
  if (!fd.ok()) {
    if (fd.status().code() == Code::not_found) return error(Code::not_found, not_in_store(sha256));
    return fd.status();
  }
  auto st = detail::stat_fd(fd->get(), path);
  if (!st.ok()) return st.status();
  if (offset > st->size) {
    return error(Code::bad_request, "offset " + std::to_string(offset) + " is past the end of blob " +
                                        std::string(sha256) + " (" + std::to_string(st->size) + " bytes)");
  }
  auto reader = std::make_unique<FileBlobReader>(std::string(sha256), path, std::move(*fd), st->size);
  CAIRN_RETURN_IF_ERROR(reader->skip_to(offset));
  return std::unique_ptr<BlobReader>(std::move(reader));
}

Status BlobStore::verify(std::string_view sha256) const {
  auto reader = open_reader(sha256);
  if (!reader.ok()) return reader.status();
  for (;;) {
    auto chunk = (*reader)->read(kCopyBufferBytes);
    if (!chunk.ok()) return chunk.status();
    if (chunk->empty()) return {};
  }
}

Status BlobStore::export_to(std::string_view sha256, const std::string& dest) const {
  auto reader = open_reader(sha256);
  if (!reader.ok()) return reader.status();
  auto temp = TempFile::create(dest + ".cairn-tmp-");
  if (!temp.ok()) return temp.status();
  for (;;) {
    auto chunk = (*reader)->read(kCopyBufferBytes);
    if (!chunk.ok()) return chunk.status();  // temp removes itself: nothing lands at dest
    if (chunk->empty()) break;
    CAIRN_RETURN_IF_ERROR(detail::write_all(temp->fd(), *chunk, temp->path()));
  }
  return temp->commit(dest);
}

// ---- Listing and garbage collection ---------------------------------------------------------

Result<std::vector<std::string>> BlobStore::list_blobs() const {
  auto prefixes = list_dir(blobs_dir_);
  if (!prefixes.ok()) return prefixes.status();
  std::vector<std::string> blobs;
  for (const std::string& prefix : *prefixes) {
    // Anything not named as the store names things is not the store's; leave it alone.
    if (prefix.size() != 2 || !is_sha256_hex(prefix + std::string(62, '0'))) continue;
    auto names = list_dir(blobs_dir_ + "/" + prefix);
    if (!names.ok()) return names.status();
    for (std::string& name : *names) {
      if (is_sha256_hex(name) && name.compare(0, 2, prefix) == 0) blobs.push_back(std::move(name));
    }
  }
  return blobs;
}

Status BlobStore::for_each_blob(const std::function<void(const BlobInfo&)>& visit) const {
  auto blobs = list_blobs();
  if (!blobs.ok()) return blobs.status();
  for (const std::string& sha256 : *blobs) {
    auto info = stat(sha256);
    if (!info.ok()) {
      if (info.status().code() == Code::not_found) continue;  // removed since the listing
      return info.status();
    }
    visit(*info);
  }
  return {};
}

Result<GcStats> BlobStore::collect_garbage(const std::function<bool(const std::string& sha256)>& referenced,
                                           std::chrono::seconds upload_max_age) {
  GcStats stats;
  const auto now = this->now();

  auto parts = list_dir(uploads_dir_);
  if (!parts.ok()) return parts.status();
  for (const std::string& file : *parts) {
    if (file.size() <= kPartSuffix.size() ||
        file.compare(file.size() - kPartSuffix.size(), kPartSuffix.size(), kPartSuffix) != 0) {
      continue;
    }
    std::string sha256 = file.substr(0, file.size() - kPartSuffix.size());
    if (!is_sha256_hex(sha256)) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = uploads_.find(sha256);
    std::unique_lock<std::mutex> upload_lock;
    if (it != uploads_.end()) {
      // try_lock: the lock order is upload then mutex_, and a chunk being written is not stale.
      upload_lock = std::unique_lock<std::mutex>(it->second->mutex, std::try_to_lock);
      if (!upload_lock.owns_lock()) continue;
    }
    std::string path = uploads_dir_ + "/" + file;
    auto st = detail::stat_path(path);
    if (!st.ok()) {
      if (st.status().code() == Code::not_found) continue;
      return st.status();
    }
    if (now - st->mtime <= upload_max_age) continue;
    CAIRN_RETURN_IF_ERROR(detail::unlink_file(path));
    ++stats.uploads_removed;
    if (it != uploads_.end()) {
      it->second->abandoned = true;
      upload_lock.unlock();  // before erase drops what may be the last reference to the mutex
      uploads_.erase(it);
    }
  }

  // A removal that a crash undoes leaves garbage the next gc removes, so removals are not fsync'd.
  auto blobs = list_blobs();
  if (!blobs.ok()) return blobs.status();
  for (const std::string& sha256 : *blobs) {
    if (referenced(sha256)) {
      ++stats.blobs_kept;
      continue;
    }
    std::string path = blob_path(sha256);
    std::lock_guard<std::mutex> lock(mutex_);
    auto st = detail::stat_path(path);
    if (!st.ok()) {
      if (st.status().code() == Code::not_found) continue;
      return st.status();
    }
    if (now - st->mtime < options_.gc_grace) {
      ++stats.blobs_kept;
      continue;
    }
    CAIRN_RETURN_IF_ERROR(detail::unlink_file(path));
    ++stats.blobs_removed;
    stats.bytes_freed += st->size;
  }
  return stats;
}

}  // namespace cairn::storage
