// The registry's tables on a KvStore: experiments, runs (info, params, tags, metric history),
// registered models, model versions, aliases and their audit log, and the blob references of
// versions. It implements what MLflow's tracking server and model registry do, with MLflow's
// validation rules, limits and filter grammar, so that the MLflow-compatible HTTP layer and the
// msgpack protocol can both be thin adapters over it. Requests and replies are the structs of
// runtime/messages/registry.h; stored values are their msgpack encoding (runtime/wire.h).
//
// Threading: NOT thread-safe. One registry actor owns the store and serializes every call.
// Durability: every mutating method except stage_log_batch has written its changes with one
// synced KvStore::write before it returns ok (RegistryStoreOptions::sync), so an acknowledged
// write survives a crash and a logical operation is never visible half-written.
//
// Errors, for every method:
//   not_found        the named experiment, run, model, version or alias does not exist;
//   already_exists   create_experiment / create_model with a name that is taken;
//   bad_request      a request field breaks a rule below, a filter or order_by does not parse
//                    (the message names the field, the limit or the position in the filter),
//                    a page token was not issued for this query, or the state forbids the write
//                    (logging to a deleted run, a param logged again with another value);
//   data_loss        a stored value does not decode (the message names the family and key);
//   io_error, ...    the KvStore's error, unchanged.
//
// Validation rules (MLflow 2.x, mlflow/utils/validation.py, unless marked Cairn). Lengths count
// characters (Unicode code points of the UTF-8 text), as MLflow does:
//   param, metric and tag keys    1..250 chars of [A-Za-z0-9_-. /:]; not a path that normalizes
//                                 to another name (no leading '/', no trailing '/', no '//',
//                                 no '.' or '..' segment, not starting with '..');
//   param value                   at most 6000 chars;
//   run tag value                 at most 8000 chars;
//   experiment name               1..500 chars; unique among active and deleted experiments;
//   experiment tag                key as above, value at most 5000 chars;
//   experiment artifact_location  not a runs:/ URI;
//   model name                    1..256 chars (MLflow's column size); Cairn: no '/', '@' or
//                                 control char, since NAME/VERSION and NAME@ALIAS must parse;
//   model and version tags        key as above, value at most 5000 chars;
//   alias                         1..255 chars of [A-Za-z0-9_-]; not "latest" in any case; not
//                                 v<digits> or V<digits> (those name versions);
//   version_label (Cairn)         semantic version MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]
//   (semver.org); artifacts (Cairn)             path: relative, 1..1024 bytes, no '\0', no '.',
//   '..' or empty
//                                 segment; sha256: 64 lowercase hex; paths unique per version;
//   log_batch                     at most 1000 metrics, 100 params, 100 tags, 1000 items in all;
//                                 params unique by key within a request; metric timestamps >= 0;
//                                 metric values any double, NaN and +-inf included.
//   run status                    RUNNING, SCHEDULED, FINISHED, FAILED or KILLED;
//   version status                PENDING_REGISTRATION, READY or FAILED_REGISTRATION;
//   times (start_time, end_time)  >= 0.
//
// Filters use MLflow's search grammar: clauses `IDENT OP VALUE` joined by `and` (MLflow has no
// `or`). IDENT is `metrics.KEY`, `params.KEY`, `tags.KEY` or `attributes.KEY` (also metric,
// param, parameter(s), tag, attribute, attr, run), with KEY bare or quoted in backticks or
// double quotes (metrics.`my metric`); experiments, models and versions also take bare attribute
// names (`name`). Numbers (metrics, times, version numbers) take = != < <= > >= and a numeric
// VALUE; strings (params, tags, text attributes) take = != LIKE ILIKE (with % and _) and
// IN / NOT IN ('a', 'b'), with VALUE quoted in single or double quotes. A run without the
// metric, param or tag a clause names does not match it (not even with != or NOT IN).
// order_by entries are `IDENT [ASC|DESC]`; NaN and missing values sort last in both directions.
// Page tokens are opaque, tied to the query that issued them, and name a position (the last
// item's sort key), not an offset, so pages stay stable while new items are inserted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/messages/registry.h"
#include "runtime/status.h"
#include "storage/kv_store.h"

