// Message catalogue of the `registry` domain: experiments, runs, metrics, registered models,
// versions, aliases and artifacts. Field names follow MLflow's REST API (snake_case), so the
// MLflow-compatible HTTP layer maps JSON to these structs key for key. Times are Unix
// milliseconds. Wire names are part of protocol version 1: never rename them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/wire.h"

namespace cairn::msg {

// ---- ops ----
inline constexpr std::string_view kCreateExperiment = "registry.create_experiment";
inline constexpr std::string_view kGetExperiment = "registry.get_experiment";          // by id or name
inline constexpr std::string_view kSearchExperiments = "registry.search_experiments";
inline constexpr std::string_view kDeleteExperiment = "registry.delete_experiment";
inline constexpr std::string_view kCreateRun = "registry.create_run";
inline constexpr std::string_view kGetRun = "registry.get_run";
inline constexpr std::string_view kUpdateRun = "registry.update_run";
inline constexpr std::string_view kDeleteRun = "registry.delete_run";
inline constexpr std::string_view kSearchRuns = "registry.search_runs";
inline constexpr std::string_view kLogBatch = "registry.log_batch";                    // metrics, params, tags
inline constexpr std::string_view kGetMetricHistory = "registry.get_metric_history";
inline constexpr std::string_view kCreateModel = "registry.create_model";
inline constexpr std::string_view kGetModel = "registry.get_model";
inline constexpr std::string_view kUpdateModel = "registry.update_model";
inline constexpr std::string_view kDeleteModel = "registry.delete_model";
inline constexpr std::string_view kSearchModels = "registry.search_models";
inline constexpr std::string_view kCreateVersion = "registry.create_version";
inline constexpr std::string_view kGetVersion = "registry.get_version";                // by number or alias
inline constexpr std::string_view kUpdateVersion = "registry.update_version";
inline constexpr std::string_view kSearchVersions = "registry.search_versions";
inline constexpr std::string_view kGetLatestVersions = "registry.get_latest_versions";
inline constexpr std::string_view kSetAlias = "registry.set_alias";
inline constexpr std::string_view kDeleteAlias = "registry.delete_alias";
inline constexpr std::string_view kAliasHistory = "registry.alias_history";
inline constexpr std::string_view kUploadArtifact = "registry.upload_artifact";        // chunked, resumable
inline constexpr std::string_view kDownloadArtifact = "registry.download_artifact";    // stream of chunks
inline constexpr std::string_view kCollectGarbage = "registry.gc";                     // admin

// ---- entities ----

struct Tag {
  std::string key;
  std::string value;
  template <class V>
  void fields(V& v) {
    v("key", key);
    v("value", value);
  }
};

struct Experiment {
  std::string experiment_id;
  std::string name;
  std::string artifact_location;
  std::string lifecycle_stage;  // "active" | "deleted"
  int64_t creation_time = 0;
  int64_t last_update_time = 0;
  std::vector<Tag> tags;
  template <class V>
  void fields(V& v) {
    v("experiment_id", experiment_id);
    v("name", name);
    v.optional("artifact_location", artifact_location);
    v("lifecycle_stage", lifecycle_stage);
    v("creation_time", creation_time);
    v("last_update_time", last_update_time);
    v.optional("tags", tags);
  }
};

struct Metric {
  std::string key;
  double value = 0;
  int64_t timestamp = 0;
  int64_t step = 0;
  template <class V>
  void fields(V& v) {
    v("key", key);
    v("value", value);
    v("timestamp", timestamp);
    v.optional("step", step);
  }
};

struct Param {
  std::string key;
  std::string value;
  template <class V>
  void fields(V& v) {
    v("key", key);
    v("value", value);
  }
};

struct RunInfo {
  std::string run_id;
  std::string run_name;
  std::string experiment_id;
  std::string user_id;
  std::string status;  // RUNNING | SCHEDULED | FINISHED | FAILED | KILLED
  int64_t start_time = 0;
  int64_t end_time = 0;  // 0 while running
  std::string artifact_uri;
  std::string lifecycle_stage;  // "active" | "deleted"
  // Lineage (Cairn): what produced this run.
  std::string config_digest;
  std::string dataset_digest;
  std::string parent_run_id;
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v.optional("run_name", run_name);
    v("experiment_id", experiment_id);
    v.optional("user_id", user_id);
    v("status", status);
    v("start_time", start_time);
    v.optional("end_time", end_time);
    v.optional("artifact_uri", artifact_uri);
    v("lifecycle_stage", lifecycle_stage);
    v.optional("config_digest", config_digest);
    v.optional("dataset_digest", dataset_digest);
    v.optional("parent_run_id", parent_run_id);
  }
};

