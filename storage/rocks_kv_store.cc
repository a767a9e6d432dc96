// The RocksDB implementation of KvStore: one database per data directory, one column family per
// entity kind.
#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "storage/detail/messages.h"
#include "storage/detail/rocks_check.h"
#include "storage/detail/scan_range.h"
#include "storage/kv_store.h"

namespace cairn::storage {
namespace {

// Old info logs (the LOG.old.* files RocksDB writes in the data dir) kept; 1000 by default.
constexpr size_t kInfoLogFilesKept = 5;

rocksdb::DBOptions db_options(const RocksOptions& options) {
  rocksdb::DBOptions db;
  // Our own code creates the directory (with parents); RocksDB still creates the files.
  db.create_if_missing = options.create_if_missing;
  db.create_missing_column_families = true;
  db.keep_log_file_num = kInfoLogFilesKept;
  return db;
}

rocksdb::ColumnFamilyOptions family_options(const RocksOptions& options) {
  rocksdb::ColumnFamilyOptions family;
  family.write_buffer_size = options.write_buffer_bytes;
  return family;
}

rocksdb::Slice slice(std::string_view bytes) { return rocksdb::Slice(bytes.data(), bytes.size()); }
std::string_view view(const rocksdb::Slice& bytes) { return {bytes.data(), bytes.size()}; }

class RocksKvStore final : public KvStore {
 public:
  using Handle = rocksdb::ColumnFamilyHandle;

  // Takes ownership of `db` and of every handle in `handles` (opened for `names`, in order);
  // only `addressable` families may be named by callers.
  RocksKvStore(std::string path, rocksdb::DB* db, std::vector<Handle*> handles,
               const std::vector<std::string>& names, const std::vector<std::string>& addressable)
      : path_(std::move(path)), db_(db), handles_(std::move(handles)) {
    for (size_t i = 0; i < names.size(); ++i) {
      if (std::find(addressable.begin(), addressable.end(), names[i]) != addressable.end()) {
        families_.emplace(names[i], handles_[i]);
      }
    }
  }
  RocksKvStore(const RocksKvStore&) = delete;
  RocksKvStore& operator=(const RocksKvStore&) = delete;

  // Flushes, then destroys the handles before closing the database, as RocksDB requires.
  ~RocksKvStore() override {
    log_failure(flush());
    for (Handle* handle : handles_) {
      const std::string name = handle->GetName();
      log_failure(detail::check(db_->DestroyColumnFamilyHandle(handle),
                                {"DestroyColumnFamilyHandle", path_, name}));
    }
    handles_.clear();
    log_failure(detail::check(db_->Close(), {"Close", path_}));
  }

  Status put(std::string_view family, std::string_view key, std::string_view value,
             const WriteOptions& options) override {
    auto handle = find_family(family);
    if (!handle.ok()) return handle.status();
    return detail::check(db_->Put(rocks_write_options(options), *handle, slice(key), slice(value)),
                         {"Put", path_, family, key});
  }

  Status erase(std::string_view family, std::string_view key,
               const WriteOptions& options) override {
    auto handle = find_family(family);
    if (!handle.ok()) return handle.status();
    return detail::check(db_->Delete(rocks_write_options(options), *handle, slice(key)),
                         {"Delete", path_, family, key});
  }

  Status write(const WriteBatch& batch, const WriteOptions& options) override {
    if (batch.empty()) return Status::ok_status();
    rocksdb::WriteBatch rocks_batch;
    for (const auto& op : batch.ops()) {
      auto handle = find_family(op.family);
      if (!handle.ok()) return handle.status();
      if (op.kind == WriteBatch::OpKind::put) {
        CAIRN_RETURN_IF_ERROR(
            detail::check(rocks_batch.Put(*handle, slice(op.key), slice(op.value)),
                          {"WriteBatch::Put", path_, op.family, op.key}));
      } else {
        CAIRN_RETURN_IF_ERROR(detail::check(rocks_batch.Delete(*handle, slice(op.key)),
                                            {"WriteBatch::Delete", path_, op.family, op.key}));
      }
    }
    const std::string what = std::to_string(batch.size()) + " updates";
    return detail::check(db_->Write(rocks_write_options(options), &rocks_batch),
                         {"Write", path_, {}, what});
  }

  Result<std::optional<std::string>> get(std::string_view family, std::string_view key) override {
    auto handle = find_family(family);
    if (!handle.ok()) return handle.status();
    std::string value;
    const rocksdb::Status status = db_->Get(rocksdb::ReadOptions(), *handle, slice(key), &value);
    if (status.IsNotFound()) return std::optional<std::string>();
    CAIRN_RETURN_IF_ERROR(detail::check(status, {"Get", path_, family, key}));
    return std::optional<std::string>(std::move(value));
  }