namespace cairn::storage {

// ---- Limits (MLflow's, see above) ----
inline constexpr size_t kMaxEntityKeyChars = 250;  // param, metric and tag keys
inline constexpr size_t kMaxParamValueChars = 6000;
inline constexpr size_t kMaxRunTagValueChars = 8000;
inline constexpr size_t kMaxExperimentNameChars = 500;
inline constexpr size_t kMaxExperimentTagValueChars = 5000;
inline constexpr size_t kMaxModelNameChars = 256;
inline constexpr size_t kMaxModelTagValueChars = 5000;  // registered model and version tags
inline constexpr size_t kMaxAliasChars = 255;
inline constexpr size_t kMaxArtifactPathBytes = 1024;  // Cairn
inline constexpr size_t kMaxBatchMetrics = 1000;
inline constexpr size_t kMaxBatchParams = 100;
inline constexpr size_t kMaxBatchTags = 100;
inline constexpr size_t kMaxBatchItems = 1000;
// Page sizes: max_results 0 takes the default; larger than the maximum is capped to it.
inline constexpr uint32_t kDefaultRunsPage = 1000, kMaxRunsPage = 50000;
inline constexpr uint32_t kDefaultExperimentsPage = 1000, kMaxExperimentsPage = 50000;
inline constexpr uint32_t kDefaultModelsPage = 100, kMaxModelsPage = 1000;
inline constexpr uint32_t kDefaultVersionsPage = 100, kMaxVersionsPage = 10000;
inline constexpr uint32_t kDefaultMetricHistoryPage = 25000, kMaxMetricHistoryPage = 25000;

// MLflow's Default experiment, created by open() when missing.
inline constexpr std::string_view kDefaultExperimentId = "0";
inline constexpr std::string_view kDefaultExperimentName = "Default";
// The run tag MLflow keeps equal to the run's name (set either one and both change).
inline constexpr std::string_view kRunNameTag = "mlflow.runName";
// The run tag MLflow clients use for nesting; copied into parent_run_id when that is empty.
inline constexpr std::string_view kParentRunTag = "mlflow.parentRunId";

// The column families the KvStore must be opened with (besides whatever else the node opens).
std::vector<std::string> registry_families();

struct RegistryStoreOptions {
  // true: every mutating call (and commit) writes with WriteOptions::sync, so an acknowledged
  // write survives a machine crash. false only for loading test and benchmark fixtures, where a
  // sync per created run would dominate. Default true.
  bool sync = true;
};

namespace detail {
struct LogBatchGroupState;
}

// Writes accumulated from several log_batch requests (to any runs), made durable together by
// RegistryStore::commit with one synced write (group commit). Built by the registry actor,
// filled by stage_log_batch, emptied by commit. Use a group with one store only. Movable, not
// copyable.
class LogBatchGroup {
 public:
  LogBatchGroup();
  ~LogBatchGroup();
  LogBatchGroup(LogBatchGroup&&) noexcept;
  LogBatchGroup& operator=(LogBatchGroup&&) noexcept;
  LogBatchGroup(const LogBatchGroup&) = delete;
  LogBatchGroup& operator=(const LogBatchGroup&) = delete;

  // Requests staged since the last commit.
  size_t requests() const;
  // Metric points staged since the last commit.
  size_t points() const;
  bool empty() const { return requests() == 0; }

 private:
  friend class RegistryStore;
  std::unique_ptr<detail::LogBatchGroupState> state_;
};

// The registry's tables. Times (now_ms and every timestamp) are Unix milliseconds, supplied by
// the caller so that the store never reads a clock except once in open().
class RegistryStore {
 public:
  // Opens the tables in `kv` (which must have registry_families() and must outlive the store),
  // loads the id counters, and creates MLflow's Default experiment ("0", "Default", creation
  // time from the system clock) if it is missing, durably. Fails with the KvStore's error, or
  // data_loss when a stored counter is corrupt.
  static Result<std::unique_ptr<RegistryStore>> open(KvStore& kv,
                                                     const RegistryStoreOptions& options = {});
  RegistryStore(const RegistryStore&) = delete;
  RegistryStore& operator=(const RegistryStore&) = delete;
  ~RegistryStore();