struct RunData {
  std::vector<Metric> metrics;  // the latest value of each key
  std::vector<Param> params;
  std::vector<Tag> tags;
  template <class V>
  void fields(V& v) {
    v.optional("metrics", metrics);
    v.optional("params", params);
    v.optional("tags", tags);
  }
};

struct Run {
  RunInfo info;
  RunData data;
  template <class V>
  void fields(V& v) {
    v("info", info);
    v("data", data);
  }
};

struct ArtifactRef {
  std::string path;    // relative path inside the version, e.g. "model.safetensors"
  std::string sha256;  // 64 lowercase hex: the blob's name in the blob store
  uint64_t size = 0;
  template <class V>
  void fields(V& v) {
    v("path", path);
    v("sha256", sha256);
    v("size", size);
  }
};

struct ModelAlias {
  std::string alias;
  std::string version;
  template <class V>
  void fields(V& v) {
    v("alias", alias);
    v("version", version);
  }
};

struct ModelVersion {
  std::string name;
  std::string version;        // decimal auto-increment integer, as MLflow sends it
  std::string version_label;  // optional semantic version, e.g. "1.2.0"
  int64_t creation_timestamp = 0;
  int64_t last_updated_timestamp = 0;
  std::string description;
  std::string source;  // where the files came from (a run's artifact URI or a local path)
  std::string run_id;
  std::string status;  // PENDING_REGISTRATION | READY | FAILED_REGISTRATION
  std::string status_message;
  std::vector<Tag> tags;
  std::vector<std::string> aliases;
  // Lineage and contents (Cairn).
  std::string parent_version;  // the version this one was fine-tuned from, "" if none
  std::string base_model;      // "name/version" of the base for adapters, or a local path
  std::map<std::string, double> metrics;  // the source run's final metrics when registered
  std::vector<ArtifactRef> artifacts;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("version", version);
    v.optional("version_label", version_label);
    v("creation_timestamp", creation_timestamp);
    v("last_updated_timestamp", last_updated_timestamp);
    v.optional("description", description);
    v.optional("source", source);
    v.optional("run_id", run_id);
    v("status", status);
    v.optional("status_message", status_message);
    v.optional("tags", tags);
    v.optional("aliases", aliases);
    v.optional("parent_version", parent_version);
    v.optional("base_model", base_model);
    v.optional("metrics", metrics);
    v.optional("artifacts", artifacts);
  }
};

struct RegisteredModel {
  std::string name;
  int64_t creation_timestamp = 0;
  int64_t last_updated_timestamp = 0;
  std::string description;
  std::vector<Tag> tags;
  std::vector<ModelAlias> aliases;
  std::vector<ModelVersion> latest_versions;  // the newest version (MLflow shape), filled by get/search
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("creation_timestamp", creation_timestamp);
    v("last_updated_timestamp", last_updated_timestamp);
    v.optional("description", description);
    v.optional("tags", tags);
    v.optional("aliases", aliases);
    v.optional("latest_versions", latest_versions);
  }
};

// One move of an alias, kept forever in the audit log.
struct AliasEvent {
  std::string name;
  std::string alias;
  std::string from_version;  // "" when the alias was created
  std::string to_version;    // "" when the alias was deleted
  std::string who;           // the caller's role and client name
  int64_t time = 0;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("alias", alias);
    v("from_version", from_version);
    v("to_version", to_version);
    v("who", who);
    v("time", time);
  }
};

