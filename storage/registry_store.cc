// The registry store. Key layout (fixed once released; every integer is big-endian so that byte
// order is numeric order; "|" only separates parts here, it is not stored):
//
//   reg_meta         "next_experiment_id"  -> u64: the id the next create_experiment takes
//                    "next_alias_event"    -> u64: the sequence number of the next alias event
//   reg_experiments  'i' | u64 id          -> msgpack msg::Experiment
//                    'n' | name            -> u64 id (names are unique, deleted ones included)
//   reg_runs         u64 experiment id | ~u64 start_time | run id (16 bytes)
//                                          -> msgpack msg::Run, the run's summary: info, the
//                                             latest point of each metric, params and tags,
//                                             each list sorted by key
//   reg_run_ids      run id (16 bytes)     -> the run's reg_runs key
//   reg_metrics      run id (16 bytes) | metric key | 0x00 | i64 step | i64 timestamp |
//                    f64 value bits        -> "" (append-only history; i64 with the sign bit
//                                             flipped; NaN stored as one canonical NaN)
//   reg_models       name                  -> msgpack ModelRecord: the model with its aliases,
//                                             and the last version number assigned
//   reg_versions     name | 0x00 | ~u64 version
//                                          -> msgpack msg::ModelVersion (aliases left empty:
//                                             they live in the model's record)
//   reg_alias_log    name | 0x00 | u64 sequence -> msgpack msg::AliasEvent
//   reg_blob_refs    sha256 (64 hex) | name | 0x00 | u64 version -> ""
//
// Why this shape:
// - Runs by experiment, newest first, is one prefix scan of reg_runs, and the value it visits is
//   all a filter or an order_by needs, so a search decodes one value per run examined and a
//   first page in the default order (start_time DESC, run_id) reads only the runs it examines.
//   start_time never changes, so a run's key never moves; reg_run_ids finds it by id.
// - A metric point is one put with an empty value: no read-modify-write per point. The latest
//   value per key is merged into the run's summary once per run per commit.
// - Versions of a model, newest first, are one prefix scan (inverted version number).
// - Model names and metric keys cannot contain 0x00 (validation), so "name | 0x00" prefixes
//   never match a longer name.
// - Each logical operation is one KvStore::write, synced.
#include "storage/registry_store.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include "runtime/wire.h"
#include "storage/detail/big_endian.h"
#include "storage/detail/messages.h"
#include "storage/detail/mlflow_filter.h"
#include "storage/detail/registry_codec.h"
#include "storage/detail/registry_validation.h"

