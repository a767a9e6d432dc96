#include "storage/job_store.h"

#include <charconv>

#include "runtime/wire.h"
#include "storage/detail/big_endian.h"

namespace cairn::storage {
namespace {

constexpr std::string_view kCounterKey = "c";
constexpr std::string_view kJobPrefix = "j";
constexpr std::string_view kJobIdPrefix = "job-";

std::string job_key(uint64_t number) { return std::string(kJobPrefix) + detail::encode_fixed64(number); }

// "job-12" -> 12; nullopt for anything else.
std::optional<uint64_t> job_number(const std::string& job_id) {
  if (job_id.size() <= kJobIdPrefix.size() || job_id.compare(0, kJobIdPrefix.size(), kJobIdPrefix) != 0) {
    return std::nullopt;
  }
  uint64_t number = 0;
  const char* begin = job_id.data() + kJobIdPrefix.size();
  const char* end = job_id.data() + job_id.size();
  auto [ptr, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || ptr != end || number == 0) return std::nullopt;
  return number;
}

Status unknown_job(const std::string& job_id) {
  return Status(Code::not_found, "no training job \"" + job_id + "\"");
}

Result<JobRecord> decode_record(std::string_view key, std::string_view value) {
  auto decoded = wire::decode_bytes<JobRecord>(value);
  if (!decoded.ok()) {
    return Status(Code::data_loss, std::string(kJobFamily) + ": the record at key " +
                                       std::to_string(detail::decode_fixed64(key.substr(1)).value_or(0)) +
                                       " does not decode: " + decoded.status().message());
  }
  return decoded;
}

}  // namespace

std::vector<std::string> job_families() { return {std::string(kJobFamily)}; }

Result<std::unique_ptr<JobStore>> JobStore::open(KvStore& kv, const JobStoreOptions& options) {
  auto counter = kv.get(kJobFamily, kCounterKey);
  if (!counter.ok()) return counter.status();
  uint64_t next = 1;
  if (counter->has_value()) {
    auto value = detail::decode_fixed64(**counter);
    if (!value) return Status(Code::data_loss, std::string(kJobFamily) + ": the job counter is corrupt");
    next = *value;
  }
  return std::unique_ptr<JobStore>(new JobStore(kv, options, next));
}

Result<std::string> JobStore::create(JobRecord& record) {
  const uint64_t number = next_;
  record.status.job_id = std::string(kJobIdPrefix) + std::to_string(number);
  WriteBatch batch;
  batch.put(kJobFamily, kCounterKey, detail::encode_fixed64(number + 1));
  batch.put(kJobFamily, job_key(number), wire::encode(record));
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, WriteOptions{options_.sync}));
  next_ = number + 1;
  return record.status.job_id;
}

Status JobStore::put(const JobRecord& record) {
  auto number = job_number(record.status.job_id);
  if (!number || *number >= next_) return unknown_job(record.status.job_id);
  return kv_.put(kJobFamily, job_key(*number), wire::encode(record), WriteOptions{options_.sync});
}

Result<JobRecord> JobStore::get(const std::string& job_id) {
  auto number = job_number(job_id);
  if (!number) return unknown_job(job_id);
  const std::string key = job_key(*number);
  auto value = kv_.get(kJobFamily, key);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return unknown_job(job_id);
  return decode_record(key, **value);
}

Status JobStore::for_each(const std::function<bool(const JobRecord&)>& visit) {
  std::vector<JobRecord> records;
  Status failure;
  CAIRN_RETURN_IF_ERROR(kv_.scan(kJobFamily, kJobPrefix, "", [&](std::string_view key, std::string_view value) {
    auto record = decode_record(key, value);
    if (!record.ok()) {
      failure = record.status();
      return false;
    }
    records.push_back(std::move(record).value());
    return true;
  }));
  CAIRN_RETURN_IF_ERROR(failure);
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    if (!visit(*it)) break;
  }
  return Status();
}

}  // namespace cairn::storage
