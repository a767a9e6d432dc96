#include "actors/inference_batcher.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/local_call.h"
#include "actors/messages.h"
#include "runtime/messages/registry.h"
#include "storage/blob_store.h"
#include "storage/kv_store.h"
#include "storage/node_identity.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Latency buckets in seconds, as vLLM's histograms use.
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                          0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                                         0.5,  0.75,  1.0,  2.5,   5.0, 7.5,  10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBuckets = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,  15.0,
                                         20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0};
// How long an idle engine loop sleeps before it looks at its flags again.
constexpr std::chrono::milliseconds kIdleWait{100};
// OpenAI's default max_tokens for completions.
constexpr int64_t kDefaultCompletionTokens = 16;
constexpr int64_t kMaxLogprobs = 20;
// Marks a materialized version folder as complete.
constexpr const char* kCompleteMarker = ".complete";

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'; }

// ---- sources ----

struct SourceSpec {
  enum class Kind { folder, version, alias };
  Kind kind = Kind::folder;
  std::string path;   // folder
  std::string model;  // registry model
  std::string version;
  std::string alias;
  std::string to_string() const {
    switch (kind) {
      case Kind::folder: return path;
      case Kind::version: return model + "/" + version;
      case Kind::alias: return model + "@" + alias;
    }
    return path;
  }
};

// A folder that exists wins; then "model@alias", then "model/123".
Result<SourceSpec> parse_source(const std::string& source) {
  SourceSpec spec;
  std::error_code ec;
  if (!source.empty() && fs::is_directory(source, ec)) {
    spec.path = source;
    return spec;
  }
  auto at = source.rfind('@');
  if (at != std::string::npos && at > 0 && at + 1 < source.size()) {
    spec.kind = SourceSpec::Kind::alias;
    spec.model = source.substr(0, at);
    spec.alias = source.substr(at + 1);
    return spec;
  }
  auto slash = source.rfind('/');
  if (slash != std::string::npos && slash > 0 && slash + 1 < source.size() &&
      std::all_of(source.begin() + static_cast<long>(slash) + 1, source.end(), ::isdigit)) {
    spec.kind = SourceSpec::Kind::version;
    spec.model = source.substr(0, slash);
    spec.version = source.substr(slash + 1);
    return spec;
  }
  return Status(Code::invalid_argument, "model source \"" + source +
                                            "\": expected a Hugging Face model folder that exists, MODEL@ALIAS or "
                                            "MODEL/VERSION from the registry");
}

// ---- metrics ----

class Histogram {
 public:
  explicit Histogram(const std::vector<double>& bounds) : bounds_(bounds), counts_(bounds.size(), 0) {}
  void observe(double value) {
    sum_ += value;
    ++count_;
    auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
    if (it != bounds_.end()) ++counts_[static_cast<size_t>(it - bounds_.begin())];
  }
  msg::InferHistogram snapshot() const {
    msg::InferHistogram out;
    out.bounds = bounds_;
    uint64_t running = 0;
    for (uint64_t c : counts_) out.counts.push_back(running += c);
    out.sum = sum_;
    out.count = count_;
    return out;
  }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

// A served model's counters and histograms, across its versions. Written on engine threads.
struct ModelMetrics {
  std::mutex mutex;  // guards everything below
  uint64_t prompt_tokens = 0;
  uint64_t generation_tokens = 0;
  uint64_t finished = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  uint64_t rejected = 0;
  uint64_t swaps = 0;
  Histogram ttft{kTtftBuckets};
  Histogram itl{kItlBuckets};
  Histogram e2e{kE2eBuckets};
};

// ---- one loaded engine, and the served versions on it ----

// An engine and the thread that runs its step() loop. Shared by the slots that serve on it (one
// base, several adapter versions attached to it); the last slot to go frees it.
class SharedEngine {
 public:
  SharedEngine(std::unique_ptr<InferenceEngine> engine, uint64_t engine_id)
      : id(engine_id), engine_(std::move(engine)), stop_(std::make_shared<std::atomic<bool>>(false)) {
    // The loop shares the engine and the stop flag: when the last reference to this object goes on
    // the loop's own thread (a request's final event holding its slot), the destructor cannot join
    // it, so it detaches and the loop frees the engine as it ends.
    thread_ = std::thread([engine = engine_, stop = stop_] {
      // Requests in flight at the stop (aborted by the destructor) deliver their final events first.
      for (;;) {
        if (engine->step()) continue;
        if (stop->load()) break;
        engine->wait_for_work(kIdleWait);
      }
    });
  }
  ~SharedEngine() {
    engine_->abort_all(Status(Code::shutting_down, "the model is no longer served"));
    stop_->store(true);
    engine_->notify();
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }
  SharedEngine(const SharedEngine&) = delete;
  SharedEngine& operator=(const SharedEngine&) = delete;
  InferenceEngine& engine() { return *engine_; }
  const uint64_t id;  // infer.models' engine_id: served names with the same id share this engine

 private:
  std::shared_ptr<InferenceEngine> engine_;
  std::shared_ptr<std::atomic<bool>> stop_;
  std::thread thread_;
};

// The engines loaded, by their model folder (canonical path), so that an adapter version whose base
// is already loaded attaches to it. Used by the loader threads. Two first loads of one base that
// run at the same time each load it (the later one is the one found afterwards).
class EnginePool {
 public:
  std::shared_ptr<SharedEngine> find(const std::string& dir) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = engines_.find(key(dir));
    if (it == engines_.end()) return nullptr;
    auto engine = it->second.lock();
    if (!engine) engines_.erase(it);
    return engine;
  }
  std::shared_ptr<SharedEngine> add(const std::string& dir, std::unique_ptr<InferenceEngine> engine) {
    auto shared = std::make_shared<SharedEngine>(std::move(engine), next_id());
    std::lock_guard<std::mutex> lock(mutex_);
    engines_[key(dir)] = shared;
    return shared;
  }
  uint64_t next_id() { return next_id_.fetch_add(1); }

 private:
  static std::string key(const std::string& dir) {
    std::error_code ec;
    auto canonical = fs::weakly_canonical(dir, ec);
    return ec ? dir : canonical.string();
  }
  std::mutex mutex_;  // guards engines_
  std::map<std::string, std::weak_ptr<SharedEngine>> engines_;
  std::atomic<uint64_t> next_id_{1};
};