  // ---- Experiments ----
  // Ids are decimal strings, auto-incremented from 1 ("0" is the Default experiment).
  Result<msg::CreateExperimentReply> create_experiment(const msg::CreateExperimentRequest& request,
                                                       int64_t now_ms);
  // By exactly one of experiment_id and experiment_name; deleted experiments are found too.
  Result<msg::Experiment> get_experiment(const msg::GetExperimentRequest& request);
  // Filter on name, creation_time, last_update_time (bare or attributes.) and tags.KEY; order_by
  // the same attributes and experiment_id; default creation_time DESC, then experiment_id.
  Result<msg::SearchExperimentsReply> search_experiments(
      const msg::SearchExperimentsRequest& request);
  // Soft delete: lifecycle_stage becomes "deleted" (again is ok). Its runs keep their own
  // lifecycle (MLflow's file store does the same). The Default experiment cannot be deleted.
  Status delete_experiment(const std::string& experiment_id, int64_t now_ms);

  // ---- Runs ----
  // A run in an active experiment, id 32 random lowercase hex, status RUNNING, start_time
  // request.start_time or now. artifact_uri is "<experiment artifact_location>/<run id>/artifacts"
  // when the experiment has a location. run_name and the mlflow.runName tag are kept equal; a
  // mlflow.parentRunId tag fills parent_run_id when that is empty. parent_run_id given
  // explicitly must name an existing run.
  Result<msg::Run> create_run(const msg::CreateRunRequest& request, int64_t now_ms);
  // Info, params, tags and the latest value of each metric.
  Result<msg::Run> get_run(const std::string& run_id);
  // status, end_time and run_name, each when set. Moving to FINISHED, FAILED or KILLED with no
  // end_time sets end_time to now_ms. bad_request for a deleted run.
  Result<msg::RunInfo> update_run(const msg::UpdateRunRequest& request, int64_t now_ms);
  // Soft delete: lifecycle_stage "deleted" (again is ok). Its data stays readable by get_run.
  Status delete_run(const std::string& run_id, int64_t now_ms);
  // Runs of the listed experiments (none listed: an empty reply; an id that is not a decimal
  // number: bad_request) with run_view_type ACTIVE_ONLY, DELETED_ONLY or ALL. Filter on
  // metrics.*, params.*, tags.* and attributes run_id, run_name, status, user_id, artifact_uri,
  // experiment_id, config_digest, dataset_digest, parent_run_id (text) and start_time, end_time,
  // created (= start_time) (numbers). Default order start_time DESC, then run_id; that order is
  // read straight from the key layout, so a first page costs only the runs it examines.
  Result<msg::SearchRunsReply> search_runs(const msg::SearchRunsRequest& request);

  // ---- Metrics, params and tags: log_batch with group commit ----
  // Validates `request` against the store and against what `group` already holds (a param
  // logged again within the group with another value is an error too), then stages its writes
  // into `group`. Nothing is durable until commit(group); a failed stage leaves the group
  // unchanged. Params are write-once (the same value again is ok; another value is bad_request
  // naming the key and both values; one key twice in one request is bad_request, as in MLflow);
  // tags overwrite; metric points are appended, and each key's latest value (MLflow's rule: the
  // point with the greatest (step, timestamp), ties to the greater value) is kept for search.
  // Logging to a finished run is allowed (as in MLflow); to a deleted run it is bad_request.
  // Metric timestamp 0 is kept as 0; the caller fills "now" if it wants that.
  Status stage_log_batch(const msg::LogBatchRequest& request, LogBatchGroup& group, int64_t now_ms);
  // Writes everything staged in `group` with one synced KvStore::write, merging into each run's
  // current record (so other calls made between stage and commit are kept), then clears the
  // group, also when the write fails: the caller answers every staged request with the result.
  // An empty group writes nothing. bad_request (and nothing written) if a param staged here was
  // meanwhile committed with another value through another group.
  Status commit(LogBatchGroup& group);
  // One metric's points in (step, timestamp) order, paged (default and maximum 25000). Points
  // logged twice with the same key, step, timestamp and value are stored once.
  Result<msg::MetricHistoryReply> get_metric_history(const msg::GetMetricHistoryRequest& request);

