#include "storage/detail/rocks_check.h"

#include <string>

#include "storage/detail/messages.h"

namespace cairn::storage::detail {
namespace {

// How RocksDB 7.x's PosixFileSystem::LockFile words the two conflicts.
constexpr std::string_view kHeldByThisProcess = "lock hold by current process";
constexpr std::string_view kHeldByOtherProcess = "While lock file";

Code code_for(const rocksdb::Status& status) {
  if (status.IsCorruption()) return Code::data_loss;
  if (lock_holder(status)) return Code::unavailable;
  return Code::io_error;
}

}  // namespace

std::optional<LockHolder> lock_holder(const rocksdb::Status& status) {
  if (!status.IsIOError()) return std::nullopt;
  const std::string text = status.ToString();
  if (text.find(kHeldByThisProcess) != std::string::npos) return LockHolder::this_process;
  if (text.find(kHeldByOtherProcess) != std::string::npos) return LockHolder::other_process;
  return std::nullopt;
}

Status check(const rocksdb::Status& status, const RocksCall& call) {
  if (status.ok()) return Status::ok_status();
  std::string message = "rocksdb ";
  message += call.op;
  if (!call.family.empty() || !call.subject.empty()) {
    message += '(';
    if (!call.family.empty()) {
      message += printable(call.family);
      if (!call.subject.empty()) message += '/';
    }
    message += printable(call.subject);
    message += ')';
  }
  message += " in ";
  message += call.db_path;
  message += ": ";
  message += status.ToString();
  return error(code_for(status), std::move(message));
}

}  // namespace cairn::storage::detail