// One loaded version of a served model: its engine (maybe shared with other served names) and,
// for an adapter version, the adapter it attached to it. Owned by the actor; requests hold it weakly.
class EngineSlot {
 public:
  EngineSlot(std::shared_ptr<SharedEngine> shared, std::string version_name)
      : version(std::move(version_name)), created(unix_seconds()), shared_(std::move(shared)) {}
  // Detaches its adapter (its requests still in flight end with not_found at the next step); the
  // engine is freed with its last slot.
  ~EngineSlot() {
    if (attached_adapter.empty()) return;
    Status removed = shared_->engine().unload_adapter(attached_adapter);
    if (!removed.ok()) spdlog::warn("serve: cannot detach adapter {}: {}", attached_adapter, removed.to_string());
  }
  EngineSlot(const EngineSlot&) = delete;
  EngineSlot& operator=(const EngineSlot&) = delete;

  // `on_exit` runs (on an engine thread) once a retired slot has finished its requests.
  void start(std::function<void()> on_exit) { on_exit_ = std::move(on_exit); }
  // No new requests come; on_exit runs once those in flight have finished.
  void retire() {
    retired_.store(true);
    if (became_idle() && on_exit_) on_exit_();
  }
  bool exited() const { return exited_.load(); }
  InferenceEngine& engine() { return shared_->engine(); }
  uint64_t engine_id() const { return shared_->id; }
  // Whether other served names (or versions) serve on this slot's engine too.
  bool shares_engine() const { return shared_.use_count() > 1; }

  // Submits one of this slot's requests (inflight was counted by the caller).
  Result<uint64_t> submit(EngineRequest request) {
    std::lock_guard<std::mutex> lock(ids_mutex_);
    auto id = shared_->engine().submit(std::move(request));
    if (id.ok()) ids_.insert(*id);
    return id;
  }
  // A request's final event was delivered. Returns on_exit when that left a retired slot idle: the
  // caller runs it after dropping its reference to the slot (the actor may free the slot then).
  std::function<void()> finished(uint64_t request_id) {
    {
      std::lock_guard<std::mutex> lock(ids_mutex_);
      ids_.erase(request_id);
    }
    --inflight;
    return became_idle() ? on_exit_ : nullptr;
  }
  // Ends this slot's requests in flight: the whole engine's with `why` when no other slot uses it,
  // else each of its own (finish_reason "cancelled").
  void abort(const Status& why) {
    if (!shares_engine()) return shared_->engine().abort_all(why);
    std::lock_guard<std::mutex> lock(ids_mutex_);
    for (uint64_t id : ids_) shared_->engine().cancel(id);
  }

  const std::string version;
  const int64_t created;
  std::atomic<int64_t> inflight{0};  // submitted, final event not yet delivered
  // Set by the loader before the slot is handed to the actor, constant after.
  std::string default_adapter;   // the adapter requests naming the model use ("" the base)
  std::string attached_adapter;  // the adapter this slot loaded on the engine, unloaded with it
  std::string base_model;        // for an adapter version, its base ("name/version")

 private:
  bool became_idle() { return retired_.load() && inflight.load() == 0 && !exited_.exchange(true); }

  std::shared_ptr<SharedEngine> shared_;
  std::function<void()> on_exit_;
  std::mutex ids_mutex_;  // guards ids_
  std::set<uint64_t> ids_;
  std::atomic<bool> retired_{false};
  std::atomic<bool> exited_{false};
};

// ---- actor messages from the loader and engine threads ----

struct SlotEvent {
  enum class Kind { ready, failed, retrying, exited };
  Kind kind = Kind::ready;
  std::string model;
  uint64_t loader = 0;  // which loader sent it (a model reloaded under the same name has a new one)
  std::shared_ptr<EngineSlot> slot;
  Status status;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, SlotEvent& x) {
  return f(caf::meta::type_name("cairn.infer_slot"), x.model);
}

using reap_atom = caf::atom_constant<caf::atom("reap")>;
// Asks for infer.models once every startup model has settled (await_startup_models).
using await_models_atom = caf::atom_constant<caf::atom("awaitmdls")>;

// ---- loader: resolves, materializes and loads versions; follows aliases ----

// Whether a resolve failure may heal by itself (the alias or version appears, the registry comes
// back), so a startup model retries it.
bool resolve_may_heal(const Status& status) {
  return status.code() == Code::not_found || status.code() == Code::unavailable || status.code() == Code::timeout ||
         status.code() == Code::shutting_down || status.code() == Code::overloaded;
}

class Loader {
 public:
  // `retry`: a startup model, whose registry source is retried until it resolves (see the header).
  Loader(uint64_t id, std::string name, SourceSpec spec, std::vector<msg::InferAdapter> adapters, bool retry,
         const InferenceContext& context, std::shared_ptr<EnginePool> pool, caf::actor batcher)
      : id_(id),
        name_(std::move(name)),
        spec_(std::move(spec)),
        adapters_(std::move(adapters)),
        retry_(retry),
        context_(context),
        pool_(std::move(pool)),
        batcher_(std::move(batcher)) {
    thread_ = std::thread([this] { run(); });
  }
  ~Loader() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