// ---- requests and replies (one pair per op; an op without a reply struct answers {}) ----
// Paged listings take max_results (0 = the op's default, capped by the op's maximum) and an opaque
// page_token from the previous reply's next_page_token ("" when there are no more pages).

struct CreateExperimentRequest {
  std::string name;
  std::string artifact_location;
  std::vector<Tag> tags;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("artifact_location", artifact_location);
    v.optional("tags", tags);
  }
};
struct CreateExperimentReply {
  std::string experiment_id;
  template <class V>
  void fields(V& v) { v("experiment_id", experiment_id); }
};

// Exactly one of experiment_id and experiment_name.
struct GetExperimentRequest {
  std::string experiment_id;
  std::string experiment_name;
  template <class V>
  void fields(V& v) {
    v.optional("experiment_id", experiment_id);
    v.optional("experiment_name", experiment_name);
  }
};
struct ExperimentReply {
  Experiment experiment;
  template <class V>
  void fields(V& v) { v("experiment", experiment); }
};

struct SearchExperimentsRequest {
  std::string filter;                      // MLflow grammar over name, tags.*, attributes
  std::string view_type = "ACTIVE_ONLY";   // ACTIVE_ONLY | DELETED_ONLY | ALL
  std::vector<std::string> order_by;
  uint32_t max_results = 0;
  std::string page_token;
  template <class V>
  void fields(V& v) {
    v.optional("filter", filter);
    v.optional("view_type", view_type);
    v.optional("order_by", order_by);
    v.optional("max_results", max_results);
    v.optional("page_token", page_token);
  }
};
struct SearchExperimentsReply {
  std::vector<Experiment> experiments;
  std::string next_page_token;
  template <class V>
  void fields(V& v) {
    v("experiments", experiments);
    v.optional("next_page_token", next_page_token);
  }
};

struct ExperimentIdRequest {
  std::string experiment_id;
  template <class V>
  void fields(V& v) { v("experiment_id", experiment_id); }
};

struct CreateRunRequest {
  std::string experiment_id;
  std::string run_name;
  std::string user_id;
  int64_t start_time = 0;  // 0 = now
  std::vector<Tag> tags;
  std::string config_digest;
  std::string dataset_digest;
  std::string parent_run_id;
  template <class V>
  void fields(V& v) {
    v("experiment_id", experiment_id);
    v.optional("run_name", run_name);
    v.optional("user_id", user_id);
    v.optional("start_time", start_time);
    v.optional("tags", tags);
    v.optional("config_digest", config_digest);
    v.optional("dataset_digest", dataset_digest);
    v.optional("parent_run_id", parent_run_id);
  }
};
struct RunReply {
  Run run;
  template <class V>
  void fields(V& v) { v("run", run); }
};

struct RunIdRequest {
  std::string run_id;
  template <class V>
  void fields(V& v) { v("run_id", run_id); }
};

struct UpdateRunRequest {
  std::string run_id;
  std::string status;    // "" = unchanged
  int64_t end_time = 0;  // 0 = unchanged (set to now when status becomes terminal)
  std::string run_name;  // "" = unchanged
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v.optional("status", status);
    v.optional("end_time", end_time);
    v.optional("run_name", run_name);
  }
};
struct UpdateRunReply {
  RunInfo run_info;
  template <class V>
  void fields(V& v) { v("run_info", run_info); }
};

