// The key-value store layer: ordered key-value pairs in named column families, behind one
// interface with a RocksDB implementation (open_rocks_store) and an in-memory fake
// (MemoryKvStore) that can inject failures. RocksDB types never appear here.
//
// Errors, for every method of every implementation:
//   invalid_argument  an unknown column family (the message names it) or a bad option;
//   unavailable       open_rocks_store: the data dir is locked by another process or store;
//   data_loss         RocksDB reported corruption;
//   io_error          any other storage failure (the message names the RocksDB call and path).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn::storage {

// Every store has this family whether or not it is asked for.
inline constexpr std::string_view kDefaultFamily = "default";

struct WriteOptions {
  // true: the write is in the fsync'd write-ahead log before the call returns, so it survives a
  // crash of the machine. false: it survives a crash of the process only; cheaper. Default true.
  bool sync = true;
};

// A group of writes applied atomically, in the order added (a put then an erase of the same key
// leaves it erased). A plain value: copyable, movable, not thread-safe. Keys and values are
// arbitrary bytes; families are checked only when the batch is written.
class WriteBatch {
 public:
  enum class OpKind : uint8_t { put, erase };
  struct Op {
    OpKind kind;
    std::string family;
    std::string key;
    std::string value;  // empty for erase
  };

  void put(std::string_view family, std::string_view key, std::string_view value);
  void erase(std::string_view family, std::string_view key);
  void clear() { ops_.clear(); }

  size_t size() const { return ops_.size(); }
  bool empty() const { return ops_.empty(); }
  // The writes in the order they were added; read by KvStore implementations.
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

// Visits one key-value pair of a scan; returns false to stop the scan. The views are valid only
// during the call.
using ScanVisitor = std::function<bool(std::string_view key, std::string_view value)>;

// A store of ordered key-value pairs (keys ordered bytewise, as unsigned bytes) in named column
// families. Thread-safe: any thread may call any method concurrently. A write that returns ok is
// visible to every later read on any thread. A failed write changes nothing.
class KvStore {
 public:
  virtual ~KvStore() = default;

  virtual Status put(std::string_view family, std::string_view key, std::string_view value,
                     const WriteOptions& options = {}) = 0;
  // Erasing a key that is not there is ok.
  virtual Status erase(std::string_view family, std::string_view key,
                       const WriteOptions& options = {}) = 0;
  // Applies every write of the batch or none. An unknown family anywhere in the batch fails the
  // whole batch with invalid_argument. An empty batch is ok and writes nothing.
  virtual Status write(const WriteBatch& batch, const WriteOptions& options = {}) = 0;
  // The value, or nullopt when the key is not there (an empty value is not nullopt).
  virtual Result<std::optional<std::string>> get(std::string_view family,
                                                 std::string_view key) = 0;
  // Visits, in key order, the keys that begin with `prefix`: all of them when `start_after` is
  // empty, else only those strictly greater than `start_after` (a paging cursor: pass the last
  // key seen). The scan reads a snapshot taken when it starts, so the visitor may call the store
  // (and its writes are not visited). Stops early, with ok, when the visitor returns false.
  virtual Status scan(std::string_view family, std::string_view prefix,
                      std::string_view start_after, const ScanVisitor& visit) = 0;
  // Writes the memtables of every family to disk, so that the next open need not replay the log.
  virtual Status flush() = 0;
};

struct RocksOptions {
  // Directory of the database; created (with its parents) if missing and create_if_missing.
  std::string path;
  // Column families to open, created if missing, besides "default". Only these and "default"
  // are addressable; other families already in the database are opened (RocksDB requires it)
  // but left untouched.
  std::vector<std::string> families;
  // false: opening a directory with no database fails with io_error. Default true.
  bool create_if_missing = true;
  // Bytes of memtable per family before it is flushed to disk. Larger buffers mean fewer, larger
  // flushes but more memory and a longer log replay after a crash. Default 16 MiB, modest for a
  // node with a few families (RocksDB's own default is 64 MiB).
  size_t write_buffer_bytes = size_t{16} << 20;
};

// Opens (creating if asked) the database at options.path with every family in options.families.
// The store owns the database; destroying it flushes the memtables and closes the database
// (failures there are logged, since a destructor cannot return them). Fails with unavailable and
// a message naming the path when the directory's lock is held: "data dir /x/db is in use by
// another process" (or "... by another store in this process"); invalid_argument for an empty
// path; io_error (data_loss for a corrupt database) otherwise.
Result<std::unique_ptr<KvStore>> open_rocks_store(const RocksOptions& options);

// An in-memory store with the same semantics as the RocksDB one, for fast tests. Nothing is
// durable; WriteOptions::sync is ignored. Thread-safe, as KvStore requires.
class MemoryKvStore final : public KvStore {
 public:
  // A store with `families` and "default", all empty.
  explicit MemoryKvStore(std::vector<std::string> families);
  MemoryKvStore(const MemoryKvStore&) = delete;
  MemoryKvStore& operator=(const MemoryKvStore&) = delete;

  // Fault-injection seam: the next `n` mutating calls (put, erase, write) fail with `status` and
  // change nothing, before any other check. n <= 0 cancels an earlier injection. `status` must
  // not be ok.
  void fail_next_writes(int n, Status status);

  Status put(std::string_view family, std::string_view key, std::string_view value,
             const WriteOptions& options = {}) override;
  Status erase(std::string_view family, std::string_view key,
               const WriteOptions& options = {}) override;
  Status write(const WriteBatch& batch, const WriteOptions& options = {}) override;
  Result<std::optional<std::string>> get(std::string_view family, std::string_view key) override;
  Status scan(std::string_view family, std::string_view prefix, std::string_view start_after,
              const ScanVisitor& visit) override;
  Status flush() override { return Status::ok_status(); }

 private:
  using Family = std::map<std::string, std::string, std::less<>>;

  // Requires mutex_. The family, or invalid_argument naming it.
  Result<Family*> find_family(std::string_view name);
  // Requires mutex_. The injected failure for this mutating call, or ok.
  Status take_injected_failure();

  std::mutex mutex_;
  // Protected by mutex_. The set of families is fixed at construction; their contents change.
  std::map<std::string, Family, std::less<>> families_;
  int failures_left_ = 0;
  Status injected_failure_;
};

}  // namespace cairn::storage