 private:
  void run() {
    if (spec_.kind == SourceSpec::Kind::folder) {
      auto slot = load_dir(spec_.path, "");
      if (slot.ok()) {
        send(SlotEvent::Kind::ready, std::move(*slot), {});
      } else {
        send(SlotEvent::Kind::failed, nullptr, slot.status());
      }
      return;
    }
    // One loop serves the first load, its retries and, for an alias, following the alias.
    std::string loaded_version;  // "" until a version serves
    std::string failed_version;  // a version that failed to load: not tried again until the alias moves
    auto backoff = context_.options.load_retry_initial;
    int attempts = 0;
    bool warned = false;
    for (;;) {
      std::chrono::milliseconds wait = context_.options.alias_poll;
      auto version = resolve();
      if (!version.ok()) {
        if (loaded_version.empty()) {
          ++attempts;
          Status why = version.status();
          if (!retry_ || !resolve_may_heal(why)) {
            send(SlotEvent::Kind::failed, nullptr, why.with_context("serve " + name_));
            return;
          } else {
            // A missing alias is looked up at the watcher's pace (a cheap local read), so it is
            // picked up as soon as it is set; other failures back off.
            if (spec_.kind == SourceSpec::Kind::alias && why.code() == Code::not_found) {
              wait = context_.options.alias_poll;
            } else {
              wait = backoff;
              backoff = std::min(backoff * 2, std::max(context_.options.load_retry_max, context_.options.load_retry_initial));
            }
            send(SlotEvent::Kind::retrying, nullptr,
                 Status(why.code(), spec_.to_string() + ": " + why.message() + " (attempt " + std::to_string(attempts) +
                                        ", next in " + std::to_string(wait.count()) + " ms)"));
          }
        } else if (!warned) {
          spdlog::warn("serve {}: cannot follow {}: {}", name_, spec_.to_string(), version.status().to_string());
          warned = true;
        }
      } else if (version->version != loaded_version && version->version != failed_version) {
        warned = false;
        if (!loaded_version.empty()) {
          spdlog::info("serve {}: alias {} moved from version {} to {}; loading it", name_, spec_.to_string(),
                       loaded_version, version->version);
        }
        if (stopping()) return;
        auto slot = load_version(*version);
        if (slot.ok()) {
          loaded_version = version->version;
          failed_version.clear();
          backoff = context_.options.load_retry_initial;
          send(SlotEvent::Kind::ready, std::move(*slot), {});
        } else if (!loaded_version.empty()) {
          spdlog::error("serve {}: version {} failed to load, still serving {}: {}", name_, version->version,
                        loaded_version, slot.status().to_string());
          failed_version = version->version;  // do not retry the same broken version every poll
        } else {
          failed_version = version->version;
          Status why = slot.status();
          if (retry_ && spec_.kind == SourceSpec::Kind::alias) {
            why = Status(why.code(), why.message() + " (following " + spec_.to_string() + " for another version)");
          }
          send(SlotEvent::Kind::failed, nullptr, why);
          if (!retry_ || spec_.kind != SourceSpec::Kind::alias) return;
        }
      } else {
        warned = false;
      }
      if (spec_.kind == SourceSpec::Kind::version && !loaded_version.empty()) return;
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait_for(lock, wait, [this] { return stop_; });
      if (stop_) return;
    }
  }

  bool stopping() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stop_;
  }

  void send(SlotEvent::Kind kind, std::shared_ptr<EngineSlot> slot, Status status) {
    SlotEvent event;
    event.kind = kind;
    event.model = name_;
    event.loader = id_;
    event.slot = std::move(slot);
    event.status = std::move(status);
    caf::anon_send(batcher_, std::move(event));
  }

  // A registry version by number or alias.
  Result<msg::ModelVersion> get_version(const std::string& model, const std::string& version, const std::string& alias) {
    if (context_.directory == nullptr) {
      return Status(Code::unavailable, "serve " + name_ + ": this node has no registry to load versions from");
    }
    msg::GetVersionRequest request;
    request.name = model;
    request.version = version;
    request.alias = alias;
    auto reply = call_local_blocking<msg::VersionReply>(*context_.directory, "registry", std::string(msg::kGetVersion),
                                                        request, context_.options.registry_timeout);
    if (!reply.ok()) return reply.status();
    return std::move(reply->model_version);
  }

  Result<msg::ModelVersion> resolve() {
    return spec_.kind == SourceSpec::Kind::alias ? get_version(spec_.model, "", spec_.alias)
                                                 : get_version(spec_.model, spec_.version, "");
  }

  // The version's files under the cache dir, copied from the blob store once.
  Result<std::string> materialize(const msg::ModelVersion& version) {
    if (context_.blobs == nullptr || context_.options.cache_dir.empty()) {
      return Status(Code::unavailable, "serve " + name_ + ": this node has no blob store to load versions from");
    }
    const fs::path dest = fs::path(context_.options.cache_dir) / version.name / version.version;
    std::error_code ec;
    if (fs::exists(dest / kCompleteMarker, ec)) return dest.string();
    const fs::path staging = dest.string() + ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(id_);
    fs::remove_all(staging, ec);
    fs::create_directories(staging, ec);
    if (ec) return Status(Code::io_error, staging.string() + ": cannot create: " + ec.message());
    for (const auto& artifact : version.artifacts) {
      const fs::path file = staging / artifact.path;
      if (artifact.path.empty() || artifact.path.find("..") != std::string::npos || artifact.path.front() == '/') {
        return Status(Code::data_loss, version.name + "/" + version.version + ": artifact path \"" + artifact.path +
                                           "\" leaves the version's folder");
      }
      fs::create_directories(file.parent_path(), ec);
      auto exported = context_.blobs->export_to(artifact.sha256, file.string());
      if (!exported.ok()) return exported.with_context(version.name + "/" + version.version + " " + artifact.path);
    }
    std::ofstream(staging / kCompleteMarker) << version.name << "/" << version.version << "\n";
    fs::rename(staging, dest, ec);
    if (ec) {
      fs::remove_all(staging, ec);
      if (!fs::exists(dest / kCompleteMarker)) {
        return Status(Code::io_error, dest.string() + ": cannot move the version's files into place");
      }
    }
    return dest.string();
  }

  static bool has_artifact(const msg::ModelVersion& version, const std::string& path) {
    return std::any_of(version.artifacts.begin(), version.artifacts.end(),
                       [&](const msg::ArtifactRef& a) { return a.path == path; });
  }

  // The base an adapter version names: its lineage (base_model), else adapter_config.json's
  // base_model_name_or_path. Returns the base's folder and how to show it ("name/version").
  Result<std::pair<std::string, std::string>> adapter_base(const msg::ModelVersion& version,
                                                           const std::string& adapter_dir) {
    const std::string what = version.name + "/" + version.version;
    std::string reference = version.base_model;
    if (reference.empty()) {
      const std::string path = adapter_dir + "/adapter_config.json";
      std::ifstream in(path);
      auto config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!config.is_object()) return Status(Code::data_loss, what + " " + path + ": not a JSON object");
      auto it = config.find("base_model_name_or_path");
      if (it != config.end() && it->is_string()) reference = it->get<std::string>();
    }
    if (reference.empty()) {
      return Status(Code::invalid_argument, what + " is a LoRA adapter that names no base model (neither a "
                                                   "base_model lineage nor adapter_config.json's "
                                                   "base_model_name_or_path); register it with --base-model NAME/VERSION");
    }
    auto base_spec = parse_source(reference);
    if (!base_spec.ok()) return base_spec.status().with_context(what + " base model");
    if (base_spec->kind == SourceSpec::Kind::folder) return std::make_pair(base_spec->path, reference);
    auto base = base_spec->kind == SourceSpec::Kind::alias ? get_version(base_spec->model, "", base_spec->alias)
                                                           : get_version(base_spec->model, base_spec->version, "");
    if (!base.ok()) return base.status().with_context(what + " base model " + reference);
    if (!has_artifact(*base, "config.json")) {
      return Status(Code::invalid_argument, what + ": its base model " + reference + " has no config.json");
    }
    auto dir = materialize(*base);
    if (!dir.ok()) return dir.status();
    return std::make_pair(*dir, base->name + "/" + base->version);
  }

  Result<std::shared_ptr<EngineSlot>> load_version(const msg::ModelVersion& version) {
    const bool is_model = has_artifact(version, "config.json");
    const bool is_adapter = !is_model && has_artifact(version, "adapter_config.json");
    if (!is_model && !is_adapter) {
      return Status(Code::invalid_argument, "serve " + name_ + ": " + version.name + "/" + version.version +
                                                " has neither config.json (a model) nor adapter_config.json (a LoRA adapter)");
    }
    auto dir = materialize(version);
    if (!dir.ok()) return dir.status().with_context("serve " + name_);
    if (is_model) return load_dir(*dir, version.version);
    auto base = adapter_base(version, *dir);
    if (!base.ok()) return base.status().with_context("serve " + name_);
    auto slot = load_dir(base->first, version.version, *dir);
    if (slot.ok()) (*slot)->base_model = base->second;
    return slot;
  }

  // A slot on the engine of `dir` with the model's adapters; with `own_adapter`, also that adapter
  // folder, which requests to the served name then use. A model loaded with no adapters of its own
  // (infer.load's `adapters`, which could clash by name) serves on the engine already loaded on
  // `dir`, if any (another served name's, or this name's previous version), attaching its own
  // adapter to it, instead of loading the base again.
  Result<std::shared_ptr<EngineSlot>> load_dir(const std::string& dir, const std::string& version,
                                               const std::string& own_adapter = {}) {
    const auto started = Clock::now();
    std::shared_ptr<SharedEngine> shared;
    if (adapters_.empty()) shared = pool_->find(dir);
    const bool attached = shared != nullptr;
    if (!attached) {
      auto engine = InferenceEngine::load(dir, context_.options.model, context_.options.engine);
      if (!engine.ok()) return engine.status().with_context("serve " + name_);
      for (const auto& adapter : adapters_) {
        CAIRN_RETURN_IF_ERROR((*engine)->load_adapter(adapter.name, adapter.source).with_context("serve " + name_));
      }
      shared = pool_->add(dir, std::move(engine).value());
    }
    auto slot = std::make_shared<EngineSlot>(std::move(shared), version);
    if (!own_adapter.empty()) {
      // Unique on the engine: versions of one name may overlap during a swap.
      const std::string adapter = name_ + "@" + version + "#" + std::to_string(pool_->next_id());
      CAIRN_RETURN_IF_ERROR(slot->engine().load_adapter(adapter, own_adapter).with_context("serve " + name_));
      slot->attached_adapter = adapter;
      slot->default_adapter = adapter;
    }
    spdlog::info("serve {}: {} {}{}{} in {:.2f} s", name_, attached ? "attached to the loaded" : "loaded", dir,
                 own_adapter.empty() ? "" : " with adapter " + own_adapter,
                 version.empty() ? "" : " (version " + version + ")", seconds_between(started, Clock::now()));
    return slot;
  }

  const uint64_t id_;
  const std::string name_;
  const SourceSpec spec_;
  const std::vector<msg::InferAdapter> adapters_;
  const bool retry_;
  const InferenceContext context_;
  const std::shared_ptr<EnginePool> pool_;
  const caf::actor batcher_;
  std::mutex mutex_;  // guards stop_
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// ---- one request in flight ----

