// The artifact blob store: files named by their sha256, written durably (temporary name, fsync,
// rename, fsync of the directory), deduplicated, uploaded in resumable chunks and verified against
// their name whenever they are read, so a corrupt blob is reported and never served.
//
// Layout under the store's directory (fixed; never change once released):
//   blobs/<first 2 hex of sha256>/<sha256>   the blobs (prefix directories made as needed);
//   uploads/<sha256>.part                    chunked uploads in progress (kept across restarts);
//   tmp/                                     put_bytes/put_file files being written (open() empties it);
//   LOCK                                     flock'd by the one BlobStore that has the directory open.
//
// Errors, for every method:
//   bad_request  a sha256 argument that is not 64 lowercase hex characters (the file system is
//                never touched for it), or a bad upload or read argument; the message names it;
//   not_found    the blob is not in the store;
//   data_loss    the bytes of a blob or an upload do not hash to its sha256 (the message names it);
//   invalid_argument  BlobReader::read with max_bytes 0;
//   unavailable  open(): another BlobStore, in this process or another, has the directory open;
//   io_error     a syscall failed; the message names the call, the path and the errno text.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"
#include "storage/sha256.h"

namespace cairn::storage {

namespace detail {
class UniqueFd;
struct BlobUpload;
}  // namespace detail

struct BlobInfo {
  std::string sha256;  // 64 lowercase hex
  uint64_t size = 0;   // bytes
};

struct UploadProgress {
  uint64_t received = 0;  // bytes the store holds for this upload (the blob's size once complete)
  bool complete = false;  // the blob is in the store (also when it already was: deduplicated)
};

struct GcStats {
  uint64_t blobs_removed = 0;
  uint64_t bytes_freed = 0;  // the sizes of the blobs removed (partial uploads not counted)
  uint64_t blobs_kept = 0;   // referenced, or unreferenced but younger than gc_grace
  uint64_t uploads_removed = 0;
};

struct BlobStoreOptions {
  // write_chunk refuses an upload whose stated size is larger than this (bad_request), so a
  // client cannot claim more than the disk is meant to give one artifact. Default 64 GiB.
  uint64_t max_upload_bytes = uint64_t{64} << 30;
  // collect_garbage keeps an unreferenced blob stored, or stored again (a deduplicated put or
  // upload), less than this long ago. A client uploads an artifact's blob before it registers
  // the version that references it; the grace keeps a gc that runs in between from removing the
  // blob. Longer: more garbage survives a gc; shorter: a slower registration can lose its blob.
  // Default 1 hour.
  std::chrono::seconds gc_grace = std::chrono::hours(1);
  // The clock that stamps blobs and uploads (as their modification times) and that
  // collect_garbage measures ages against; called from any thread that calls the store. Empty
  // (the default): std::chrono::system_clock::now. Tests pass a fake to age files without waiting.
  std::function<std::chrono::system_clock::time_point()> now;
};

// Reads one blob in chunks, hashing as it goes. The read that reaches the end verifies the
// sha256 and returns data_loss (naming the blob) instead of the last bytes when it does not
// match; so does a read that finds the file shorter than it was when opened. An error is
// sticky: every later read returns it again. Holds its own file descriptor, so it may outlive
// the store, and a blob removed by collect_garbage while it is read is still read to the end.
// Not thread-safe; distinct readers may be used concurrently.
class BlobReader {
 public:
  virtual ~BlobReader();
  // The next up to max_bytes bytes (fewer only at the end); "" once the whole blob was read and
  // verified. max_bytes 0 is invalid_argument.
  virtual Result<std::string> read(size_t max_bytes) = 0;
  // The blob's size in bytes.
  virtual uint64_t size() const = 0;
  // Where the next read starts.
  virtual uint64_t offset() const = 0;
};

// One directory of blobs (see the layout above). Thread-safe: any method from any thread. One
// BlobStore per directory at a time (open() takes an flock on <dir>/LOCK).
class BlobStore {
 public:
  // Opens the store in `dir`, creating it and its subdirectories as needed, and removes files
  // left in tmp/ by a put that did not finish. Uploads in progress are kept.
  static Result<std::unique_ptr<BlobStore>> open(const std::string& dir,
                                                 const BlobStoreOptions& options = {});
  ~BlobStore();
  BlobStore(const BlobStore&) = delete;
  BlobStore& operator=(const BlobStore&) = delete;

  const std::string& dir() const { return dir_; }

  // Whether the blob is in the store; false for a bad sha256 or a failed stat.
  bool contains(std::string_view sha256) const;
  Result<BlobInfo> stat(std::string_view sha256) const;

