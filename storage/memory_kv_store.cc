#include "storage/kv_store.h"

#include <utility>

#include "storage/detail/messages.h"
#include "storage/detail/scan_range.h"

namespace cairn::storage {

MemoryKvStore::MemoryKvStore(std::vector<std::string> families) {
  families_[std::string(kDefaultFamily)];
  for (auto& name : families) families_[std::move(name)];
}

void MemoryKvStore::fail_next_writes(int n, Status status) {
  std::lock_guard<std::mutex> lock(mutex_);
  failures_left_ = n > 0 ? n : 0;
  injected_failure_ = std::move(status);
}

Status MemoryKvStore::take_injected_failure() {
  if (failures_left_ == 0) return Status::ok_status();
  --failures_left_;
  return injected_failure_;
}

Result<MemoryKvStore::Family*> MemoryKvStore::find_family(std::string_view name) {
  auto it = families_.find(name);
  if (it != families_.end()) return &it->second;
  std::vector<std::string_view> open;
  for (const auto& entry : families_) open.push_back(entry.first);
  return detail::unknown_family(name, open);
}

Status MemoryKvStore::put(std::string_view family, std::string_view key, std::string_view value,
                          const WriteOptions& options) {
  WriteBatch batch;
  batch.put(family, key, value);
  return write(batch, options);
}

Status MemoryKvStore::erase(std::string_view family, std::string_view key,
                            const WriteOptions& options) {
  WriteBatch batch;
  batch.erase(family, key);
  return write(batch, options);
}

Status MemoryKvStore::write(const WriteBatch& batch, const WriteOptions& /*options*/) {
  std::lock_guard<std::mutex> lock(mutex_);
  CAIRN_RETURN_IF_ERROR(take_injected_failure());
  // Resolve every family before changing anything, so that a bad batch changes nothing.
  std::vector<Family*> targets;
  targets.reserve(batch.size());
  for (const auto& op : batch.ops()) {
    auto family = find_family(op.family);
    if (!family.ok()) return family.status();
    targets.push_back(*family);
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& op = batch.ops()[i];
    if (op.kind == WriteBatch::OpKind::put) {
      (*targets[i])[op.key] = op.value;
    } else {
      targets[i]->erase(op.key);
    }
  }
  return Status::ok_status();
}

Result<std::optional<std::string>> MemoryKvStore::get(std::string_view family,
                                                      std::string_view key) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = find_family(family);
  if (!found.ok()) return found.status();
  auto it = (*found)->find(key);
  if (it == (*found)->end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

Status MemoryKvStore::scan(std::string_view family, std::string_view prefix,
                           std::string_view start_after, const ScanVisitor& visit) {
  // Copy the range under the lock and visit without it: that is the snapshot the contract
  // promises, and it lets the visitor call the store.
  std::vector<std::pair<std::string, std::string>> snapshot;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = find_family(family);
    if (!found.ok()) return found.status();
    const detail::ScanRange range(prefix, start_after);
    for (auto it = (*found)->lower_bound(range.seek_key()); it != (*found)->end(); ++it) {
      if (range.is_past_end(it->first)) break;
      if (range.is_cursor(it->first)) continue;
      snapshot.emplace_back(it->first, it->second);
    }
  }
  for (const auto& [key, value] : snapshot) {
    if (!visit(key, value)) break;
  }
  return Status::ok_status();
}

}  // namespace cairn::storage