// Lives from submit to the final event; touched only on the engine's thread after submit.
struct RequestState {
  CallPtr call;
  std::shared_ptr<ModelMetrics> metrics;
  std::weak_ptr<EngineSlot> slot;
  bool stream = false;
  msg::CompletionReply reply;  // filled as tokens arrive (text only when not streaming)
  Clock::time_point submitted;
  Clock::time_point last_token;
  bool first_token_seen = false;

  void on_event(const TokenEvent& event) {
    const auto now = Clock::now();
    if (!event.final) {
      {
        std::lock_guard<std::mutex> lock(metrics->mutex);
        if (first_token_seen) {
          metrics->itl.observe(seconds_between(last_token, now));
        } else {
          metrics->ttft.observe(seconds_between(submitted, now));
        }
      }
      first_token_seen = true;
      last_token = now;
      msg::CompletionDelta delta;
      delta.text = event.text;
      delta.token_ids.push_back(event.token_id);
      if (!event.top_logprobs.empty() || !std::isnan(event.logprob)) {
        msg::InferTokenLogprob lp;
        lp.token_id = event.token_id;
        lp.token = event.text;
        lp.logprob = event.logprob;
        for (const auto& top : event.top_logprobs) lp.top_logprobs.push_back({top.token_id, top.text, top.logprob});
        if (!lp.top_logprobs.empty() && lp.top_logprobs.front().token_id == event.token_id) {
          lp.token = lp.top_logprobs.front().token;
        }
        delta.logprobs.push_back(std::move(lp));
      }
      if (stream) {
        call->more(delta);
      } else {
        reply.text += delta.text;
        reply.token_ids.push_back(event.token_id);
        for (auto& lp : delta.logprobs) reply.logprobs.push_back(std::move(lp));
      }
      return;
    }
    std::function<void()> exit_notice;
    if (auto s = slot.lock()) exit_notice = s->finished(event.request_id);
    if (exit_notice) exit_notice();  // after dropping the reference: the actor may free the slot
    reply.usage.prompt_tokens = event.prompt_tokens;
    reply.usage.completion_tokens = event.completion_tokens;
    reply.usage.total_tokens = event.prompt_tokens + event.completion_tokens;
    reply.usage.cached_prompt_tokens = event.cached_prompt_tokens;
    const bool ok = event.finish_reason == msg::kFinishStop || event.finish_reason == msg::kFinishLength;
    {
      std::lock_guard<std::mutex> lock(metrics->mutex);
      metrics->generation_tokens += static_cast<uint64_t>(event.completion_tokens);
      if (ok) {
        metrics->prompt_tokens += static_cast<uint64_t>(event.prompt_tokens);
        ++metrics->finished;
        metrics->e2e.observe(seconds_between(submitted, now));
      } else if (event.finish_reason == "cancelled") {
        ++metrics->cancelled;
      } else {
        ++metrics->failed;
      }
    }
    if (ok) {
      if (stream && !event.text.empty()) {
        msg::CompletionDelta delta;
        delta.text = event.text;
        call->more(delta);
      } else {
        reply.text += event.text;
      }
      reply.finish_reason = event.finish_reason;
      call->reply(reply);
    } else if (event.finish_reason == "cancelled") {
      call->fail(Status(Code::cancelled, call->op() + ": cancelled"));
    } else {
      Status status = event.status.ok() ? Status(Code::internal, "the request ended with an error") : event.status;
      call->fail(status.with_context(call->op()));
    }
  }
};