struct SearchRunsRequest {
  std::vector<std::string> experiment_ids;
  std::string filter;                     // e.g. "metrics.loss < 2 and params.lr = '3e-4'"
  std::string run_view_type = "ACTIVE_ONLY";
  std::vector<std::string> order_by;      // e.g. "metrics.loss ASC", "attributes.start_time DESC"
  uint32_t max_results = 0;               // default 1000, at most 50000 (MLflow's limits)
  std::string page_token;
  template <class V>
  void fields(V& v) {
    v("experiment_ids", experiment_ids);
    v.optional("filter", filter);
    v.optional("run_view_type", run_view_type);
    v.optional("order_by", order_by);
    v.optional("max_results", max_results);
    v.optional("page_token", page_token);
  }
};
struct SearchRunsReply {
  std::vector<Run> runs;
  std::string next_page_token;
  template <class V>
  void fields(V& v) {
    v("runs", runs);
    v.optional("next_page_token", next_page_token);
  }
};

// MLflow's limits per batch: 1000 metrics, 100 params, 100 tags. Acknowledged once durable.
struct LogBatchRequest {
  std::string run_id;
  std::vector<Metric> metrics;
  std::vector<Param> params;
  std::vector<Tag> tags;
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v.optional("metrics", metrics);
    v.optional("params", params);
    v.optional("tags", tags);
  }
};

struct GetMetricHistoryRequest {
  std::string run_id;
  std::string metric_key;
  uint32_t max_results = 0;
  std::string page_token;
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v("metric_key", metric_key);
    v.optional("max_results", max_results);
    v.optional("page_token", page_token);
  }
};
struct MetricHistoryReply {
  std::vector<Metric> metrics;  // in (step, timestamp) order
  std::string next_page_token;
  template <class V>
  void fields(V& v) {
    v("metrics", metrics);
    v.optional("next_page_token", next_page_token);
  }
};

struct CreateModelRequest {
  std::string name;
  std::string description;
  std::vector<Tag> tags;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("description", description);
    v.optional("tags", tags);
  }
};
struct ModelReply {
  RegisteredModel registered_model;
  template <class V>
  void fields(V& v) { v("registered_model", registered_model); }
};

struct ModelNameRequest {
  std::string name;
  template <class V>
  void fields(V& v) { v("name", name); }
};

struct UpdateModelRequest {
  std::string name;
  std::optional<std::string> description;
  std::vector<Tag> set_tags;
  std::vector<std::string> delete_tags;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("description", description);
    v.optional("set_tags", set_tags);
    v.optional("delete_tags", delete_tags);
  }
};

struct SearchModelsRequest {
  std::string name_prefix;  // Cairn's fast path: models whose name starts with this
  std::string filter;       // MLflow grammar: name = 'x', name LIKE 'x%', tags.k = 'v'
  std::vector<std::string> order_by;
  uint32_t max_results = 0;  // default 100, at most 1000
  std::string page_token;
  template <class V>
  void fields(V& v) {
    v.optional("name_prefix", name_prefix);
    v.optional("filter", filter);
    v.optional("order_by", order_by);
    v.optional("max_results", max_results);
    v.optional("page_token", page_token);
  }
};
struct SearchModelsReply {
  std::vector<RegisteredModel> registered_models;
  std::string next_page_token;
  template <class V>
  void fields(V& v) {
    v("registered_models", registered_models);
    v.optional("next_page_token", next_page_token);
  }
};

// Creates the next version of `name` with status READY once its artifacts are all present
// (PENDING_REGISTRATION while an upload is open).
struct CreateVersionRequest {
  std::string name;
  std::string source;
  std::string run_id;
  std::string description;
  std::vector<Tag> tags;
  std::string version_label;
  std::string parent_version;
  std::string base_model;
  std::vector<ArtifactRef> artifacts;  // blobs already in the blob store (uploaded first)
  bool create_model = false;           // create the registered model if it does not exist
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("source", source);
    v.optional("run_id", run_id);
    v.optional("description", description);
    v.optional("tags", tags);
    v.optional("version_label", version_label);
    v.optional("parent_version", parent_version);
    v.optional("base_model", base_model);
    v.optional("artifacts", artifacts);
    v.optional("create_model", create_model);
  }
};
struct VersionReply {
  ModelVersion model_version;
  template <class V>
  void fields(V& v) { v("model_version", model_version); }
};