  // Store bytes / a copy of a local file, hashing while writing to a temporary name in tmp/, then
  // fsync the file, rename it into blobs/ and fsync that directory: when they return ok the blob
  // is durable. Deduplicated: when the blob is already there (same size), it is left alone and
  // only stamped as stored now (see gc_grace). A blob file of the wrong size is taken to be
  // damaged and is replaced. put_bytes hashes first, so it skips the write of a stored blob.
  // put_file: io_error names `path` when it cannot be read.
  Result<BlobInfo> put_bytes(std::string_view bytes);
  Result<BlobInfo> put_file(const std::string& path);

  // One chunk of a resumable upload of a blob whose sha256 and size the client states up front.
  // Chunks must arrive at offset == received (else bad_request naming both), and may not pass
  // `size` (bad_request); `size` above max_upload_bytes is bad_request. A client that
  // reconnects (to this store or to a new one on the same directory after a restart) first asks
  // with an empty chunk at offset 0 to learn `received` (`last` is ignored on such a question).
  // When received == size, or `last` is set on a chunk, the upload is verified: a received size other than
  // `size`, or bytes that do not hash to `sha256`, is data_loss and the partial upload is
  // discarded (the client starts again from 0). A verified upload is fsync'd and renamed into the
  // store, and the reply says complete. Uploading a blob already in the store (same size)
  // completes at once, deduplicated. Chunks are appended without fsync: the ack of a chunk is not
  // durable, but `received` always reports what the store holds, and only the final, verified
  // blob counts.
  // Chunks of one upload are applied one at a time; chunks of distinct uploads run concurrently.
  Result<UploadProgress> write_chunk(std::string_view sha256, uint64_t size, uint64_t offset,
                                     std::string_view data, bool last);

  // A reader from `offset` (bad_request when past the end). With offset > 0 the prefix is read
  // and hashed here, before returning, so the last read still verifies the whole blob.
  Result<std::unique_ptr<BlobReader>> open_reader(std::string_view sha256, uint64_t offset = 0) const;
  // Reads the whole blob: ok, or data_loss when it does not hash to its name.
  Status verify(std::string_view sha256) const;
  // Copies the blob to the file `dest` (replaced if there; its directory must exist), verified:
  // written under a temporary name beside dest, fsync'd and renamed only once the whole blob has
  // verified, so a corrupt blob never lands as a file (data_loss, and no file at dest).
  Status export_to(std::string_view sha256, const std::string& dest) const;

  // Removes every blob for which referenced(sha256) is false, unless it was stored less than
  // options.gc_grace ago, and every upload untouched for longer than upload_max_age (an upload
  // receiving a chunk at that moment is skipped). `referenced` is called without the store's
  // lock held, once per blob, and must not call back into this store.
  Result<GcStats> collect_garbage(const std::function<bool(const std::string& sha256)>& referenced,
                                  std::chrono::seconds upload_max_age);
  // Visits every blob, in order of sha256. A blob removed during the walk may or may not be seen.
  Status for_each_blob(const std::function<void(const BlobInfo&)>& visit) const;

 private:
  BlobStore(std::string dir, const BlobStoreOptions& options, std::unique_ptr<detail::UniqueFd> lock);

  std::chrono::system_clock::time_point now() const;
  std::string blob_path(std::string_view sha256) const;
  std::string upload_path(std::string_view sha256) const;
  Result<BlobInfo> store_stream(const std::function<Result<std::string_view>()>& next_chunk);
  Result<bool> stamp_if_present(std::string_view sha256, uint64_t size);
  Result<bool> stamp_if_present_locked(std::string_view sha256, uint64_t size);
  Status commit_locked(const std::string& temp_path, std::string_view sha256, uint64_t size);
  Result<std::vector<std::string>> list_blobs() const;
  std::shared_ptr<detail::BlobUpload> acquire_upload(std::string_view sha256);
  void forget_upload(detail::BlobUpload& upload, std::string_view sha256);
  Result<UploadProgress> write_chunk_locked(detail::BlobUpload& upload, std::string_view sha256,
                                            uint64_t size, uint64_t offset, std::string_view data,
                                            bool last);
  Result<UploadProgress> finish_upload(detail::BlobUpload& upload, std::string_view sha256,
                                       uint64_t size);

  // Constant after construction.
  const std::string dir_;
  const std::string blobs_dir_;
  const std::string uploads_dir_;
  const std::string tmp_dir_;
  const BlobStoreOptions options_;
  const std::unique_ptr<detail::UniqueFd> lock_;  // holds the flock on <dir>/LOCK

  // Guards uploads_, and makes each "is the blob there? then stamp it / rename over it / remove
  // it" decision of puts, uploads and collect_garbage atomic against the others. Lock order: an
  // upload's own mutex, then mutex_ (collect_garbage only try_locks an upload's mutex).
  mutable std::mutex mutex_;
  // Uploads some call is working on or has worked on since the last restart, by sha256; an
  // upload not here is rebuilt from its .part file.
  std::map<std::string, std::shared_ptr<detail::BlobUpload>, std::less<>> uploads_;
};

}  // namespace cairn::storage