// ---- the actor ----

struct ServedModel {
  std::string name;
  std::string source;
  std::vector<msg::InferAdapter> adapters;
  uint64_t loader_id = 0;
  // Counted by readiness and retried (serve.models, or restored from the store at start).
  bool startup = false;
  bool persist = false;  // infer.load's persist
  std::string state = "loading";  // loading | ready | retrying | failed (msg::InferModel)
  std::string error;
  std::shared_ptr<EngineSlot> current;
  std::vector<std::shared_ptr<EngineSlot>> retiring;  // finishing their requests after a swap
  // Generation requests waiting for the first load.
  std::deque<std::pair<CallPtr, msg::CompletionRequest>> pending;
  std::vector<CallPtr> load_waiters;                  // infer.load calls waiting for the first load
  std::shared_ptr<ModelMetrics> metrics = std::make_shared<ModelMetrics>();
  std::unique_ptr<Loader> loader;  // declared last: destroyed (joined) first
};

struct BatcherState {
  InferenceContext context;
  std::shared_ptr<EnginePool> pool = std::make_shared<EnginePool>();
  std::map<std::string, std::unique_ptr<ServedModel>> models;
  uint64_t next_loader = 1;
  uint64_t next_request = 1;
  std::string id_prefix;
  std::mt19937_64 seeds{std::random_device{}()};
  // await_startup_models asks waiting for the startup models to settle.
  std::vector<caf::response_promise> startup_waiters;
  static inline const char* name = "inference";
};

// ---- the record of the models loaded at run time (see the header's Persistence) ----

constexpr std::string_view kLoadedPrefix = "serve.loaded/";

// The load request as `cairn serve load` sent it, and the node boot that loaded it.
struct LoadedRecord {
  msg::InferLoadRequest load;
  uint64_t boot = 0;
  template <class V>
  void fields(V& v) {
    load.fields(v);
    v("boot", boot);
  }
};

// Failures to record are logged, not returned: the model serves either way, only a restart would
// forget it.
void record_loaded(const InferenceContext& context, const ServedModel& model) {
  if (context.store == nullptr) return;
  LoadedRecord record{{model.name, model.source, model.adapters, model.persist}, context.boot_count};
  Status written = context.store->put(storage::kNodeFamily, std::string(kLoadedPrefix) + model.name, wire::encode(record));
  if (!written.ok()) spdlog::error("serve {}: cannot record the load, a restart will forget it: {}", model.name, written.to_string());
}

void forget_loaded(const InferenceContext& context, const std::string& name) {
  if (context.store == nullptr) return;
  Status erased = context.store->erase(storage::kNodeFamily, std::string(kLoadedPrefix) + name);
  if (!erased.ok()) spdlog::error("serve {}: cannot erase its load record: {}", name, erased.to_string());
}

// The records to reload now: this boot's and the persistent ones. Drops the others.
std::vector<LoadedRecord> records_to_restore(const InferenceContext& context) {
  std::vector<LoadedRecord> out;
  if (context.store == nullptr) return out;
  std::vector<std::string> stale;
  Status scanned = context.store->scan(storage::kNodeFamily, kLoadedPrefix, "", [&](std::string_view key, std::string_view value) {
    auto record = wire::decode_bytes<LoadedRecord>(value);
    if (!record.ok()) {
      spdlog::error("serve: dropping the unreadable load record {}: {}", key, record.status().to_string());
      stale.emplace_back(key);
    } else if (record->load.persist || record->boot == context.boot_count) {
      out.push_back(std::move(record).value());
    } else {
      stale.emplace_back(key);
    }
    return true;
  });
  if (!scanned.ok()) spdlog::error("serve: cannot read the load records: {}", scanned.to_string());
  for (const auto& key : stale) {
    Status erased = context.store->erase(storage::kNodeFamily, key);
    if (!erased.ok()) spdlog::error("serve: cannot erase the load record {}: {}", key, erased.to_string());
  }
  return out;
}

using Self = caf::stateful_actor<BatcherState>*;

Status bad_request(const std::string& op, const std::string& message) {
  return Status(Code::bad_request, op + ": " + message);
}

std::string served_names(const BatcherState& st) {
  std::string names;
  for (const auto& [name, _] : st.models) names += (names.empty() ? "" : ", ") + name;
  return names.empty() ? "none" : names;
}

msg::InferModel describe(const ServedModel& m) {
  msg::InferModel out;
  out.name = m.name;
  out.source = m.source;
  out.state = m.state;
  out.error = m.error;
  out.startup = m.startup;
  out.persist = m.persist;
  for (const auto& a : m.adapters) out.adapters.push_back(a.name);
  if (m.current) {
    out.version = m.current->version;
    out.base_model = m.current->base_model;
    out.engine_id = m.current->engine_id();
    out.created = m.current->created;
    out.max_context = m.current->engine().config().max_position_embeddings;
  }
  return out;
}

Status start_loading(Self self, const std::string& name, const std::string& source,
                     std::vector<msg::InferAdapter> adapters, bool startup, bool persist, CallPtr waiter) {
  auto& st = self->state;
  auto spec = parse_source(source);
  if (!spec.ok()) return spec.status();
  for (const auto& c : name) {
    if (!is_name_char(c)) return Status(Code::invalid_argument, "model name \"" + name + "\": use letters, digits, \".\", \"-\" and \"_\"");
  }
  if (name.empty()) return Status(Code::invalid_argument, "model name is empty");
  auto model = std::make_unique<ServedModel>();
  model->name = name;
  model->source = source;
  model->adapters = adapters;
  model->startup = startup;
  model->persist = persist;
  model->loader_id = st.next_loader++;
  if (waiter) model->load_waiters.push_back(std::move(waiter));
  model->loader = std::make_unique<Loader>(model->loader_id, name, std::move(spec).value(), std::move(adapters), startup,
                                           st.context, st.pool, caf::actor_cast<caf::actor>(self));
  st.models[name] = std::move(model);
  return Status::ok_status();
}