// Exactly one of version and alias.
struct GetVersionRequest {
  std::string name;
  std::string version;
  std::string alias;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("version", version);
    v.optional("alias", alias);
  }
};

struct UpdateVersionRequest {
  std::string name;
  std::string version;
  std::optional<std::string> description;
  std::string status;  // "" = unchanged
  std::string status_message;
  std::vector<Tag> set_tags;
  std::vector<std::string> delete_tags;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("version", version);
    v.optional("description", description);
    v.optional("status", status);
    v.optional("status_message", status_message);
    v.optional("set_tags", set_tags);
    v.optional("delete_tags", delete_tags);
  }
};

struct SearchVersionsRequest {
  std::string name;    // the model (fast path: a prefix scan of its versions, newest first)
  std::string filter;  // MLflow grammar: name = 'x', run_id = 'y', tags.k = 'v'
  std::vector<std::string> order_by;
  uint32_t max_results = 0;  // default 100, at most 10000
  std::string page_token;
  template <class V>
  void fields(V& v) {
    v.optional("name", name);
    v.optional("filter", filter);
    v.optional("order_by", order_by);
    v.optional("max_results", max_results);
    v.optional("page_token", page_token);
  }
};
struct SearchVersionsReply {
  std::vector<ModelVersion> model_versions;
  std::string next_page_token;
  template <class V>
  void fields(V& v) {
    v("model_versions", model_versions);
    v.optional("next_page_token", next_page_token);
  }
};

struct LatestVersionsReply {
  std::vector<ModelVersion> model_versions;
  template <class V>
  void fields(V& v) { v("model_versions", model_versions); }
};

struct SetAliasRequest {
  std::string name;
  std::string alias;
  std::string version;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("alias", alias);
    v("version", version);
  }
};

struct AliasRequest {
  std::string name;
  std::string alias;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("alias", alias);
  }
};

struct AliasHistoryReply {
  std::vector<AliasEvent> events;  // oldest first
  template <class V>
  void fields(V& v) { v("events", events); }
};

// One chunk of an artifact upload. Uploads are resumable: an upload is named by the sha256 the
// client computed for the whole file; offset says where this chunk goes; the reply says how many
// bytes the node holds, so a client that reconnects asks with an empty chunk and continues from
// there. When `last` is set the node checks size and sha256, then moves the blob into the store.
struct UploadChunk {
  std::string sha256;
  uint64_t size = 0;  // of the whole file
  uint64_t offset = 0;
  wire::Bytes data;
  bool last = false;
  template <class V>
  void fields(V& v) {
    v("sha256", sha256);
    v("size", size);
    v("offset", offset);
    v.optional("data", data);
    v.optional("last", last);
  }
};
struct UploadReply {
  uint64_t received = 0;  // bytes the node holds for this upload
  bool complete = false;  // the blob is in the store (also when it already was: deduplicated)
  template <class V>
  void fields(V& v) {
    v("received", received);
    v("complete", complete);
  }
};

// Streams the blob as `more` replies of DownloadChunk, verified against its sha256 as it is read;
// a corrupt blob ends the stream with data_loss.
struct DownloadRequest {
  std::string sha256;
  uint64_t offset = 0;
  uint32_t chunk_bytes = 0;  // 0 = 1 MiB
  template <class V>
  void fields(V& v) {
    v("sha256", sha256);
    v.optional("offset", offset);
    v.optional("chunk_bytes", chunk_bytes);
  }
};
struct DownloadChunk {
  uint64_t offset = 0;
  wire::Bytes data;
  template <class V>
  void fields(V& v) {
    v("offset", offset);
    v("data", data);
  }
};

struct GcReply {
  uint64_t blobs_removed = 0;
  uint64_t bytes_freed = 0;
  uint64_t blobs_kept = 0;
  template <class V>
  void fields(V& v) {
    v("blobs_removed", blobs_removed);
    v("bytes_freed", bytes_freed);
    v("blobs_kept", blobs_kept);
  }
};

}  // namespace cairn::msg
