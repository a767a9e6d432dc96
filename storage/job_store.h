// Training jobs kept across node restarts: one record per job (its config, state, run, last
// checkpoint, restarts), in the "train_jobs" column family of the node's KvStore. The job manager
// actor (actors/train/job_manager.h) is the only writer; a node that restarts reads the records
// back and resumes the jobs that were not final.
//
// Key layout (fixed once released; integers big-endian so byte order is numeric order):
//   train_jobs  "c"              -> u64: the number the next job takes
//               "j" | u64 number -> msgpack JobRecord
// Job ids are "job-<number>" (number from 1).
//
// Errors: not_found for an unknown job id; data_loss naming the key for a stored value that does
// not decode; the KvStore's error, unchanged, otherwise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/messages/train.h"
#include "runtime/status.h"
#include "storage/kv_store.h"

namespace cairn::storage {

inline constexpr std::string_view kJobFamily = "train_jobs";

// The column families the KvStore must be opened with for a JobStore.
std::vector<std::string> job_families();

// What the node keeps of one job. `status` is what train.status answers (the live numbers, step,
// loss, ..., as of the last write: the job manager writes at state changes and checkpoints, not
// at every step).
struct JobRecord {
  msg::JobStatus status;
  std::string config_yaml;  // as submitted, with the overrides applied
  std::string config_name;  // the file name it came from
  std::string secret;       // the job's ring secret (hex), for multi-node jobs
  std::string submitted_by; // the caller's role and client name
  template <class V>
  void fields(V& v) {
    v("status", status);
    v("config_yaml", config_yaml);
    v.optional("config_name", config_name);
    v.optional("secret", secret);
    v.optional("submitted_by", submitted_by);
  }
};

struct JobStoreOptions {
  // Every write synced (WriteOptions::sync): an acknowledged submit and a recorded checkpoint
  // survive a machine crash. false only in tests. Default true.
  bool sync = true;
};

// Not thread-safe beyond what KvStore is: meant to be used by one actor. The KvStore must have
// job_families() and outlive the JobStore.
class JobStore {
 public:
  // Reads the id counter. Fails with the KvStore's error or data_loss for a corrupt counter.
  static Result<std::unique_ptr<JobStore>> open(KvStore& kv, const JobStoreOptions& options = {});
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Gives `record` the next job id (record.status.job_id) and writes it with the new counter in
  // one durable write. Returns the id.
  Result<std::string> create(JobRecord& record);
  // Replaces the record of record.status.job_id (which must exist: not_found otherwise).
  Status put(const JobRecord& record);
  Result<JobRecord> get(const std::string& job_id);
  // Every record, newest first. `visit` returns false to stop.
  Status for_each(const std::function<bool(const JobRecord&)>& visit);

 private:
  JobStore(KvStore& kv, const JobStoreOptions& options, uint64_t next) : kv_(kv), options_(options), next_(next) {}

  KvStore& kv_;
  const JobStoreOptions options_;
  uint64_t next_;  // the number the next create() assigns
};

}  // namespace cairn::storage