// Tokenizes, validates and submits one generation request to the model's current version.
void submit(Self self, ServedModel& model, const CallPtr& call, const msg::CompletionRequest& req) {
  auto& st = self->state;
  const std::string& op = call->op();
  const bool chat = op == msg::kInferChat;
  const msg::CompletionRequest* request = &req;
  auto slot = model.current;
  InferenceEngine& engine = slot->engine();
  const int64_t context = engine.config().max_position_embeddings;

  EngineRequest er;
  if (chat) {
    std::vector<ChatMessage> messages;
    for (const auto& m : request->messages) messages.push_back({m.role, m.content});
    auto text = engine.render_chat(messages, true);
    if (!text.ok()) return call->fail(Status(Code::bad_request, text.status().message()).with_context(op));
    if (engine.tokenizer() == nullptr) return call->fail(Status(Code::unavailable, op + ": the model has no tokenizer"));
    for (int32_t id : engine.tokenizer()->encode(*text)) er.prompt_ids.push_back(id);
  } else if (!request->prompt_ids.empty()) {
    er.prompt_ids = request->prompt_ids;
  } else {
    if (engine.tokenizer() == nullptr) return call->fail(Status(Code::unavailable, op + ": the model has no tokenizer"));
    for (int32_t id : engine.tokenizer()->encode(request->prompt)) er.prompt_ids.push_back(id);
  }
  const auto prompt_tokens = static_cast<int64_t>(er.prompt_ids.size());
  if (prompt_tokens == 0) return call->fail(bad_request(op, chat ? "messages: the conversation renders to no tokens" : "prompt: empty"));
  if (prompt_tokens >= context) {
    return call->fail(bad_request(op, "prompt: " + std::to_string(prompt_tokens) + " tokens; the model \"" +
                                          model.name + "\" has a context of " + std::to_string(context) +
                                          " tokens, so at most " + std::to_string(context - 1) + " fit with one new token"));
  }
  if (request->max_tokens) {
    if (*request->max_tokens < 1) {
      return call->fail(bad_request(op, "max_tokens: expected at least 1, got " + std::to_string(*request->max_tokens)));
    }
    if (prompt_tokens + *request->max_tokens > context) {
      return call->fail(bad_request(
          op, "max_tokens: " + std::to_string(*request->max_tokens) + " new tokens after a prompt of " +
                  std::to_string(prompt_tokens) + " tokens exceed the model's context of " + std::to_string(context) +
                  " tokens (at most " + std::to_string(context - prompt_tokens) + ")"));
    }
    er.max_tokens = *request->max_tokens;
  } else {
    er.max_tokens = chat ? context - prompt_tokens : std::min(kDefaultCompletionTokens, context - prompt_tokens);
  }
  if (request->n != 1) {
    return call->fail(bad_request(op, "n: only 1 completion per request is supported, got " + std::to_string(request->n)));
  }
  if (request->logprobs < 0 || request->logprobs > kMaxLogprobs) {
    return call->fail(bad_request(op, "logprobs: expected 0 to 20, got " + std::to_string(request->logprobs)));
  }
  er.sampling.temperature = request->temperature;
  er.sampling.top_p = request->top_p;
  er.sampling.top_k = request->top_k < 0 ? 0 : request->top_k;
  er.sampling.min_p = request->min_p;
  er.sampling.presence_penalty = request->presence_penalty;
  er.sampling.frequency_penalty = request->frequency_penalty;
  er.sampling.repetition_penalty = request->repetition_penalty;
  er.sampling.seed = request->seed ? *request->seed : st.seeds();
  auto valid = validate_sampling_options(er.sampling);
  if (!valid.ok()) return call->fail(bad_request(op, valid.message()));
  er.stop = request->stop;
  er.stop_token_ids = request->stop_token_ids;
  er.ignore_eos = request->ignore_eos;
  er.logprobs = request->logprobs;
  er.adapter = request->adapter.empty() ? slot->default_adapter : request->adapter;
  const auto timeout = request->timeout_ms > 0 ? std::chrono::milliseconds(request->timeout_ms)
                                               : st.context.options.request_timeout;
  if (timeout.count() > 0) er.deadline = Clock::now() + timeout;

  // Admission: a version holds max_running requests in its batch and max_queue more waiting.
  const int64_t capacity = st.context.options.engine.max_running + st.context.options.max_queue;
  if (slot->inflight.load() >= capacity) {
    {
      std::lock_guard<std::mutex> lock(model.metrics->mutex);
      ++model.metrics->rejected;
    }
    return call->fail(Status(Code::overloaded, op + ": model \"" + model.name + "\" has " +
                                                   std::to_string(slot->inflight.load()) +
                                                   " requests in flight, its limit (serve.max_running + serve.max_queue); retry later"));
  }

  auto state = std::make_shared<RequestState>();
  state->call = call;
  state->metrics = model.metrics;
  state->slot = slot;
  state->stream = request->stream;
  state->submitted = Clock::now();
  state->reply.id = st.id_prefix + std::to_string(st.next_request++);
  state->reply.model = model.name;
  state->reply.version = slot->version;
  state->reply.created = unix_seconds();
  er.on_event = [state](const TokenEvent& event) { state->on_event(event); };
  ++slot->inflight;
  auto id = slot->submit(std::move(er));
  if (!id.ok()) {
    --slot->inflight;
    Status status = id.status();
    if (status.code() == Code::invalid_argument) status = Status(Code::bad_request, status.message());
    return call->fail(status.with_context(op));
  }
  std::weak_ptr<EngineSlot> weak = slot;
  call->on_cancel([weak, id = *id] {
    if (auto s = weak.lock()) s->engine().cancel(id);
  });
}

