// The one place where a rocksdb::Status becomes a cairn::Status: every RocksDB call in storage/
// goes through check(), so every failure names the call, what it acted on and the database.
#pragma once

#include <optional>
#include <string_view>

#include <rocksdb/status.h>

#include "runtime/status.h"

namespace cairn::storage::detail {

// What a RocksDB call was doing; views, read only while check() runs.
struct RocksCall {
  std::string_view op;            // the RocksDB method: "Put", "Open", "Close", ...
  std::string_view db_path;       // the database directory
  std::string_view family = {};   // the column family the call is about, if one
  std::string_view subject = {};  // what it acted on (a key, "3 updates"); shown escaped
};

// ok when `status` is ok; otherwise an error whose message names the call and the database,
//   "rocksdb Put(node/boot_count) in /x/db: IO error: No space left on device",
// with code data_loss for Corruption, unavailable for a lock on the database held by another
// process or another open store (see lock_holder), io_error for anything else.
Status check(const rocksdb::Status& status, const RocksCall& call);

enum class LockHolder {
  this_process,   // another DB open in this process (RocksDB keeps its own table of them)
  other_process,  // another process (RocksDB's fcntl lock on <db>/LOCK failed)
};
// Who holds the database's LOCK file when `status` is a failure to take it; nullopt for any
// other status. RocksDB reports both as a plain IOError, so this reads its message;
// storage_test pins the wording of the RocksDB in use.
std::optional<LockHolder> lock_holder(const rocksdb::Status& status);

}  // namespace cairn::storage::detail