  Status scan(std::string_view family, std::string_view prefix, std::string_view start_after,
              const ScanVisitor& visit) override {
    auto handle = find_family(family);
    if (!handle.ok()) return handle.status();
    // An iterator reads the implicit snapshot taken when it is created, as the contract asks.
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), *handle));
    const detail::ScanRange range(prefix, start_after);
    for (it->Seek(slice(range.seek_key())); it->Valid(); it->Next()) {
      const std::string_view key = view(it->key());
      if (range.is_past_end(key)) break;
      if (range.is_cursor(key)) continue;
      if (!visit(key, view(it->value()))) break;
    }
    // Valid() is false at the end and on error; only status() tells them apart.
    return detail::check(it->status(), {"Iterator", path_, family, prefix});
  }

  Status flush() override {
    std::vector<Handle*> all(handles_.begin(), handles_.end());
    return detail::check(db_->Flush(rocksdb::FlushOptions(), all), {"Flush", path_});
  }

 private:
  static rocksdb::WriteOptions rocks_write_options(const WriteOptions& options) {
    rocksdb::WriteOptions rocks;
    rocks.sync = options.sync;
    return rocks;
  }

  static void log_failure(const Status& status) {
    if (!status.ok()) spdlog::error("closing the store: {}", status.to_string());
  }

  Result<Handle*> find_family(std::string_view name) const {
    auto it = families_.find(name);
    if (it != families_.end()) return it->second;
    std::vector<std::string_view> open;
    for (const auto& entry : families_) open.push_back(entry.first);
    return detail::unknown_family(name, open);
  }

  // Constant after construction (RocksDB's DB is itself thread-safe).
  const std::string path_;
  const std::unique_ptr<rocksdb::DB> db_;
  std::vector<Handle*> handles_;  // every family opened; owned, destroyed before db_ is closed
  std::map<std::string, Handle*, std::less<>> families_;  // the addressable ones, by name
};

// The families already in the database at `path`, or none when there is no database yet.
Result<std::vector<std::string>> existing_families(const std::string& path,
                                                   const rocksdb::DBOptions& options) {
  std::error_code ec;
  const bool exists = std::filesystem::exists(std::filesystem::path(path) / "CURRENT", ec);
  if (ec) return error(Code::io_error, "checking for a database in " + path + ": " + ec.message());
  if (!exists) return std::vector<std::string>();
  std::vector<std::string> names;
  CAIRN_RETURN_IF_ERROR(detail::check(rocksdb::DB::ListColumnFamilies(options, path, &names),
                                      {"ListColumnFamilies", path}));
  return names;
}

}  // namespace

Result<std::unique_ptr<KvStore>> open_rocks_store(const RocksOptions& options) {
  if (options.path.empty()) return error(Code::invalid_argument, "RocksOptions.path is empty");
  if (options.create_if_missing) {
    std::error_code ec;
    std::filesystem::create_directories(options.path, ec);
    if (ec) {
      return error(Code::io_error, "creating data dir " + options.path + ": " + ec.message());
    }
  }
  const rocksdb::DBOptions db = db_options(options);

  // Open the asked-for families and every one already there (RocksDB refuses to open a database
  // without all of its families), each once.
  std::vector<std::string> addressable{std::string(kDefaultFamily)};
  for (const auto& name : options.families) {
    if (std::find(addressable.begin(), addressable.end(), name) == addressable.end()) {
      addressable.push_back(name);
    }
  }
  auto existing = existing_families(options.path, db);
  if (!existing.ok()) return existing.status();
  std::vector<std::string> names = addressable;
  for (const auto& name : *existing) {
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const auto& name : names) descriptors.emplace_back(name, family_options(options));

  rocksdb::DB* raw_db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  const rocksdb::Status opened =
      rocksdb::DB::Open(db, options.path, descriptors, &handles, &raw_db);
  // On failure RocksDB leaves no DB and no handles to free.
  const Status status = detail::check(opened, {"Open", options.path});
  if (auto holder = detail::lock_holder(opened)) {
    const char* by = *holder == detail::LockHolder::this_process ? "another store in this process"
                                                                 : "another process";
    return error(Code::unavailable, "data dir " + options.path + " is in use by " + by + " (" +
                                        status.message() + ")");
  }
  CAIRN_RETURN_IF_ERROR(status);
  return std::unique_ptr<KvStore>(
      new RocksKvStore(options.path, raw_db, std::move(handles), names, addressable));
}

}  // namespace cairn::storage