void serve_generation(Self self, const CallPtr& call) {
  auto& st = self->state;
  auto request = call->body<msg::CompletionRequest>();
  if (!request.ok()) return call->fail(request.status());
  auto it = st.models.find(request->model);
  if (auto colon = request->model.rfind(':'); it == st.models.end() && colon != std::string::npos) {
    // NAME:ADAPTER selects one of NAME's adapters.
    it = st.models.find(request->model.substr(0, colon));
    if (it != st.models.end()) {
      request->adapter = request->model.substr(colon + 1);
      request->model = it->first;
    }
  }
  if (it == st.models.end()) {
    return call->fail(Status(Code::not_found, call->op() + ": no model named \"" + request->model +
                                                  "\" is served (serving: " + served_names(st) + ")"));
  }
  ServedModel& model = *it->second;
  if (model.state == "failed") {
    return call->fail(Status(Code::unavailable, call->op() + ": model \"" + model.name + "\" failed to load: " + model.error));
  }
  if (model.state == "retrying") {
    return call->fail(Status(Code::unavailable, call->op() + ": model \"" + model.name +
                                                    "\" is not loaded yet; retrying: " + model.error));
  }
  if (model.state == "loading") {
    if (static_cast<int64_t>(model.pending.size()) >= st.context.options.engine.max_running + st.context.options.max_queue) {
      return call->fail(Status(Code::overloaded, call->op() + ": model \"" + model.name + "\" is loading and " +
                                                     std::to_string(model.pending.size()) + " requests already wait for it"));
    }
    model.pending.emplace_back(call, std::move(request).value());
    return;
  }
  submit(self, model, call, *request);
}

// Every startup model has loaded, failed, or failed once and retries.
bool startup_settled(const BatcherState& st) {
  return std::none_of(st.models.begin(), st.models.end(),
                      [](const auto& m) { return m.second->startup && m.second->state == "loading"; });
}

msg::InferModelsReply list_models(const BatcherState& st) {
  msg::InferModelsReply reply;
  for (const auto& [_, model] : st.models) reply.models.push_back(describe(*model));
  return reply;
}

void notify_startup_waiters(Self self) {
  auto& st = self->state;
  if (st.startup_waiters.empty() || !startup_settled(st)) return;
  const std::string encoded = wire::encode(list_models(st));
  for (auto& promise : st.startup_waiters) promise.deliver(encoded);
  st.startup_waiters.clear();
}

void on_slot_event(Self self, SlotEvent& event) {
  auto& st = self->state;
  auto it = st.models.find(event.model);
  if (event.kind == SlotEvent::Kind::exited) {
    if (it == st.models.end()) return;
    auto& retiring = it->second->retiring;
    retiring.erase(std::remove_if(retiring.begin(), retiring.end(), [](const auto& s) { return s->exited(); }),
                   retiring.end());
    return;
  }
  if (it == st.models.end() || it->second->loader_id != event.loader) return;  // unloaded meanwhile
  ServedModel& model = *it->second;
  if (event.kind == SlotEvent::Kind::failed || event.kind == SlotEvent::Kind::retrying) {
    const bool retrying = event.kind == SlotEvent::Kind::retrying;
    if (retrying) {
      if (model.state != "retrying") spdlog::warn("serve {}: not loaded yet, retrying: {}", model.name, event.status.message());
    } else {
      // The loader's errors already name the model ("serve NAME: ...").
      spdlog::error("{}", event.status.to_string());
    }
    for (auto& call : model.load_waiters) call->fail(event.status);
    for (auto& [call, _] : model.pending) {
      call->fail(Status(Code::unavailable, call->op() + ": model \"" + model.name + "\" " +
                                               (retrying ? "is not loaded yet; retrying: " : "failed to load: ") +
                                               event.status.message()));
    }
    model.load_waiters.clear();
    model.pending.clear();
    if (!model.startup) {
      forget_loaded(st.context, model.name);
      st.models.erase(it);  // a failed infer.load leaves nothing behind, so it can be retried
      return;
    }
    model.state = retrying ? "retrying" : "failed";
    model.error = event.status.message();
    notify_startup_waiters(self);
    return;
  }
  auto slot = std::move(event.slot);
  const std::string name = model.name;
  caf::actor me = caf::actor_cast<caf::actor>(self);
  slot->start([me, name] {
    SlotEvent exited;
    exited.kind = SlotEvent::Kind::exited;
    exited.model = name;
    caf::anon_send(me, std::move(exited));
  });
  if (model.current) {
    spdlog::info("serve {}: version {} serves new requests; version {} finishes its {} in flight", name,
                 slot->version, model.current->version, model.current->inflight.load());
    model.current->retire();
    model.retiring.push_back(std::move(model.current));
    std::lock_guard<std::mutex> lock(model.metrics->mutex);
    ++model.metrics->swaps;
  }
  model.current = std::move(slot);
  model.state = "ready";
  model.error.clear();
  for (auto& call : model.load_waiters) call->reply(describe(model));
  model.load_waiters.clear();
  auto pending = std::move(model.pending);
  model.pending.clear();
  for (auto& [call, request] : pending) {
    if (!call->finished()) submit(self, model, call, request);
  }
  notify_startup_waiters(self);
}

msg::InferModelStats model_stats(const ServedModel& model, const InferenceOptions& options) {
  msg::InferModelStats out;
  out.name = model.name;
  out.queue_limit = options.max_queue;
  out.waiting = static_cast<int64_t>(model.pending.size());
  auto add = [&](EngineSlot& slot, bool current) {
    EngineStats s = slot.engine().stats();
    out.running += s.running;
    out.waiting += s.waiting;
    out.preempted_total += s.preempted_total;
    out.prefix_cache_queried_tokens += s.prefix_cache_queried_tokens;
    out.prefix_cache_hit_tokens += s.prefix_cache_hit_tokens;
    if (current) {
      out.version = slot.version;
      out.kv_blocks_total = s.kv_blocks_total;
      out.kv_blocks_used = s.kv_blocks_used;
      out.kv_usage = s.kv_usage;
    }
  };
  if (model.current) add(*model.current, true);
  for (const auto& slot : model.retiring) add(*slot, false);
  std::lock_guard<std::mutex> lock(model.metrics->mutex);
  out.prompt_tokens_total = model.metrics->prompt_tokens;
  out.generation_tokens_total = model.metrics->generation_tokens;
  out.requests_finished_total = model.metrics->finished;
  out.requests_failed_total = model.metrics->failed;
  out.requests_cancelled_total = model.metrics->cancelled;
  out.requests_rejected_total = model.metrics->rejected;
  out.swaps_total = model.metrics->swaps;
  out.time_to_first_token = model.metrics->ttft.snapshot();
  out.inter_token_latency = model.metrics->itl.snapshot();
  out.e2e_latency = model.metrics->e2e.snapshot();
  return out;
}