namespace cairn::storage {

namespace detail {

// What a LogBatchGroup holds between stage_log_batch and commit.
struct LogBatchGroupState {
  // What the group changes in one run's summary, merged into the stored summary at commit.
  struct PendingRun {
    std::string run_key;                        // the run's reg_runs key
    std::map<std::string, std::string> params;  // write-once
    std::map<std::string, std::string> tags;    // the last value staged wins
    std::map<std::string, msg::Metric> latest;  // per key, the latest point staged
  };
  // The reg_metrics keys of the points staged, sorted at commit: RocksDB inserts a batch's keys
  // into its memtable about twice as fast in key order as interleaved.
  std::vector<std::string> point_keys;
  std::unordered_map<std::string, PendingRun> runs;  // by raw run id
  size_t requests = 0;
  size_t points_count = 0;
};

}  // namespace detail

namespace {

using detail::Comparator;
using detail::Condition;
using detail::Entity;
using detail::Field;
using detail::FieldValue;
using detail::OrderTerm;
using detail::PageToken;
using detail::SearchDomain;
using detail::SortValue;
using detail::ValueKind;

constexpr std::string_view kMeta = "reg_meta";
constexpr std::string_view kExperiments = "reg_experiments";
constexpr std::string_view kRuns = "reg_runs";
constexpr std::string_view kRunIds = "reg_run_ids";
constexpr std::string_view kMetrics = "reg_metrics";
constexpr std::string_view kModels = "reg_models";
constexpr std::string_view kVersions = "reg_versions";
constexpr std::string_view kAliasLog = "reg_alias_log";
constexpr std::string_view kBlobRefs = "reg_blob_refs";

constexpr std::string_view kNextExperimentIdKey = "next_experiment_id";
constexpr std::string_view kNextAliasEventKey = "next_alias_event";
constexpr char kExperimentById = 'i';
constexpr char kExperimentByName = 'n';

constexpr size_t kRunIdBytes = 16;
constexpr size_t kRunKeyBytes = 8 + 8 + kRunIdBytes;
constexpr size_t kMetricSuffixBytes = 24;  // step, timestamp, value
constexpr size_t kMaxRunNameChars = 250;   // MLflow's runs.name column
constexpr uint64_t kCanonicalNan = 0x7ff8000000000000ull;
constexpr uint64_t kSignBit = uint64_t{1} << 63;  // flipped so that int64 sorts as bytes
// Distinct metric keys whose validity stage_log_batch remembers within one request.
constexpr size_t kCheckedKeysRemembered = 16;

constexpr std::string_view kActive = "active";
constexpr std::string_view kDeleted = "deleted";
constexpr std::string_view kDeleteModelWho = "delete_model";

// The registry's record of a model: the model as replied (latest_versions empty) and the last
// version number assigned, so numbers are never reused while the model exists.
struct ModelRecord {
  msg::RegisteredModel model;
  uint64_t last_version = 0;
  template <class V>
  void fields(V& v) {
    v("model", model);
    v("last_version", last_version);
  }
};

// ---- Small helpers ----

Status bad_request(std::string message) {
  return error(Code::bad_request, std::move(message));
}
Status not_found(std::string message) {
  return error(Code::not_found, std::move(message));
}

std::string shown(std::string_view text) {
  return "'" + detail::printable(text) + "'";
}

Status corrupt(std::string_view family, std::string_view key, const Status& why) {
  return error(Code::data_loss, "registry: family " + std::string(family) + " key " +
                                    detail::printable(key) +
                                    ": the stored value does not decode: " + why.message());
}

template <class T>
Result<T> decode_record(std::string_view family, std::string_view key, std::string_view bytes) {
  auto value = wire::decode_bytes<T>(bytes);
  if (!value.ok()) return corrupt(family, key, value.status());
  return value;
}

template <class T>
Result<std::optional<T>> read_record(KvStore& kv, std::string_view family, std::string_view key) {
  auto bytes = kv.get(family, key);
  if (!bytes.ok()) return bytes.status();
  if (!bytes->has_value()) return std::optional<T>();
  auto value = decode_record<T>(family, key, **bytes);
  if (!value.ok()) return value.status();
  return std::optional<T>(std::move(*value));
}

uint32_t page_size(uint32_t requested, uint32_t default_size, uint32_t max_size) {
  if (requested == 0) return default_size;
  return std::min(requested, max_size);
}

// Sorted key-value lists (tags, params, latest metrics), kept sorted by key.
template <class Item>
typename std::vector<Item>::iterator find_key(std::vector<Item>& items, std::string_view key) {
  return std::lower_bound(items.begin(), items.end(), key,
                          [](const Item& item, std::string_view k) { return item.key < k; });
}

template <class Item>
const Item* lookup_key(const std::vector<Item>& items, std::string_view key) {
  auto it = std::lower_bound(items.begin(), items.end(), key,
                             [](const Item& item, std::string_view k) { return item.key < k; });
  if (it == items.end() || it->key != key) return nullptr;
  return &*it;
}

template <class Item>
void upsert(std::vector<Item>& items, Item item) {
  auto it = find_key(items, item.key);
  if (it != items.end() && it->key == item.key) {
    *it = std::move(item);
  } else {
    items.insert(it, std::move(item));
  }
}

template <class Item>
void erase_key(std::vector<Item>& items, std::string_view key) {
  auto it = find_key(items, key);
  if (it != items.end() && it->key == key) items.erase(it);
}

// Tags of a create request, sorted by key, a repeated key taking its last value.
std::vector<msg::Tag> sorted_tags(const std::vector<msg::Tag>& tags) {
  std::vector<msg::Tag> out;
  for (const auto& tag : tags) upsert(out, tag);
  return out;
}

Status check_tags(std::string_view field, const std::vector<msg::Tag>& tags, size_t value_limit) {
  for (size_t i = 0; i < tags.size(); ++i) {
    const std::string at = std::string(field) + "[" + std::to_string(i) + "]";
    CAIRN_RETURN_IF_ERROR(detail::check_entity_key(at + ".key", tags[i].key));
    CAIRN_RETURN_IF_ERROR(detail::check_length(at + ".value", tags[i].value, value_limit));
  }
  return Status::ok_status();
}

Status check_tag_keys(std::string_view field, const std::vector<std::string>& keys) {
  for (size_t i = 0; i < keys.size(); ++i) {
    CAIRN_RETURN_IF_ERROR(
        detail::check_entity_key(std::string(field) + "[" + std::to_string(i) + "]", keys[i]));
  }
  return Status::ok_status();
}

// MLflow's rule: `a` replaces `b` as the latest point when its (step, timestamp) is greater, or
// equal with a greater value.
bool is_newer(const msg::Metric& a, const msg::Metric& b) {
  if (a.step != b.step) return a.step > b.step;
  if (a.timestamp != b.timestamp) return a.timestamp > b.timestamp;
  return a.value > b.value;
}

// ---- Keys ----

std::string experiment_key(uint64_t id) {
  return std::string(1, kExperimentById) + detail::encode_fixed64(id);
}
std::string experiment_name_key(std::string_view name) {
  return std::string(1, kExperimentByName) + std::string(name);
}

// The raw 16 bytes of a run id, or nullopt when it is not 32 lowercase hex chars.
std::optional<std::string> raw_run_id(std::string_view run_id) {
  if (run_id.size() != 2 * kRunIdBytes) return std::nullopt;
  return detail::from_hex(run_id);
}

std::string run_key(uint64_t experiment_id, int64_t start_time, std::string_view raw_id) {
  return detail::encode_fixed64(experiment_id) +
         detail::inverted_u64(static_cast<uint64_t>(start_time)) + std::string(raw_id);
}

std::string metric_prefix(std::string_view raw_id, std::string_view key) {
  std::string prefix;
  prefix.reserve(raw_id.size() + key.size() + 1 + kMetricSuffixBytes);
  prefix.append(raw_id);
  prefix.append(key);
  prefix.push_back('\0');
  return prefix;
}

uint64_t value_bits(double value) {
  if (std::isnan(value)) return kCanonicalNan;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

double bits_value(uint64_t bits) {
  double value = 0;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Appends the point's step, timestamp and value (kMetricSuffixBytes) to a metric_prefix.
void append_metric_suffix(std::string& key, const msg::Metric& metric) {
  const uint64_t parts[] = {static_cast<uint64_t>(metric.step) ^ kSignBit,
                            static_cast<uint64_t>(metric.timestamp) ^ kSignBit,
                            value_bits(metric.value)};
  for (uint64_t part : parts) {
    for (int shift = 56; shift >= 0; shift -= 8) key.push_back(static_cast<char>(part >> shift));
  }
}

std::string model_scope(std::string_view name) {
  return std::string(name) + '\0';
}

std::string version_key(std::string_view name, uint64_t version) {
  return model_scope(name) + detail::inverted_u64(version);
}

std::string blob_ref_key(std::string_view sha256, std::string_view name, uint64_t version) {
  return std::string(sha256) + model_scope(name) + detail::encode_fixed64(version);
}

// ---- Search domains and field lookups ----

enum RunAttribute : int {
  kRunIdAttr,
  kRunNameAttr,
  kStatusAttr,
  kUserIdAttr,
  kArtifactUriAttr,
  kExperimentIdAttr,
  kConfigDigestAttr,
  kDatasetDigestAttr,
  kParentRunIdAttr,
  kStartTimeAttr,
  kEndTimeAttr,
};

const SearchDomain& run_domain() {
  static const SearchDomain domain{"runs",
                                   {
                                       {"run_id", kRunIdAttr, ValueKind::text},
                                       {"run_name", kRunNameAttr, ValueKind::text},
                                       {"status", kStatusAttr, ValueKind::text},
                                       {"user_id", kUserIdAttr, ValueKind::text},
                                       {"artifact_uri", kArtifactUriAttr, ValueKind::text},
                                       {"experiment_id", kExperimentIdAttr, ValueKind::text},
                                       {"config_digest", kConfigDigestAttr, ValueKind::text},
                                       {"dataset_digest", kDatasetDigestAttr, ValueKind::text},
                                       {"parent_run_id", kParentRunIdAttr, ValueKind::text},
                                       {"start_time", kStartTimeAttr, ValueKind::number},
                                       {"created", kStartTimeAttr, ValueKind::number},
                                       {"Created", kStartTimeAttr, ValueKind::number},
                                       {"end_time", kEndTimeAttr, ValueKind::number},
                                   },
                                   /*metrics=*/true,
                                   /*params=*/true,
                                   /*tags=*/true,
                                   /*bare_attributes=*/false};
  return domain;
}

template <class Item>
FieldValue text_of(const std::vector<Item>& items, std::string_view key) {
  const Item* item = lookup_key(items, key);
  return item == nullptr ? FieldValue::missing() : FieldValue::of(std::string_view(item->value));
}

// A stored run summary unpacked in place: filters, the view type and sort keys read it without
// decoding it into a msg::Run, which costs several times more (a std::string per field). Only
// the runs a reply returns are decoded. One view is reused for every run of a scan; what it
// points into is valid until the next parse() and while the scanned value is.
class RunView {
 public:
  Status parse(std::string_view key, std::string_view value) {
    key_ = key;
    zone_.clear();
    try {
      size_t offset = 0;
      // Strings are referenced in `value`, not copied: the view lives within one visit.
      root_ = msgpack::unpack(
          zone_, value.data(), value.size(), offset,
          [](msgpack::type::object_type, size_t, void*) { return true; }, nullptr);
    } catch (const std::exception& e) {
      return corrupt(kRuns, key, Status(Code::data_loss, e.what()));
    }
    info_ = wire::find_key(root_, "info");
    const msgpack::object* data = wire::find_key(root_, "data");
    if (info_ == nullptr || info_->type != msgpack::type::MAP || data == nullptr) {
      return corrupt(kRuns, key, Status(Code::data_loss, "not a run summary"));
    }
    metrics_ = wire::find_key(*data, "metrics");
    params_ = wire::find_key(*data, "params");
    tags_ = wire::find_key(*data, "tags");
    return Status::ok_status();
  }

  std::string_view lifecycle_stage() const {
    return text(wire::find_key(*info_, "lifecycle_stage"));
  }

  FieldValue field(const Field& field) const {
    switch (field.entity) {
      case Entity::metric: {
        const msgpack::object* metric = entry(metrics_, field.key);
        return metric == nullptr ? FieldValue::missing()
                                 : FieldValue::of(number(wire::find_key(*metric, "value")));
      }
      case Entity::param: return entry_text(params_, field.key);
      case Entity::tag: return entry_text(tags_, field.key);
      case Entity::attribute: break;
    }
    switch (field.attribute) {
      case kRunIdAttr: return info_text("run_id");
      case kRunNameAttr: return info_text("run_name");
      case kStatusAttr: return info_text("status");
      case kUserIdAttr: return info_text("user_id");
      case kArtifactUriAttr: return info_text("artifact_uri");
      case kExperimentIdAttr: return info_text("experiment_id");
      case kConfigDigestAttr: return info_text("config_digest");
      case kDatasetDigestAttr: return info_text("dataset_digest");
      case kParentRunIdAttr: return info_text("parent_run_id");
      case kStartTimeAttr: return FieldValue::of(number(wire::find_key(*info_, "start_time")));
      case kEndTimeAttr: return FieldValue::of(number(wire::find_key(*info_, "end_time")));
      default: return FieldValue::missing();
    }
  }

  Result<msg::Run> decode() const {
    msg::Run run;
    const Status status = wire::read_value(root_, run, "");
    if (!status.ok()) return corrupt(kRuns, key_, status);
    return run;
  }

 private:
  static std::string_view text(const msgpack::object* object) {
    if (object == nullptr || object->type != msgpack::type::STR) return {};
    return {object->via.str.ptr, object->via.str.size};
  }
  static double number(const msgpack::object* object) {
    if (object == nullptr) return 0;
    switch (object->type) {
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: return object->via.f64;
      case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(object->via.u64);
      case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(object->via.i64);
      default: return 0;
    }
  }
  // The {key, value, ...} map of a list whose "key" is `key` (lists are short: scan them).
  static const msgpack::object* entry(const msgpack::object* list, std::string_view key) {
    if (list == nullptr || list->type != msgpack::type::ARRAY) return nullptr;
    for (uint32_t i = 0; i < list->via.array.size; ++i) {
      const msgpack::object& item = list->via.array.ptr[i];
      if (text(wire::find_key(item, "key")) == key) return &item;
    }
    return nullptr;
  }
  static FieldValue entry_text(const msgpack::object* list, std::string_view key) {
    const msgpack::object* item = entry(list, key);
    return item == nullptr ? FieldValue::missing()
                           : FieldValue::of(text(wire::find_key(*item, "value")));
  }
  FieldValue info_text(const char* name) const {
    return FieldValue::of(text(wire::find_key(*info_, name)));
  }

  std::string_view key_;
  msgpack::zone zone_;
  msgpack::object root_;
  const msgpack::object* info_ = nullptr;
  const msgpack::object* metrics_ = nullptr;
  const msgpack::object* params_ = nullptr;
  const msgpack::object* tags_ = nullptr;
};

enum ExperimentAttribute : int { kExpNameAttr, kExpIdAttr, kExpCreatedAttr, kExpUpdatedAttr };

const SearchDomain& experiment_domain() {
  static const SearchDomain domain{"experiments",
                                   {
                                       {"name", kExpNameAttr, ValueKind::text},
                                       {"experiment_id", kExpIdAttr, ValueKind::number},
                                       {"creation_time", kExpCreatedAttr, ValueKind::number},
                                       {"last_update_time", kExpUpdatedAttr, ValueKind::number},
                                   },
                                   /*metrics=*/false,
                                   /*params=*/false,
                                   /*tags=*/true,
                                   /*bare_attributes=*/true};
  return domain;
}

FieldValue experiment_field(const msg::Experiment& experiment, const Field& field) {
  if (field.entity == Entity::tag) return text_of(experiment.tags, field.key);
  switch (field.attribute) {
    case kExpNameAttr: return FieldValue::of(std::string_view(experiment.name));
    case kExpIdAttr: {
      auto id = detail::parse_decimal(experiment.experiment_id);
      return id ? FieldValue::of(static_cast<double>(*id)) : FieldValue::missing();
    }
    case kExpCreatedAttr: return FieldValue::of(static_cast<double>(experiment.creation_time));
    case kExpUpdatedAttr: return FieldValue::of(static_cast<double>(experiment.last_update_time));
    default: return FieldValue::missing();
  }
}

enum ModelAttribute : int { kModelNameAttr, kModelCreatedAttr, kModelUpdatedAttr };

const SearchDomain& model_domain() {
  static const SearchDomain domain{
      "registered models",
      {
          {"name", kModelNameAttr, ValueKind::text},
          {"creation_timestamp", kModelCreatedAttr, ValueKind::number},
          {"timestamp", kModelCreatedAttr, ValueKind::number},
          {"last_updated_timestamp", kModelUpdatedAttr, ValueKind::number},
      },
      /*metrics=*/false,
      /*params=*/false,
      /*tags=*/true,
      /*bare_attributes=*/true};
  return domain;
}

FieldValue model_field(const msg::RegisteredModel& model, const Field& field) {
  if (field.entity == Entity::tag) return text_of(model.tags, field.key);
  switch (field.attribute) {
    case kModelNameAttr: return FieldValue::of(std::string_view(model.name));
    case kModelCreatedAttr: return FieldValue::of(static_cast<double>(model.creation_timestamp));
    case kModelUpdatedAttr:
      return FieldValue::of(static_cast<double>(model.last_updated_timestamp));
    default: return FieldValue::missing();
  }
}

enum VersionAttribute : int {
  kVersionNameAttr,
  kVersionNumberAttr,
  kVersionRunIdAttr,
  kVersionSourceAttr,
  kVersionLabelAttr,
  kVersionStatusAttr,
  kVersionCreatedAttr,
  kVersionUpdatedAttr,
};

const SearchDomain& version_domain() {
  static const SearchDomain domain{
      "model versions",
      {
          {"name", kVersionNameAttr, ValueKind::text},
          {"version_number", kVersionNumberAttr, ValueKind::number},
          {"version", kVersionNumberAttr, ValueKind::number},
          {"run_id", kVersionRunIdAttr, ValueKind::text},
          {"source", kVersionSourceAttr, ValueKind::text},
          {"source_path", kVersionSourceAttr, ValueKind::text},
          {"version_label", kVersionLabelAttr, ValueKind::text},
          {"status", kVersionStatusAttr, ValueKind::text},
          {"creation_timestamp", kVersionCreatedAttr, ValueKind::number},
          {"last_updated_timestamp", kVersionUpdatedAttr, ValueKind::number},
      },
      /*metrics=*/false,
      /*params=*/false,
      /*tags=*/true,
      /*bare_attributes=*/true};
  return domain;
}

FieldValue version_field(const msg::ModelVersion& version, const Field& field) {
  if (field.entity == Entity::tag) return text_of(version.tags, field.key);
  switch (field.attribute) {
    case kVersionNameAttr: return FieldValue::of(std::string_view(version.name));
    case kVersionNumberAttr: {
      auto number = detail::parse_decimal(version.version);
      return number ? FieldValue::of(static_cast<double>(*number)) : FieldValue::missing();
    }
    case kVersionRunIdAttr: return FieldValue::of(std::string_view(version.run_id));
    case kVersionSourceAttr: return FieldValue::of(std::string_view(version.source));
    case kVersionLabelAttr: return FieldValue::of(std::string_view(version.version_label));
    case kVersionStatusAttr: return FieldValue::of(std::string_view(version.status));
    case kVersionCreatedAttr:
      return FieldValue::of(static_cast<double>(version.creation_timestamp));
    case kVersionUpdatedAttr:
      return FieldValue::of(static_cast<double>(version.last_updated_timestamp));
    default: return FieldValue::missing();
  }
}

bool is_attribute(const OrderTerm& term, int attribute) {
  return term.field.entity == Entity::attribute && term.field.attribute == attribute;
}

// Narrows a name scan using the filter's conditions on `name_attribute`: `name = 'x'` scans
// only x, `name LIKE 'ab%'` only names starting with "ab". Returns false when no name can match.
bool narrow_name_prefix(const std::vector<Condition>& conditions, int name_attribute,
                        std::string& prefix, bool& exact) {
  for (const auto& condition : conditions) {
    if (condition.field.entity != Entity::attribute ||
        condition.field.attribute != name_attribute) {
      continue;
    }
    std::string_view candidate;
    bool candidate_exact = false;
    if (condition.op == Comparator::eq) {
      candidate = condition.value.text;
      candidate_exact = true;
    } else if (condition.op == Comparator::like) {
      candidate = detail::like_literal_prefix(condition.value.text);
    } else {
      continue;
    }
    if (candidate.substr(0, prefix.size()) == prefix) {
      if (!exact) {
        prefix = std::string(candidate);
        exact = candidate_exact;
      } else if (candidate_exact && candidate != prefix) {
        return false;
      }
    } else if (std::string_view(prefix).substr(0, candidate.size()) != candidate) {
      return false;  // neither is a prefix of the other: no name has both
    }
  }
  return true;
}

// ---- Sorted listings: the best `capacity` items after a cursor ----

template <class Item>
struct Ranked {
  std::vector<SortValue> values;
  std::string unique;  // breaks ties, ascending
  Item item;
};

template <class Item>
class BestItems {
 public:
  BestItems(const std::vector<OrderTerm>& order, size_t capacity,
            const std::optional<PageToken>& cursor)
      : order_(order), capacity_(capacity), cursor_(cursor) {}

  // Whether an item with these sort values would be kept (it is after the cursor and, when
  // full, before the worst kept), so the caller can skip building it.
  bool wanted(const std::vector<SortValue>& values, std::string_view unique) const {
    if (cursor_ && compare(values, unique, cursor_->values, cursor_->unique.data) <= 0) {
      return false;
    }
    if (heap_.size() < capacity_) return true;
    return compare(values, unique, heap_.front().values, heap_.front().unique) < 0;
  }

  void add(std::vector<SortValue> values, std::string unique, Item item) {
    heap_.push_back({std::move(values), std::move(unique), std::move(item)});
    std::push_heap(heap_.begin(), heap_.end(), less());
    if (heap_.size() > capacity_) {
      std::pop_heap(heap_.begin(), heap_.end(), less());
      heap_.pop_back();
    }
  }

  // The kept items, best first.
  std::vector<Ranked<Item>> take() {
    std::sort_heap(heap_.begin(), heap_.end(), less());
    return std::move(heap_);
  }

 private:
  int compare(const std::vector<SortValue>& a, std::string_view a_unique,
              const std::vector<SortValue>& b, std::string_view b_unique) const {
    const int cmp = detail::compare_sort_values(order_, a, b);
    if (cmp != 0) return cmp;
    return a_unique.compare(b_unique);
  }
  auto less() const {
    return [this](const Ranked<Item>& a, const Ranked<Item>& b) {
      return compare(a.values, a.unique, b.values, b.unique) < 0;
    };
  }

  const std::vector<OrderTerm>& order_;
  size_t capacity_;
  const std::optional<PageToken>& cursor_;
  std::vector<Ranked<Item>> heap_;
};

// Moves the first `limit` ranked items into `out`; returns the next page token ("" when none
// are left).
template <class Item>
std::string take_sorted_page(std::vector<Ranked<Item>> ranked, size_t limit, uint64_t query,
                             std::vector<Item>& out) {
  std::string next;
  if (ranked.size() > limit) {
    PageToken token;
    token.query = query;
    token.values = ranked[limit - 1].values;
    token.unique.data = ranked[limit - 1].unique;
    next = detail::encode_page_token(token);
    ranked.resize(limit);
  }
  out.reserve(ranked.size());
  for (auto& entry : ranked) out.push_back(std::move(entry.item));
  return next;
}

std::string key_page_token(uint64_t query, std::string key) {
  PageToken token;
  token.query = query;
  token.key.data = std::move(key);
  return detail::encode_page_token(token);
}

Result<std::optional<PageToken>> read_page_token(const std::string& text, uint64_t query) {
  if (text.empty()) return std::optional<PageToken>();
  auto token = detail::decode_page_token(text, query);
  if (!token.ok()) return token.status();
  return std::optional<PageToken>(std::move(*token));
}

enum class ViewType { active, deleted, all };

Result<ViewType> parse_view_type(std::string_view field, std::string_view text) {
  if (text.empty() || text == "ACTIVE_ONLY") return ViewType::active;
  if (text == "DELETED_ONLY") return ViewType::deleted;
  if (text == "ALL") return ViewType::all;
  return bad_request(std::string(field) + ": " + shown(text) +
                     " is not a view type (ACTIVE_ONLY, DELETED_ONLY, ALL)");
}

bool in_view(ViewType view, std::string_view lifecycle_stage) {
  switch (view) {
    case ViewType::active: return lifecycle_stage != kDeleted;
    case ViewType::deleted: return lifecycle_stage == kDeleted;
    case ViewType::all: return true;
  }
  return true;
}

int64_t system_now_ms() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration_cast<std::chrono::milliseconds>(now).count();
}

// ---- Reading entities ----

struct LoadedRun {
  std::string key;  // reg_runs key
  msg::Run run;
};

Result<LoadedRun> load_run(KvStore& kv, std::string_view run_id, std::string_view field = {}) {
  const std::string prefix = field.empty() ? std::string() : std::string(field) + ": ";
  auto raw = raw_run_id(run_id);
  if (!raw) return not_found(prefix + "run " + shown(run_id) + " not found");
  auto key = kv.get(kRunIds, *raw);
  if (!key.ok()) return key.status();
  if (!key->has_value()) return not_found(prefix + "run " + shown(run_id) + " not found");
  auto run = read_record<msg::Run>(kv, kRuns, **key);
  if (!run.ok()) return run.status();
  if (!run->has_value()) {
    return error(Code::data_loss, "registry: run " + std::string(run_id) +
                                      " is indexed in reg_run_ids but missing from reg_runs");
  }
  return LoadedRun{std::move(**key), std::move(**run)};
}

Result<msg::Experiment> load_experiment(KvStore& kv, std::string_view id_text,
                                        std::string_view field) {
  auto id = detail::parse_decimal(id_text);
  if (!id) {
    return bad_request(std::string(field) + ": " + shown(id_text) +
                       " is not an experiment id (a decimal number)");
  }
  auto experiment = read_record<msg::Experiment>(kv, kExperiments, experiment_key(*id));
  if (!experiment.ok()) return experiment.status();
  if (!experiment->has_value()) {
    return not_found("experiment " + shown(id_text) + " not found");
  }
  return std::move(**experiment);
}

Result<ModelRecord> load_model(KvStore& kv, std::string_view name) {
  auto record = read_record<ModelRecord>(kv, kModels, name);
  if (!record.ok()) return record.status();
  if (!record->has_value()) return not_found("registered model " + shown(name) + " not found");
  return std::move(**record);
}

Result<uint64_t> parse_version(std::string_view field, std::string_view version) {
  auto number = detail::parse_decimal(version);
  if (!number || *number == 0) {
    return bad_request(std::string(field) + ": " + shown(version) +
                       " is not a version number (1, 2, ...)");
  }
  return *number;
}

Result<msg::ModelVersion> load_version(KvStore& kv, std::string_view name, uint64_t version,
                                       std::string_view field = {}) {
  auto stored = read_record<msg::ModelVersion>(kv, kVersions, version_key(name, version));
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) {
    const std::string prefix = field.empty() ? std::string() : std::string(field) + ": ";
    return not_found(prefix + "version " + std::to_string(version) + " of registered model " +
                     shown(name) + " not found");
  }
  return std::move(**stored);
}

// Fills version.aliases from the model's aliases.
void attach_aliases(msg::ModelVersion& version, const std::vector<msg::ModelAlias>& aliases) {
  version.aliases.clear();
  for (const auto& alias : aliases) {
    if (alias.version == version.version) version.aliases.push_back(alias.alias);
  }
}

// The newest version of model `name`, with its aliases; nullopt when it has none.
Result<std::optional<msg::ModelVersion>> newest_version(KvStore& kv, const ModelRecord& record) {
  std::optional<msg::ModelVersion> newest;
  Status decode_status;
  const std::string scope = model_scope(record.model.name);
  CAIRN_RETURN_IF_ERROR(
      kv.scan(kVersions, scope, {}, [&](std::string_view key, std::string_view value) {
        auto version = decode_record<msg::ModelVersion>(kVersions, key, value);
        if (!version.ok()) {
          decode_status = version.status();
        } else {
          newest = std::move(*version);
        }
        return false;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  if (newest) attach_aliases(*newest, record.model.aliases);
  return newest;
}

// The model as get_model and search_models reply: with latest_versions filled.
Result<msg::RegisteredModel> model_reply(KvStore& kv, ModelRecord record) {
  auto newest = newest_version(kv, record);
  if (!newest.ok()) return newest.status();
  record.model.latest_versions.clear();
  if (newest->has_value()) record.model.latest_versions.push_back(std::move(**newest));
  return std::move(record.model);
}

}  // namespace

// ---- LogBatchGroup ----

LogBatchGroup::LogBatchGroup() : state_(std::make_unique<detail::LogBatchGroupState>()) {}
LogBatchGroup::~LogBatchGroup() = default;
LogBatchGroup::LogBatchGroup(LogBatchGroup&&) noexcept = default;
LogBatchGroup& LogBatchGroup::operator=(LogBatchGroup&&) noexcept = default;
size_t LogBatchGroup::requests() const {
  return state_ ? state_->requests : 0;
}
size_t LogBatchGroup::points() const {
  return state_ ? state_->points_count : 0;
}

// ---- RegistryStore ----

std::vector<std::string> registry_families() {
  return {std::string(kMeta),     std::string(kExperiments), std::string(kRuns),
          std::string(kRunIds),   std::string(kMetrics),     std::string(kModels),
          std::string(kVersions), std::string(kAliasLog),    std::string(kBlobRefs)};
}

RegistryStore::RegistryStore(KvStore& kv, const RegistryStoreOptions& options) : kv_(kv) {
  write_options_.sync = options.sync;
}

RegistryStore::~RegistryStore() = default;

Result<std::unique_ptr<RegistryStore>> RegistryStore::open(KvStore& kv,
                                                           const RegistryStoreOptions& options) {
  std::unique_ptr<RegistryStore> store(new RegistryStore(kv, options));
  try {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(),
                       device(), device(), device(), device()};
    store->run_id_rng_.seed(seed);
  } catch (const std::exception& e) {
    return error(Code::internal, std::string("std::random_device: ") + e.what());
  }
  CAIRN_RETURN_IF_ERROR(store->load_counters());
  CAIRN_RETURN_IF_ERROR(store->ensure_default_experiment(system_now_ms()));
  return store;
}

Status RegistryStore::load_counters() {
  auto load = [&](std::string_view key, uint64_t& counter) -> Status {
    auto stored = kv_.get(kMeta, key);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) return Status::ok_status();
    auto value = detail::decode_fixed64(**stored);
    if (!value) {
      return error(Code::data_loss, "registry: family " + std::string(kMeta) + " key " +
                                        std::string(key) + ": expected 8 bytes, found " +
                                        std::to_string((*stored)->size()));
    }
    counter = *value;
    return Status::ok_status();
  };
  CAIRN_RETURN_IF_ERROR(load(kNextExperimentIdKey, next_experiment_id_));
  return load(kNextAliasEventKey, next_alias_event_);
}

Status RegistryStore::ensure_default_experiment(int64_t now_ms) {
  auto stored = kv_.get(kExperiments, experiment_key(0));
  if (!stored.ok()) return stored.status();
  if (stored->has_value()) return Status::ok_status();
  auto holder = kv_.get(kExperiments, experiment_name_key(kDefaultExperimentName));
  if (!holder.ok()) return holder.status();
  if (holder->has_value()) {
    return error(Code::data_loss, "registry: experiment 0 is missing but its name '" +
                                      std::string(kDefaultExperimentName) +
                                      "' is held by another experiment");
  }
  msg::Experiment experiment;
  experiment.experiment_id = std::string(kDefaultExperimentId);
  experiment.name = std::string(kDefaultExperimentName);
  experiment.lifecycle_stage = std::string(kActive);
  experiment.creation_time = now_ms;
  experiment.last_update_time = now_ms;
  WriteBatch batch;
  batch.put(kExperiments, experiment_key(0), wire::encode(experiment));
  batch.put(kExperiments, experiment_name_key(experiment.name), detail::encode_fixed64(0));
  if (next_experiment_id_ == 0) next_experiment_id_ = 1;
  batch.put(kMeta, kNextExperimentIdKey, detail::encode_fixed64(next_experiment_id_));
  return kv_.write(batch, write_options_);
}

std::string RegistryStore::new_run_id() {
  std::string raw(kRunIdBytes, '\0');
  for (size_t i = 0; i < kRunIdBytes; i += 8) {
    uint64_t draw = run_id_rng_();
    for (size_t j = 0; j < 8; ++j) {
      raw[i + j] = static_cast<char>(draw & 0xff);
      draw >>= 8;
    }
  }
  return raw;
}

// ---- Experiments ----

Result<msg::CreateExperimentReply> RegistryStore::create_experiment(
    const msg::CreateExperimentRequest& request, int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(detail::check_experiment_name("name", request.name));
  if (request.artifact_location.rfind("runs:", 0) == 0) {
    return bad_request("artifact_location: " + shown(request.artifact_location) +
                       " is a runs:/ URI, which cannot hold an experiment's artifacts");
  }
  CAIRN_RETURN_IF_ERROR(check_tags("tags", request.tags, kMaxExperimentTagValueChars));
  auto holder = kv_.get(kExperiments, experiment_name_key(request.name));
  if (!holder.ok()) return holder.status();
  if (holder->has_value()) {
    auto id = detail::decode_fixed64(**holder);
    std::string state;
    if (id) {
      auto existing = read_record<msg::Experiment>(kv_, kExperiments, experiment_key(*id));
      if (existing.ok() && existing->has_value() && (*existing)->lifecycle_stage == kDeleted) {
        state = " (deleted: a deleted experiment keeps its name)";
      }
    }
    return error(Code::already_exists,
                 "name: experiment " + shown(request.name) + " already exists" + state);
  }
  const uint64_t id = next_experiment_id_;
  msg::Experiment experiment;
  experiment.experiment_id = std::to_string(id);
  experiment.name = request.name;
  experiment.artifact_location = request.artifact_location;
  experiment.lifecycle_stage = std::string(kActive);
  experiment.creation_time = now_ms;
  experiment.last_update_time = now_ms;
  experiment.tags = sorted_tags(request.tags);

  WriteBatch batch;
  batch.put(kExperiments, experiment_key(id), wire::encode(experiment));
  batch.put(kExperiments, experiment_name_key(request.name), detail::encode_fixed64(id));
  batch.put(kMeta, kNextExperimentIdKey, detail::encode_fixed64(id + 1));
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  next_experiment_id_ = id + 1;
  msg::CreateExperimentReply reply;
  reply.experiment_id = experiment.experiment_id;
  return reply;
}

Result<msg::Experiment> RegistryStore::get_experiment(const msg::GetExperimentRequest& request) {
  const bool by_id = !request.experiment_id.empty();
  const bool by_name = !request.experiment_name.empty();
  if (by_id == by_name) {
    return bad_request("experiment_id, experiment_name: set exactly one of them");
  }
  if (by_id) return load_experiment(kv_, request.experiment_id, "experiment_id");
  auto holder = kv_.get(kExperiments, experiment_name_key(request.experiment_name));
  if (!holder.ok()) return holder.status();
  if (!holder->has_value()) {
    return not_found("experiment named " + shown(request.experiment_name) + " not found");
  }
  auto id = detail::decode_fixed64(**holder);
  if (!id) {
    return error(Code::data_loss, "registry: family " + std::string(kExperiments) +
                                      " name index of " + shown(request.experiment_name) +
                                      " is not 8 bytes");
  }
  return load_experiment(kv_, std::to_string(*id), "experiment_name");
}

Result<msg::SearchExperimentsReply> RegistryStore::search_experiments(
    const msg::SearchExperimentsRequest& request) {
  const SearchDomain& domain = experiment_domain();
  auto conditions = detail::bind_filter(domain, request.filter);
  if (!conditions.ok()) return conditions.status();
  auto order = detail::bind_order_by(domain, request.order_by);
  if (!order.ok()) return order.status();
  auto view = parse_view_type("view_type", request.view_type);
  if (!view.ok()) return view.status();
  // MLflow's default: creation_time DESC; ties (and every order) end with experiment_id.
  if (order->empty())
    order->push_back({Field{Entity::attribute, kExpCreatedAttr, {}, ValueKind::number}, false});
  const uint64_t query = detail::fingerprint_list(
      detail::fingerprint({"experiments", request.filter,
                           request.view_type.empty() ? "ACTIVE_ONLY" : request.view_type}),
      request.order_by);
  auto cursor = read_page_token(request.page_token, query);
  if (!cursor.ok()) return cursor.status();
  const uint32_t limit =
      page_size(request.max_results, kDefaultExperimentsPage, kMaxExperimentsPage);

  BestItems<msg::Experiment> best(*order, size_t{limit} + 1, *cursor);
  Status decode_status;
  const std::string by_id(1, kExperimentById);
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kExperiments, by_id, {}, [&](std::string_view key, std::string_view value) {
        auto experiment = decode_record<msg::Experiment>(kExperiments, key, value);
        if (!experiment.ok()) {
          decode_status = experiment.status();
          return false;
        }
        if (!in_view(*view, experiment->lifecycle_stage)) return true;
        auto lookup = [&](const Field& field) { return experiment_field(*experiment, field); };
        if (!detail::all_hold(*conditions, lookup)) return true;
        auto values = detail::sort_values(*order, lookup);
        std::string unique(key.substr(1));  // the id, big-endian: numeric order
        if (best.wanted(values, unique))
          best.add(std::move(values), std::move(unique), std::move(*experiment));
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  msg::SearchExperimentsReply reply;
  reply.next_page_token = take_sorted_page(best.take(), limit, query, reply.experiments);
  return reply;
}

Status RegistryStore::delete_experiment(const std::string& experiment_id, int64_t now_ms) {
  auto experiment = load_experiment(kv_, experiment_id, "experiment_id");
  if (!experiment.ok()) return experiment.status();
  if (experiment->experiment_id == kDefaultExperimentId) {
    return bad_request("experiment_id: the Default experiment (0) cannot be deleted");
  }
  if (experiment->lifecycle_stage == kDeleted) return Status::ok_status();
  experiment->lifecycle_stage = std::string(kDeleted);
  experiment->last_update_time = now_ms;
  const uint64_t id = *detail::parse_decimal(experiment->experiment_id);
  return kv_.put(kExperiments, experiment_key(id), wire::encode(*experiment), write_options_);
}

// ---- Runs ----

Result<msg::Run> RegistryStore::create_run(const msg::CreateRunRequest& request, int64_t now_ms) {
  const std::string experiment_id =
      request.experiment_id.empty() ? std::string(kDefaultExperimentId) : request.experiment_id;
  auto experiment = load_experiment(kv_, experiment_id, "experiment_id");
  if (!experiment.ok()) return experiment.status();
  if (experiment->lifecycle_stage == kDeleted) {
    return bad_request("experiment_id: experiment " + shown(experiment_id) +
                       " is deleted; runs can only be created in active experiments");
  }
  CAIRN_RETURN_IF_ERROR(detail::check_non_negative("start_time", request.start_time));
  CAIRN_RETURN_IF_ERROR(detail::check_length("run_name", request.run_name, kMaxRunNameChars));
  CAIRN_RETURN_IF_ERROR(check_tags("tags", request.tags, kMaxRunTagValueChars));
  if (!request.parent_run_id.empty()) {
    auto parent = load_run(kv_, request.parent_run_id, "parent_run_id");
    if (!parent.ok()) return parent.status();
  }

  msg::Run run;
  msg::RunInfo& info = run.info;
  info.experiment_id = experiment_id;
  info.run_name = request.run_name;
  info.user_id = request.user_id;
  info.status = "RUNNING";
  info.start_time = request.start_time == 0 ? now_ms : request.start_time;
  info.lifecycle_stage = std::string(kActive);
  info.config_digest = request.config_digest;
  info.dataset_digest = request.dataset_digest;
  info.parent_run_id = request.parent_run_id;
  run.data.tags = sorted_tags(request.tags);
  if (info.run_name.empty()) {
    if (const msg::Tag* tag = lookup_key(run.data.tags, kRunNameTag)) {
      CAIRN_RETURN_IF_ERROR(
          detail::check_length("tags[mlflow.runName]", tag->value, kMaxRunNameChars));
      info.run_name = tag->value;
    }
  } else {
    upsert(run.data.tags, msg::Tag{std::string(kRunNameTag), info.run_name});
  }
  if (info.parent_run_id.empty()) {
    if (const msg::Tag* tag = lookup_key(run.data.tags, kParentRunTag))
      info.parent_run_id = tag->value;
  }

  std::string raw_id;
  for (int attempt = 0;; ++attempt) {
    raw_id = new_run_id();
    auto taken = kv_.get(kRunIds, raw_id);
    if (!taken.ok()) return taken.status();
    if (!taken->has_value()) break;
    if (attempt > 8) return error(Code::internal, "registry: could not draw an unused run id");
  }
  info.run_id = detail::to_hex(raw_id);
  if (!experiment->artifact_location.empty()) {
    info.artifact_uri = experiment->artifact_location + "/" + info.run_id + "/artifacts";
  }
  const std::string key = run_key(*detail::parse_decimal(experiment_id), info.start_time, raw_id);
  WriteBatch batch;
  batch.put(kRuns, key, wire::encode(run));
  batch.put(kRunIds, raw_id, key);
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  return run;
}

Result<msg::Run> RegistryStore::get_run(const std::string& run_id) {
  auto loaded = load_run(kv_, run_id);
  if (!loaded.ok()) return loaded.status();
  return std::move(loaded->run);
}

Result<msg::RunInfo> RegistryStore::update_run(const msg::UpdateRunRequest& request,
                                               int64_t now_ms) {
  auto loaded = load_run(kv_, request.run_id, "run_id");
  if (!loaded.ok()) return loaded.status();
  msg::Run& run = loaded->run;
  if (run.info.lifecycle_stage == kDeleted) {
    return bad_request("run_id: run " + shown(request.run_id) +
                       " is deleted and cannot be updated");
  }
  if (!request.status.empty() && !detail::is_run_status(request.status)) {
    return bad_request("status: " + shown(request.status) +
                       " is not a run status (RUNNING, SCHEDULED, FINISHED, FAILED, KILLED)");
  }
  CAIRN_RETURN_IF_ERROR(detail::check_non_negative("end_time", request.end_time));
  CAIRN_RETURN_IF_ERROR(detail::check_length("run_name", request.run_name, kMaxRunNameChars));
  if (!request.status.empty()) run.info.status = request.status;
  if (request.end_time != 0) {
    run.info.end_time = request.end_time;
  } else if (!request.status.empty() && detail::is_terminal_run_status(request.status) &&
             run.info.end_time == 0) {
    run.info.end_time = now_ms;
  }
  if (!request.run_name.empty()) {
    run.info.run_name = request.run_name;
    upsert(run.data.tags, msg::Tag{std::string(kRunNameTag), request.run_name});
  }
  CAIRN_RETURN_IF_ERROR(kv_.put(kRuns, loaded->key, wire::encode(run), write_options_));
  return std::move(run.info);
}

Status RegistryStore::delete_run(const std::string& run_id, int64_t /*now_ms*/) {
  auto loaded = load_run(kv_, run_id, "run_id");
  if (!loaded.ok()) return loaded.status();
  if (loaded->run.info.lifecycle_stage == kDeleted) return Status::ok_status();
  loaded->run.info.lifecycle_stage = std::string(kDeleted);
  return kv_.put(kRuns, loaded->key, wire::encode(loaded->run), write_options_);
}

Result<msg::SearchRunsReply> RegistryStore::search_runs(const msg::SearchRunsRequest& request) {
  const SearchDomain& domain = run_domain();
  auto conditions = detail::bind_filter(domain, request.filter);
  if (!conditions.ok()) return conditions.status();
  auto order = detail::bind_order_by(domain, request.order_by);
  if (!order.ok()) return order.status();
  auto view = parse_view_type("run_view_type", request.run_view_type);
  if (!view.ok()) return view.status();
  // MLflow orders by start_time DESC after the requested terms unless they name start_time;
  // run_id breaks the remaining ties.
  const bool names_start_time = std::any_of(order->begin(), order->end(), [](const OrderTerm& t) {
    return is_attribute(t, kStartTimeAttr);
  });
  if (!names_start_time) {
    order->push_back({Field{Entity::attribute, kStartTimeAttr, {}, ValueKind::number}, false});
  }
  std::vector<uint64_t> experiment_ids;
  for (size_t i = 0; i < request.experiment_ids.size(); ++i) {
    auto id = detail::parse_decimal(request.experiment_ids[i]);
    if (!id) {
      return bad_request("experiment_ids[" + std::to_string(i) +
                         "]: " + shown(request.experiment_ids[i]) +
                         " is not an experiment id (a decimal number)");
    }
    if (std::find(experiment_ids.begin(), experiment_ids.end(), *id) == experiment_ids.end()) {
      experiment_ids.push_back(*id);
    }
  }
  std::vector<std::string> scope;
  for (uint64_t id : experiment_ids) scope.push_back(std::to_string(id));
  const uint64_t query = detail::fingerprint_list(
      detail::fingerprint_list(
          detail::fingerprint(
              {"runs", request.filter,
               request.run_view_type.empty() ? "ACTIVE_ONLY" : request.run_view_type}),
          scope),
      request.order_by);
  auto cursor = read_page_token(request.page_token, query);
  if (!cursor.ok()) return cursor.status();
  const uint32_t limit = page_size(request.max_results, kDefaultRunsPage, kMaxRunsPage);
  msg::SearchRunsReply reply;
  Status decode_status;
  RunView run_view;
  auto lookup = [&](const Field& field) { return run_view.field(field); };

  // Whether a stored run belongs in the reply (read in place, not decoded).
  auto admit = [&](std::string_view key, std::string_view value) {
    decode_status = run_view.parse(key, value);
    if (!decode_status.ok()) return false;
    if (!in_view(*view, run_view.lifecycle_stage())) return false;
    return detail::all_hold(*conditions, lookup);
  };
  auto decode = [&](msg::Run& run) {
    auto decoded = run_view.decode();
    if (!decoded.ok()) {
      decode_status = decoded.status();
      return false;
    }
    run = std::move(*decoded);
    return true;
  };

  const bool key_order = order->size() == 1 && is_attribute(order->front(), kStartTimeAttr) &&
                         !order->front().ascending;
  if (key_order) {
    // The default order is the key order within an experiment: read each experiment's runs
    // from the cursor until limit + 1 match, then merge by (start_time DESC, run_id).
    const std::string after = *cursor ? (*cursor)->key.data : std::string();
    std::vector<std::pair<std::string, msg::Run>> found;
    for (uint64_t id : experiment_ids) {
      const std::string prefix = detail::encode_fixed64(id);
      const std::string start_after = after.empty() ? std::string() : prefix + after;
      size_t taken = 0;
      CAIRN_RETURN_IF_ERROR(
          kv_.scan(kRuns, prefix, start_after, [&](std::string_view key, std::string_view value) {
            if (!admit(key, value)) return decode_status.ok();
            msg::Run run;
            if (!decode(run)) return false;
            found.emplace_back(std::string(key.substr(prefix.size())), std::move(run));
            return ++taken <= limit;
          }));
      CAIRN_RETURN_IF_ERROR(decode_status);
    }
    if (experiment_ids.size() > 1) {
      std::stable_sort(found.begin(), found.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
    }
    if (found.size() > limit) {
      reply.next_page_token = key_page_token(query, found[limit - 1].first);
      found.resize(limit);
    }
    reply.runs.reserve(found.size());
    for (auto& entry : found) reply.runs.push_back(std::move(entry.second));
    return reply;
  }

  BestItems<msg::Run> best(*order, size_t{limit} + 1, *cursor);
  for (uint64_t id : experiment_ids) {
    const std::string prefix = detail::encode_fixed64(id);
    CAIRN_RETURN_IF_ERROR(
        kv_.scan(kRuns, prefix, {}, [&](std::string_view key, std::string_view value) {
          if (!admit(key, value)) return decode_status.ok();
          auto values = detail::sort_values(*order, lookup);
          std::string unique(key.substr(key.size() - kRunIdBytes));  // run_id order
          if (!best.wanted(values, unique)) return true;
          msg::Run run;
          if (!decode(run)) return false;
          best.add(std::move(values), std::move(unique), std::move(run));
          return true;
        }));
    CAIRN_RETURN_IF_ERROR(decode_status);
  }
  reply.next_page_token = take_sorted_page(best.take(), limit, query, reply.runs);
  return reply;
}

// ---- log_batch ----

Status RegistryStore::stage_log_batch(const msg::LogBatchRequest& request, LogBatchGroup& group,
                                      int64_t /*now_ms*/) {
  if (!group.state_) group.state_ = std::make_unique<detail::LogBatchGroupState>();
  detail::LogBatchGroupState& state = *group.state_;
  auto limit = [](std::string_view what, size_t count, size_t max) -> Status {
    if (count <= max) return Status::ok_status();
    return bad_request(std::string(what) + ": a log_batch request may hold at most " +
                       std::to_string(max) + " " + std::string(what) + ", got " +
                       std::to_string(count) + "; split it across requests");
  };
  CAIRN_RETURN_IF_ERROR(limit("metrics", request.metrics.size(), kMaxBatchMetrics));
  CAIRN_RETURN_IF_ERROR(limit("params", request.params.size(), kMaxBatchParams));
  CAIRN_RETURN_IF_ERROR(limit("tags", request.tags.size(), kMaxBatchTags));
  const size_t items = request.metrics.size() + request.params.size() + request.tags.size();
  if (items > kMaxBatchItems) {
    return bad_request("metrics, params, tags: a log_batch request may hold at most " +
                       std::to_string(kMaxBatchItems) + " items in all, got " +
                       std::to_string(items));
  }
  // Metric keys repeat within a batch: check each distinct key once. Field names are built only
  // for an error: this loop runs once per point.
  std::vector<std::string_view> checked_keys;
  for (size_t i = 0; i < request.metrics.size(); ++i) {
    const msg::Metric& metric = request.metrics[i];
    auto at = [i](const char* member) { return "metrics[" + std::to_string(i) + "]." + member; };
    if (std::find(checked_keys.begin(), checked_keys.end(), metric.key) == checked_keys.end()) {
      CAIRN_RETURN_IF_ERROR(detail::check_entity_key(at("key"), metric.key));
      if (checked_keys.size() < kCheckedKeysRemembered) checked_keys.push_back(metric.key);
    }
    if (metric.timestamp < 0) {
      CAIRN_RETURN_IF_ERROR(detail::check_non_negative(at("timestamp"), metric.timestamp));
    }
  }
  for (size_t i = 0; i < request.params.size(); ++i) {
    const std::string at = "params[" + std::to_string(i) + "]";
    CAIRN_RETURN_IF_ERROR(detail::check_entity_key(at + ".key", request.params[i].key));
    CAIRN_RETURN_IF_ERROR(
        detail::check_length(at + ".value", request.params[i].value, kMaxParamValueChars));
    for (size_t j = 0; j < i; ++j) {
      if (request.params[j].key == request.params[i].key) {
        return bad_request("params: duplicate key " + shown(request.params[i].key) + " (params[" +
                           std::to_string(j) + "] and " + at +
                           "); a request may log each param once");
      }
    }
  }
  CAIRN_RETURN_IF_ERROR(check_tags("tags", request.tags, kMaxRunTagValueChars));
  for (size_t i = 0; i < request.tags.size(); ++i) {
    if (request.tags[i].key == kRunNameTag) {
      CAIRN_RETURN_IF_ERROR(detail::check_length("tags[" + std::to_string(i) + "].value",
                                                 request.tags[i].value, kMaxRunNameChars));
    }
  }

  auto loaded = load_run(kv_, request.run_id, "run_id");
  if (!loaded.ok()) return loaded.status();
  if (loaded->run.info.lifecycle_stage == kDeleted) {
    return bad_request("run_id: run " + shown(request.run_id) +
                       " is deleted; metrics, params and tags cannot be logged to it");
  }
  const std::string raw_id = *raw_run_id(request.run_id);
  auto pending_it = state.runs.find(raw_id);
  const detail::LogBatchGroupState::PendingRun* pending =
      pending_it == state.runs.end() ? nullptr : &pending_it->second;
  for (size_t i = 0; i < request.params.size(); ++i) {
    const msg::Param& param = request.params[i];
    const std::string* logged = nullptr;
    if (const msg::Param* stored = lookup_key(loaded->run.data.params, param.key)) {
      logged = &stored->value;
    } else if (pending != nullptr) {
      auto staged = pending->params.find(param.key);
      if (staged != pending->params.end()) logged = &staged->second;
    }
    if (logged != nullptr && *logged != param.value) {
      return bad_request("params[" + std::to_string(i) + "]: param " + shown(param.key) +
                         " of run " + request.run_id + " was already logged with value " +
                         shown(*logged) + "; it cannot change to " + shown(param.value) +
                         " (params are write-once)");
    }
  }

  // Valid: stage it. Nothing below fails.
  auto& run = state.runs[raw_id];
  run.run_key = std::move(loaded->key);
  for (const auto& param : request.params) run.params.emplace(param.key, param.value);
  for (const auto& tag : request.tags) run.tags[tag.key] = tag.value;
  state.point_keys.reserve(state.point_keys.size() + request.metrics.size());
  for (const msg::Metric& metric : request.metrics) {
    std::string key = metric_prefix(raw_id, metric.key);
    append_metric_suffix(key, metric);
    state.point_keys.push_back(std::move(key));
    auto [latest, inserted] = run.latest.try_emplace(metric.key, metric);
    if (!inserted && is_newer(metric, latest->second)) latest->second = metric;
  }
  ++state.requests;
  state.points_count += request.metrics.size();
  return Status::ok_status();
}

Status RegistryStore::commit(LogBatchGroup& group) {
  if (!group.state_ || group.state_->requests == 0) return Status::ok_status();
  auto state = std::move(group.state_);
  group.state_ = std::make_unique<detail::LogBatchGroupState>();
  std::sort(state->point_keys.begin(), state->point_keys.end());
  WriteBatch batch;
  for (size_t i = 0; i < state->point_keys.size(); ++i) {
    // A point logged twice is one key: write it once.
    if (i > 0 && state->point_keys[i] == state->point_keys[i - 1]) continue;
    batch.put(kMetrics, state->point_keys[i], {});
  }
  for (auto& [raw_id, pending] : state->runs) {
    auto stored = read_record<msg::Run>(kv_, kRuns, pending.run_key);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) {
      return error(Code::data_loss, "registry: run " + detail::to_hex(raw_id) +
                                        " vanished from reg_runs between stage and commit");
    }
    msg::Run& run = **stored;
    for (auto& [key, value] : pending.params) {
      if (const msg::Param* logged = lookup_key(run.data.params, key)) {
        if (logged->value != value) {
          return bad_request("params: param " + shown(key) + " of run " + run.info.run_id +
                             " was logged with value " + shown(logged->value) +
                             " by another group; it cannot change to " + shown(value));
        }
        continue;
      }
      upsert(run.data.params, msg::Param{key, value});
    }
    for (auto& [key, value] : pending.tags) {
      if (key == kRunNameTag) run.info.run_name = value;
      upsert(run.data.tags, msg::Tag{key, value});
    }
    for (auto& [key, metric] : pending.latest) {
      auto it = find_key(run.data.metrics, key);
      if (it != run.data.metrics.end() && it->key == key) {
        if (is_newer(metric, *it)) *it = metric;
      } else {
        run.data.metrics.insert(it, metric);
      }
    }
    batch.put(kRuns, pending.run_key, wire::encode(run));
  }
  return kv_.write(batch, write_options_);
}

Result<msg::MetricHistoryReply> RegistryStore::get_metric_history(
    const msg::GetMetricHistoryRequest& request) {
  auto loaded = load_run(kv_, request.run_id, "run_id");
  if (!loaded.ok()) return loaded.status();
  CAIRN_RETURN_IF_ERROR(detail::check_entity_key("metric_key", request.metric_key));
  const uint64_t query =
      detail::fingerprint({"metric_history", request.run_id, request.metric_key});
  auto cursor = read_page_token(request.page_token, query);
  if (!cursor.ok()) return cursor.status();
  const uint32_t limit =
      page_size(request.max_results, kDefaultMetricHistoryPage, kMaxMetricHistoryPage);
  const std::string prefix = metric_prefix(*raw_run_id(request.run_id), request.metric_key);
  const std::string start_after = *cursor ? prefix + (*cursor)->key.data : std::string();
  msg::MetricHistoryReply reply;
  std::string last_suffix;
  Status decode_status;
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kMetrics, prefix, start_after, [&](std::string_view key, std::string_view) {
        const std::string_view suffix = key.substr(prefix.size());
        if (reply.metrics.size() == limit) {
          reply.next_page_token = key_page_token(query, last_suffix);
          return false;
        }
        auto step = detail::decode_ordered_i64(suffix.substr(0, 8));
        auto timestamp = suffix.size() == kMetricSuffixBytes
                             ? detail::decode_ordered_i64(suffix.substr(8, 8))
                             : std::nullopt;
        auto bits = suffix.size() == kMetricSuffixBytes
                        ? detail::decode_fixed64(suffix.substr(16, 8))
                        : std::nullopt;
        if (!step || !timestamp || !bits) {
          decode_status = error(Code::data_loss, "registry: family " + std::string(kMetrics) +
                                                     " key " + detail::printable(key) +
                                                     ": expected a 24-byte point suffix");
          return false;
        }
        msg::Metric metric;
        metric.key = request.metric_key;
        metric.step = *step;
        metric.timestamp = *timestamp;
        metric.value = bits_value(*bits);
        reply.metrics.push_back(std::move(metric));
        last_suffix.assign(suffix);
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  return reply;
}

// ---- Registered models ----

Result<msg::RegisteredModel> RegistryStore::create_model(const msg::CreateModelRequest& request,
                                                         int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(detail::check_model_name("name", request.name));
  CAIRN_RETURN_IF_ERROR(check_tags("tags", request.tags, kMaxModelTagValueChars));
  auto existing = kv_.get(kModels, request.name);
  if (!existing.ok()) return existing.status();
  if (existing->has_value()) {
    return error(Code::already_exists,
                 "name: registered model " + shown(request.name) + " already exists");
  }
  ModelRecord record;
  record.model.name = request.name;
  record.model.creation_timestamp = now_ms;
  record.model.last_updated_timestamp = now_ms;
  record.model.description = request.description;
  record.model.tags = sorted_tags(request.tags);
  CAIRN_RETURN_IF_ERROR(kv_.put(kModels, request.name, wire::encode(record), write_options_));
  return std::move(record.model);
}

Result<msg::RegisteredModel> RegistryStore::get_model(const std::string& name) {
  auto record = load_model(kv_, name);
  if (!record.ok()) return record.status();
  return model_reply(kv_, std::move(*record));
}

Result<msg::RegisteredModel> RegistryStore::update_model(const msg::UpdateModelRequest& request,
                                                         int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(check_tags("set_tags", request.set_tags, kMaxModelTagValueChars));
  CAIRN_RETURN_IF_ERROR(check_tag_keys("delete_tags", request.delete_tags));
  auto record = load_model(kv_, request.name);
  if (!record.ok()) return record.status();
  if (request.description) record->model.description = *request.description;
  for (const auto& tag : request.set_tags) upsert(record->model.tags, tag);
  for (const auto& key : request.delete_tags) erase_key(record->model.tags, key);
  record->model.last_updated_timestamp = now_ms;
  CAIRN_RETURN_IF_ERROR(kv_.put(kModels, request.name, wire::encode(*record), write_options_));
  return model_reply(kv_, std::move(*record));
}

Status RegistryStore::delete_model(const std::string& name, int64_t now_ms) {
  auto record = load_model(kv_, name);
  if (!record.ok()) return record.status();
  if (now_ms < 0) now_ms = system_now_ms();
  WriteBatch batch;
  Status decode_status;
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kVersions, model_scope(name), {}, [&](std::string_view key, std::string_view value) {
        auto version = decode_record<msg::ModelVersion>(kVersions, key, value);
        if (!version.ok()) {
          decode_status = version.status();
          return false;
        }
        const uint64_t number = detail::parse_decimal(version->version).value_or(0);
        for (const auto& artifact : version->artifacts) {
          batch.erase(kBlobRefs, blob_ref_key(artifact.sha256, name, number));
        }
        batch.erase(kVersions, key);
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  uint64_t sequence = next_alias_event_;
  for (const auto& alias : record->model.aliases) {
    msg::AliasEvent event;
    event.name = name;
    event.alias = alias.alias;
    event.from_version = alias.version;
    event.who = std::string(kDeleteModelWho);
    event.time = now_ms;
    batch.put(kAliasLog, model_scope(name) + detail::encode_fixed64(sequence++),
              wire::encode(event));
  }
  if (sequence != next_alias_event_) {
    batch.put(kMeta, kNextAliasEventKey, detail::encode_fixed64(sequence));
  }
  batch.erase(kModels, name);
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  next_alias_event_ = sequence;
  return Status::ok_status();
}

Result<msg::SearchModelsReply> RegistryStore::search_models(
    const msg::SearchModelsRequest& request) {
  const SearchDomain& domain = model_domain();
  auto conditions = detail::bind_filter(domain, request.filter);
  if (!conditions.ok()) return conditions.status();
  auto order = detail::bind_order_by(domain, request.order_by);
  if (!order.ok()) return order.status();
  const uint64_t query = detail::fingerprint_list(
      detail::fingerprint({"models", request.name_prefix, request.filter}), request.order_by);
  auto cursor = read_page_token(request.page_token, query);
  if (!cursor.ok()) return cursor.status();
  const uint32_t limit = page_size(request.max_results, kDefaultModelsPage, kMaxModelsPage);
  msg::SearchModelsReply reply;

  std::string prefix = request.name_prefix;
  bool exact = false;
  if (!narrow_name_prefix(*conditions, kModelNameAttr, prefix, exact)) return reply;
  const bool key_order =
      order->empty() || (order->size() == 1 && is_attribute(order->front(), kModelNameAttr) &&
                         order->front().ascending);
  Status decode_status;
  std::vector<ModelRecord> page;
  std::optional<BestItems<ModelRecord>> best;
  if (!key_order) best.emplace(*order, size_t{limit} + 1, *cursor);
  const std::string start_after = key_order && *cursor ? (*cursor)->key.data : std::string();
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kModels, prefix, start_after, [&](std::string_view key, std::string_view value) {
        if (exact && key != prefix) return false;
        auto record = decode_record<ModelRecord>(kModels, key, value);
        if (!record.ok()) {
          decode_status = record.status();
          return false;
        }
        auto lookup = [&](const Field& field) { return model_field(record->model, field); };
        if (!detail::all_hold(*conditions, lookup)) return true;
        if (key_order) {
          page.push_back(std::move(*record));
          return page.size() <= limit;
        }
        auto values = detail::sort_values(*order, lookup);
        std::string unique(key);
        if (best->wanted(values, unique))
          best->add(std::move(values), std::move(unique), std::move(*record));
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  if (key_order) {
    if (page.size() > limit) {
      page.resize(limit);
      reply.next_page_token = key_page_token(query, page.back().model.name);
    }
  } else {
    reply.next_page_token = take_sorted_page(best->take(), limit, query, page);
  }
  reply.registered_models.reserve(page.size());
  for (auto& record : page) {
    auto model = model_reply(kv_, std::move(record));
    if (!model.ok()) return model.status();
    reply.registered_models.push_back(std::move(*model));
  }
  return reply;
}

// ---- Model versions ----

Result<msg::ModelVersion> RegistryStore::create_version(const msg::CreateVersionRequest& request,
                                                        int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(detail::check_model_name("name", request.name));
  CAIRN_RETURN_IF_ERROR(check_tags("tags", request.tags, kMaxModelTagValueChars));
  if (!request.version_label.empty()) {
    CAIRN_RETURN_IF_ERROR(detail::check_semver("version_label", request.version_label));
  }
  for (size_t i = 0; i < request.artifacts.size(); ++i) {
    const std::string at = "artifacts[" + std::to_string(i) + "]";
    CAIRN_RETURN_IF_ERROR(detail::check_artifact_path(at + ".path", request.artifacts[i].path));
    CAIRN_RETURN_IF_ERROR(detail::check_sha256(at + ".sha256", request.artifacts[i].sha256));
    for (size_t j = 0; j < i; ++j) {
      if (request.artifacts[j].path == request.artifacts[i].path) {
        return bad_request(at + ".path: " + shown(request.artifacts[i].path) +
                           " is listed twice (also artifacts[" + std::to_string(j) + "])");
      }
    }
  }
  std::optional<uint64_t> parent;
  if (!request.parent_version.empty()) {
    auto number = parse_version("parent_version", request.parent_version);
    if (!number.ok()) return number.status();
    parent = *number;
  }

  auto stored = read_record<ModelRecord>(kv_, kModels, request.name);
  if (!stored.ok()) return stored.status();
  ModelRecord record;
  if (stored->has_value()) {
    record = std::move(**stored);
  } else if (request.create_model) {
    record.model.name = request.name;
    record.model.creation_timestamp = now_ms;
  } else {
    return not_found("name: registered model " + shown(request.name) +
                     " not found (set create_model to create it)");
  }
  if (parent) {
    auto parent_version = load_version(kv_, request.name, *parent, "parent_version");
    if (!parent_version.ok()) return parent_version.status();
  }
  std::map<std::string, double> metrics;
  if (!request.run_id.empty()) {
    auto run = load_run(kv_, request.run_id, "run_id");
    if (!run.ok()) return run.status();
    for (const auto& metric : run->run.data.metrics) metrics[metric.key] = metric.value;
  }

  const uint64_t number = record.last_version + 1;
  msg::ModelVersion version;
  version.name = request.name;
  version.version = std::to_string(number);
  version.version_label = request.version_label;
  version.creation_timestamp = now_ms;
  version.last_updated_timestamp = now_ms;
  version.description = request.description;
  version.source = request.source;
  version.run_id = request.run_id;
  version.status = "READY";
  version.tags = sorted_tags(request.tags);
  version.parent_version = request.parent_version;
  version.base_model = request.base_model;
  version.metrics = std::move(metrics);
  version.artifacts = request.artifacts;
  record.last_version = number;
  record.model.last_updated_timestamp = now_ms;

  WriteBatch batch;
  batch.put(kModels, request.name, wire::encode(record));
  batch.put(kVersions, version_key(request.name, number), wire::encode(version));
  for (const auto& artifact : version.artifacts) {
    batch.put(kBlobRefs, blob_ref_key(artifact.sha256, request.name, number), {});
  }
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  return version;
}

Result<msg::ModelVersion> RegistryStore::get_version(const msg::GetVersionRequest& request) {
  const bool by_version = !request.version.empty();
  const bool by_alias = !request.alias.empty();
  if (by_version == by_alias) return bad_request("version, alias: set exactly one of them");
  auto record = load_model(kv_, request.name);
  if (!record.ok()) return record.status();
  std::string version_text = request.version;
  if (by_alias && detail::is_latest_alias(request.alias)) {
    // "latest" is reserved, never stored: it names the newest version, so NAME@latest follows
    // every new registration (training bases, serving, downloads).
    auto newest = newest_version(kv_, *record);
    if (!newest.ok()) return newest.status();
    if (!newest->has_value()) return not_found("registered model " + shown(request.name) + " has no versions");
    return std::move(**newest);
  }
  if (by_alias) {
    auto alias = std::find_if(record->model.aliases.begin(), record->model.aliases.end(),
                              [&](const msg::ModelAlias& a) { return a.alias == request.alias; });
    if (alias == record->model.aliases.end()) {
      return not_found("alias: registered model " + shown(request.name) + " has no alias " +
                       shown(request.alias));
    }
    version_text = alias->version;
  }
  auto number = parse_version("version", version_text);
  if (!number.ok()) return number.status();
  auto version = load_version(kv_, request.name, *number);
  if (!version.ok()) return version.status();
  attach_aliases(*version, record->model.aliases);
  return version;
}

Result<msg::ModelVersion> RegistryStore::update_version(const msg::UpdateVersionRequest& request,
                                                        int64_t now_ms) {
  if (!request.status.empty() && !detail::is_version_status(request.status)) {
    return bad_request("status: " + shown(request.status) +
                       " is not a version status (PENDING_REGISTRATION, READY, "
                       "FAILED_REGISTRATION)");
  }
  CAIRN_RETURN_IF_ERROR(check_tags("set_tags", request.set_tags, kMaxModelTagValueChars));
  CAIRN_RETURN_IF_ERROR(check_tag_keys("delete_tags", request.delete_tags));
  auto number = parse_version("version", request.version);
  if (!number.ok()) return number.status();
  auto record = load_model(kv_, request.name);
  if (!record.ok()) return record.status();
  auto version = load_version(kv_, request.name, *number);
  if (!version.ok()) return version.status();
  if (request.description) version->description = *request.description;
  if (!request.status.empty()) {
    version->status = request.status;
    version->status_message = request.status_message;
  } else if (!request.status_message.empty()) {
    version->status_message = request.status_message;
  }
  for (const auto& tag : request.set_tags) upsert(version->tags, tag);
  for (const auto& key : request.delete_tags) erase_key(version->tags, key);
  version->last_updated_timestamp = now_ms;
  CAIRN_RETURN_IF_ERROR(kv_.put(kVersions, version_key(request.name, *number),
                                wire::encode(*version), write_options_));
  attach_aliases(*version, record->model.aliases);
  return version;
}

Result<msg::SearchVersionsReply> RegistryStore::search_versions(
    const msg::SearchVersionsRequest& request) {
  const SearchDomain& domain = version_domain();
  auto conditions = detail::bind_filter(domain, request.filter);
  if (!conditions.ok()) return conditions.status();
  auto order = detail::bind_order_by(domain, request.order_by);
  if (!order.ok()) return order.status();
  if (!request.name.empty()) CAIRN_RETURN_IF_ERROR(detail::check_model_name("name", request.name));
  const uint64_t query = detail::fingerprint_list(
      detail::fingerprint({"versions", request.name, request.filter}), request.order_by);
  auto cursor = read_page_token(request.page_token, query);
  if (!cursor.ok()) return cursor.status();
  const uint32_t limit = page_size(request.max_results, kDefaultVersionsPage, kMaxVersionsPage);
  msg::SearchVersionsReply reply;

  // Scan one model's versions when the request or the filter names it exactly, else the
  // versions of every model whose name starts with the filter's LIKE prefix.
  std::string name_prefix = request.name;
  bool exact = !request.name.empty();
  if (!narrow_name_prefix(*conditions, kVersionNameAttr, name_prefix, exact)) return reply;
  const std::string prefix = exact ? model_scope(name_prefix) : name_prefix;
  const bool key_order = order->empty();
  Status decode_status;
  std::vector<msg::ModelVersion> page;
  std::optional<BestItems<msg::ModelVersion>> best;
  if (!key_order) best.emplace(*order, size_t{limit} + 1, *cursor);
  const std::string start_after = key_order && *cursor ? (*cursor)->key.data : std::string();
  std::string last_key;
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kVersions, prefix, start_after, [&](std::string_view key, std::string_view value) {
        auto version = decode_record<msg::ModelVersion>(kVersions, key, value);
        if (!version.ok()) {
          decode_status = version.status();
          return false;
        }
        auto lookup = [&](const Field& field) { return version_field(*version, field); };
        if (!detail::all_hold(*conditions, lookup)) return true;
        if (key_order) {
          if (page.size() == limit) {
            reply.next_page_token = key_page_token(query, last_key);
            return false;
          }
          page.push_back(std::move(*version));
          last_key.assign(key);
          return true;
        }
        auto values = detail::sort_values(*order, lookup);
        std::string unique(key);
        if (best->wanted(values, unique))
          best->add(std::move(values), std::move(unique), std::move(*version));
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  if (!key_order) reply.next_page_token = take_sorted_page(best->take(), limit, query, page);

  // Aliases live in the model records: read each model once.
  std::map<std::string, std::vector<msg::ModelAlias>> aliases;
  for (auto& version : page) {
    auto it = aliases.find(version.name);
    if (it == aliases.end()) {
      auto record = read_record<ModelRecord>(kv_, kModels, version.name);
      if (!record.ok()) return record.status();
      it = aliases
               .emplace(version.name, record->has_value() ? (*record)->model.aliases
                                                          : std::vector<msg::ModelAlias>())
               .first;
    }
    attach_aliases(version, it->second);
  }
  reply.model_versions = std::move(page);
  return reply;
}

Result<msg::LatestVersionsReply> RegistryStore::get_latest_versions(const std::string& name) {
  auto record = load_model(kv_, name);
  if (!record.ok()) return record.status();
  auto newest = newest_version(kv_, *record);
  if (!newest.ok()) return newest.status();
  msg::LatestVersionsReply reply;
  if (newest->has_value()) reply.model_versions.push_back(std::move(**newest));
  return reply;
}

// ---- Aliases ----

Result<msg::ModelVersion> RegistryStore::set_alias(const msg::SetAliasRequest& request,
                                                   const std::string& who, int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(detail::check_alias("alias", request.alias));
  auto number = parse_version("version", request.version);
  if (!number.ok()) return number.status();
  auto record = load_model(kv_, request.name);
  if (!record.ok()) return record.status();
  auto version = load_version(kv_, request.name, *number, "version");
  if (!version.ok()) return version.status();
  auto& aliases = record->model.aliases;
  auto it = std::lower_bound(
      aliases.begin(), aliases.end(), request.alias,
      [](const msg::ModelAlias& a, const std::string& name) { return a.alias < name; });
  const bool exists = it != aliases.end() && it->alias == request.alias;
  if (exists && it->version == version->version) {
    attach_aliases(*version, aliases);
    return version;
  }
  msg::AliasEvent event;
  event.name = request.name;
  event.alias = request.alias;
  event.from_version = exists ? it->version : std::string();
  event.to_version = version->version;
  event.who = who;
  event.time = now_ms;
  if (exists) {
    it->version = version->version;
  } else {
    aliases.insert(it, msg::ModelAlias{request.alias, version->version});
  }
  const uint64_t sequence = next_alias_event_;
  WriteBatch batch;
  batch.put(kModels, request.name, wire::encode(*record));
  batch.put(kAliasLog, model_scope(request.name) + detail::encode_fixed64(sequence),
            wire::encode(event));
  batch.put(kMeta, kNextAliasEventKey, detail::encode_fixed64(sequence + 1));
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  next_alias_event_ = sequence + 1;
  attach_aliases(*version, aliases);
  return version;
}

Status RegistryStore::delete_alias(const msg::AliasRequest& request, const std::string& who,
                                   int64_t now_ms) {
  CAIRN_RETURN_IF_ERROR(detail::check_alias("alias", request.alias));
  auto record = load_model(kv_, request.name);
  if (!record.ok()) return record.status();
  auto& aliases = record->model.aliases;
  auto it = std::find_if(aliases.begin(), aliases.end(),
                         [&](const msg::ModelAlias& a) { return a.alias == request.alias; });
  if (it == aliases.end()) return Status::ok_status();
  msg::AliasEvent event;
  event.name = request.name;
  event.alias = request.alias;
  event.from_version = it->version;
  event.who = who;
  event.time = now_ms;
  aliases.erase(it);
  const uint64_t sequence = next_alias_event_;
  WriteBatch batch;
  batch.put(kModels, request.name, wire::encode(*record));
  batch.put(kAliasLog, model_scope(request.name) + detail::encode_fixed64(sequence),
            wire::encode(event));
  batch.put(kMeta, kNextAliasEventKey, detail::encode_fixed64(sequence + 1));
  CAIRN_RETURN_IF_ERROR(kv_.write(batch, write_options_));
  next_alias_event_ = sequence + 1;
  return Status::ok_status();
}

Result<msg::AliasHistoryReply> RegistryStore::alias_history(const std::string& name) {
  CAIRN_RETURN_IF_ERROR(detail::check_model_name("name", name));
  msg::AliasHistoryReply reply;
  Status decode_status;
  CAIRN_RETURN_IF_ERROR(
      kv_.scan(kAliasLog, model_scope(name), {}, [&](std::string_view key, std::string_view value) {
        auto event = decode_record<msg::AliasEvent>(kAliasLog, key, value);
        if (!event.ok()) {
          decode_status = event.status();
          return false;
        }
        reply.events.push_back(std::move(*event));
        return true;
      }));
  CAIRN_RETURN_IF_ERROR(decode_status);
  return reply;
}

// ---- Blobs ----

Status RegistryStore::for_each_referenced_blob(
    const std::function<void(const std::string& sha256)>& visit) {
  constexpr size_t kShaChars = 64;
  std::string last;
  return kv_.scan(kBlobRefs, {}, {}, [&](std::string_view key, std::string_view) {
    const std::string_view sha = key.substr(0, kShaChars);
    if (sha != last) {
      last.assign(sha);
      visit(last);
    }
    return true;
  });
}

}  // namespace cairn::storage