  // ---- Registered models ----
  Result<msg::RegisteredModel> create_model(const msg::CreateModelRequest& request, int64_t now_ms);
  // With aliases and latest_versions (the newest version only; Cairn has no stages).
  Result<msg::RegisteredModel> get_model(const std::string& name);
  // description when set; set_tags then delete_tags (deleting an absent tag is ok).
  Result<msg::RegisteredModel> update_model(const msg::UpdateModelRequest& request, int64_t now_ms);
  // Deletes the model, its versions, its aliases and its blob references. The alias audit log
  // is kept; one event with who "delete_model" and time now_ms (the system clock when
  // negative) is appended for each alias the model held.
  Status delete_model(const std::string& name, int64_t now_ms = -1);
  // name_prefix: a prefix scan (case-sensitive). Filter on name (also LIKE 'x%', a prefix scan
  // too), creation_timestamp, last_updated_timestamp and tags.KEY; order_by name,
  // creation_timestamp (timestamp), last_updated_timestamp; default name ASC.
  Result<msg::SearchModelsReply> search_models(const msg::SearchModelsRequest& request);

  // ---- Model versions ----
  // The next version number of the model ("1", "2", ...; never reused while the model exists),
  // status READY (the actor moves it to PENDING_REGISTRATION or FAILED_REGISTRATION with
  // update_version when uploads are involved). run_id must name a run: its latest metrics are
  // copied into `metrics`. parent_version must be a version of the same model. create_model
  // creates a missing model in the same write. The model's last_updated_timestamp becomes now.
  Result<msg::ModelVersion> create_version(const msg::CreateVersionRequest& request,
                                           int64_t now_ms);
  // By exactly one of version and alias. The reply lists the aliases pointing at the version.
  Result<msg::ModelVersion> get_version(const msg::GetVersionRequest& request);
  // description when set, status (validated) and status_message when status is set, set_tags
  // then delete_tags.
  Result<msg::ModelVersion> update_version(const msg::UpdateVersionRequest& request,
                                           int64_t now_ms);
  // Versions of model `name` (or of every model when it is empty), newest first per model,
  // models in name order. Filter on name, run_id, source (source_path), version_label, status
  // (text), version_number (version), creation_timestamp, last_updated_timestamp (numbers) and
  // tags.KEY. Default and maximum page 100 and 10000.
  Result<msg::SearchVersionsReply> search_versions(const msg::SearchVersionsRequest& request);
  // The model's newest version (none for a model without versions); not_found for no model.
  Result<msg::LatestVersionsReply> get_latest_versions(const std::string& name);

  // ---- Aliases ----
  // Points `alias` at an existing version, creating or moving it, and appends (who, now, from,
  // to) to the audit log; setting it to the version it already names changes nothing.
  Result<msg::ModelVersion> set_alias(const msg::SetAliasRequest& request, const std::string& who,
                                      int64_t now_ms);
  // Removes the alias and logs it (to_version ""). An alias that is not set is ok (as in
  // MLflow) and logs nothing; not_found only for the model.
  Status delete_alias(const msg::AliasRequest& request, const std::string& who, int64_t now_ms);
  // Every move of every alias of model `name`, oldest first (kept after delete_model).
  Result<msg::AliasHistoryReply> alias_history(const std::string& name);

  // ---- Blobs ----
  // Calls `visit` once for each distinct blob sha256 referenced by any model version, in
  // ascending order (for garbage collection).
  Status for_each_referenced_blob(const std::function<void(const std::string& sha256)>& visit);

 private:
  RegistryStore(KvStore& kv, const RegistryStoreOptions& options);

  Status load_counters();
  Status ensure_default_experiment(int64_t now_ms);
  std::string new_run_id();

  // Constant after construction.
  KvStore& kv_;
  WriteOptions write_options_;
  // Next ids, loaded by open() and advanced only after a write that persists them succeeds.
  uint64_t next_experiment_id_ = 1;
  uint64_t next_alias_event_ = 1;
  // Run ids: 128 bits from a generator seeded once from std::random_device.
  std::mt19937_64 run_id_rng_;
};

}  // namespace cairn::storage