void serve(Self self, const CallPtr& call) {
  auto& st = self->state;
  const std::string& op = call->op();
  if (op == msg::kInferCompletions || op == msg::kInferChat) {
    serve_generation(self, call);
  } else if (op == msg::kInferModels) {
    call->reply(list_models(st));
  } else if (op == msg::kInferStats) {
    msg::InferStatsReply reply;
    for (const auto& [_, model] : st.models) reply.models.push_back(model_stats(*model, st.context.options));
    call->reply(reply);
  } else if (op == msg::kInferLoad) {
    auto request = call->body<msg::InferLoadRequest>();
    if (!request.ok()) return call->fail(request.status());
    if (st.models.count(request->name) != 0) {
      return call->fail(Status(Code::already_exists, op + ": a model named \"" + request->name +
                                                         "\" is already served (infer.unload it first)"));
    }
    auto started = start_loading(self, request->name, request->source, request->adapters, false, request->persist, call);
    if (!started.ok()) return call->fail(Status(Code::bad_request, started.message()).with_context(op));
    record_loaded(st.context, *st.models.at(request->name));
  } else if (op == msg::kInferUnload) {
    auto request = call->body<msg::InferUnloadRequest>();
    if (!request.ok()) return call->fail(request.status());
    auto it = st.models.find(request->name);
    if (it == st.models.end()) {
      return call->fail(Status(Code::not_found, op + ": no model named \"" + request->name + "\" is served (serving: " +
                                                    served_names(st) + ")"));
    }
    ServedModel& model = *it->second;
    Status why(Code::cancelled, "model \"" + model.name + "\" was unloaded");
    for (auto& [c, _] : model.pending) c->fail(why);
    for (auto& c : model.load_waiters) c->fail(why);
    if (model.current) model.current->abort(why);
    for (auto& slot : model.retiring) slot->abort(why);
    spdlog::info("serve {}: unloaded", model.name);
    forget_loaded(st.context, model.name);
    st.models.erase(it);  // joins the loader and the engine loops (after they deliver the aborts)
    call->reply(msg::Empty{});
    notify_startup_waiters(self);  // an unloaded startup model no longer holds readiness back
  } else {
    call->fail(Status(Code::unknown_op, "the inference batcher does not serve \"" + op + "\""));
  }
}

caf::behavior batcher_actor(Self self, InferenceContext context) {
  auto& st = self->state;
  st.context = std::move(context);
  char prefix[32];
  std::snprintf(prefix, sizeof prefix, "cmpl-%08llx-", static_cast<unsigned long long>(st.seeds() & 0xffffffffu));
  st.id_prefix = prefix;
  // A source that cannot even be parsed is a failed startup model, listed with its reason.
  auto start_startup = [self](const std::string& name, const std::string& source,
                              std::vector<msg::InferAdapter> adapters, bool persist) {
    auto& st = self->state;
    auto started = start_loading(self, name, source, adapters, true, persist, nullptr);
    if (started.ok()) return;
    spdlog::error("serve {}: {}", name, started.to_string());
    auto model = std::make_unique<ServedModel>();
    model->name = name;
    model->source = source;
    model->adapters = std::move(adapters);
    model->startup = true;
    model->persist = persist;
    model->state = "failed";
    model->error = started.message();
    st.models[name] = std::move(model);
  };
  for (const auto& [name, source] : st.context.options.models) start_startup(name, source, {}, false);
  for (auto& record : records_to_restore(st.context)) {
    msg::InferLoadRequest& load = record.load;
    if (st.models.count(load.name) != 0) {
      spdlog::warn("serve {}: serve.models names it; the model loaded at run time under that name is not restored",
                   load.name);
      forget_loaded(st.context, load.name);
      continue;
    }
    spdlog::info("serve {}: restoring the model loaded at run time from {}", load.name, load.source);
    start_startup(load.name, load.source, std::move(load.adapters), load.persist);
  }
  return {
      [self](CallMessage& message) { serve(self, message.call); },
      [self](SlotEvent& event) { on_slot_event(self, event); },
      [self](await_models_atom) {
        // The promise answers the request, now if settled, else at the slot event that settles it.
        self->state.startup_waiters.push_back(self->make_response_promise());
        notify_startup_waiters(self);
      },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
      [](drain_atom) {},
  };
}

}  // namespace

const std::vector<InferenceOp>& inference_ops() {
  static const std::vector<InferenceOp> kOps = {
      {msg::kInferCompletions, Role::client}, {msg::kInferChat, Role::client}, {msg::kInferModels, Role::client},
      {msg::kInferStats, Role::client},       {msg::kInferLoad, Role::admin},  {msg::kInferUnload, Role::admin},
  };
  return kOps;
}

Result<std::pair<std::string, std::string>> parse_served_model(std::string_view spec) {
  auto eq = spec.find('=');
  std::string text(spec);
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == spec.size()) {
    return Status(Code::invalid_argument, "expected NAME=SOURCE, got \"" + text + "\"");
  }
  std::string name(spec.substr(0, eq));
  if (!std::all_of(name.begin(), name.end(), is_name_char)) {
    return Status(Code::invalid_argument, "expected NAME=SOURCE with a NAME of letters, digits, \".\", \"-\" and \"_\", got \"" + text + "\"");
  }
  return std::make_pair(std::move(name), std::string(spec.substr(eq + 1)));
}

caf::actor spawn_inference_batcher(caf::actor_system& system, const InferenceContext& context) {
  return system.spawn(batcher_actor, context);
}

Result<msg::InferModelsReply> await_startup_models(caf::actor_system& system, const Directory& directory,
                                                   std::chrono::milliseconds poll,
                                                   const std::function<bool()>& give_up) {
  caf::scoped_actor self{system};
  for (;;) {
    caf::actor batcher = directory.find("inference");
    if (!batcher) return Status(Code::unavailable, "the inference role is not running");
    std::optional<Result<msg::InferModelsReply>> out;
    self->request(batcher, poll, await_models_atom::value)
        .receive([&](const std::string& encoded) { out = wire::decode_bytes<msg::InferModelsReply>(encoded); },
                 [&](caf::error& error) {
                   if (error != caf::sec::request_timeout) {
                     out = Status(Code::unavailable, "the inference role: " + system.render(error));
                   }
                 });
    if (out) return std::move(*out);
    if (give_up && give_up()) return Status(Code::cancelled, "stopped waiting for the served models to load");
  }
}

}  // namespace cairn
