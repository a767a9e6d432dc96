#include "actors/train/worker.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <spdlog/spdlog.h>

#include "actors/local_call.h"
#include "actors/train/job_actors.h"
#include "cairn/artifacts.h"
#include "cairn/client.h"
#include "cluster/collective.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "runtime/messages/registry.h"
#include "storage/blob_store.h"
#include "storage/sha256.h"

namespace cairn::train {
namespace {

namespace fs = std::filesystem;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status io_error(const std::string& what, const std::error_code& ec) {
  return Status(Code::io_error, what + ": " + ec.message());
}

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status(Code::not_found, path + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Status write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Status(Code::io_error, path + ": cannot be written");
  return Status();
}

// Copies the job's tokenizer into `dir` so that a registered version or an exported model is
// self-contained for serving and generation: tokenizer.json, plus tokenizer_config.json (chat
// template, special tokens) when one sits beside the tokenizer file, as in an HF model directory.
Status copy_tokenizer_files(const std::string& tokenizer_path, const std::string& dir) {
  if (tokenizer_path.empty()) return Status();
  const fs::path source(tokenizer_path);
  std::error_code ec;
  fs::copy_file(source, fs::path(dir) / "tokenizer.json", fs::copy_options::overwrite_existing, ec);
  if (ec) return io_error("copy " + source.string() + " to " + dir, ec);
  const fs::path config = source.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(config, ec)) {
    fs::copy_file(config, fs::path(dir) / "tokenizer_config.json", fs::copy_options::overwrite_existing, ec);
    if (ec) return io_error("copy " + config.string() + " to " + dir, ec);
  }
  return Status();
}

// Writes one artifact to a destination file, verified against its sha256.
using ArtifactWriter = std::function<Status(const msg::ArtifactRef& artifact, const std::string& dest)>;

// Exports a registry version's artifacts into `dir` with `write`, unless `dir` already holds a
// complete export (its .complete marker).
Status export_version(const ArtifactWriter& write, const msg::ModelVersion& version, const std::string& dir) {
  const std::string marker = dir + "/.cairn-complete";
  if (fs::exists(marker)) return Status();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error("create " + dir, ec);
  for (const auto& artifact : version.artifacts) {
    const fs::path relative(artifact.path);
    if (relative.is_absolute() || artifact.path.find("..") != std::string::npos) {
      return Status(Code::data_loss, version.name + "/" + version.version + ": artifact path \"" + artifact.path +
                                         "\" leaves the version's directory");
    }
    const fs::path dest = fs::path(dir) / relative;
    fs::create_directories(dest.parent_path(), ec);
    if (ec) return io_error("create " + dest.parent_path().string(), ec);
    Status exported = write(artifact, dest.string());
    if (!exported.ok()) return exported.with_context(version.name + "/" + version.version + ": " + artifact.path);
  }
  return write_text_file(marker, "");
}

// Where prepare_job finds registry versions and their files: this node's registry and blob store,
// or (a guest's) the home node's registry over the protocol, connected on first use.
class VersionSource {
 public:
  VersionSource(const PrepareRequest& request, const Directory& directory, storage::BlobStore& blobs,
                std::chrono::milliseconds timeout)
      : request_(request), directory_(directory), blobs_(blobs), timeout_(timeout) {}

  bool remote() const { return !request_.home.empty(); }

  Result<msg::ModelVersion> get(const msg::GetVersionRequest& get) {
    if (!remote()) {
      auto reply = call_local_blocking<msg::VersionReply>(directory_, "registry", std::string(msg::kGetVersion), get,
                                                          timeout_);
      if (!reply.ok()) return reply.status();
      return reply->model_version;
    }
    CAIRN_RETURN_IF_ERROR(connect());
    auto reply = home_->call_as<msg::VersionReply>(msg::kGetVersion, get, timeout_);
    if (!reply.ok()) return reply.status().with_context("the home node " + request_.home + "'s registry");
    return reply->model_version;
  }

  // Exports `version` into `dir`. Remote: blobs this node holds are exported locally, the others
  // downloaded from the home node.
  Status fetch(const msg::ModelVersion& version, const std::string& dir) {
    if (!remote()) {
      return export_version([this](const msg::ArtifactRef& a, const std::string& dest) {
        return blobs_.export_to(a.sha256, dest);
      }, version, dir);
    }
    return export_version([this](const msg::ArtifactRef& a, const std::string& dest) -> Status {
      if (blobs_.contains(a.sha256)) return blobs_.export_to(a.sha256, dest);
      CAIRN_RETURN_IF_ERROR(connect());
      ArtifactTransferOptions options;
      options.timeout = timeout_;
      Status downloaded = download_artifact(*home_, a, dest, options);
      return downloaded.ok() ? downloaded : downloaded.with_context("download from the home node " + request_.home);
    }, version, dir);
  }

  // Where `version` is exported: <models_dir>/NAME/VERSION for this node's registry; for the home
  // node's, a directory named by the digest of its artifacts (a version number of another registry
  // may name other files here).
  std::string models_dir_for(const msg::ModelVersion& version) const {
    if (!remote()) return request_.models_dir + "/" + version.name + "/" + version.version;
    std::string content;
    for (const auto& artifact : version.artifacts) content += artifact.path + "\n" + artifact.sha256 + "\n";
    return request_.models_dir + "/remote/" + storage::sha256_hex(content).substr(0, 24);
  }

 private:
  Status connect() {
    if (home_) return Status();
    ClientOptions options;
    options.address = request_.home;
    options.token = request_.peer_token;
    options.reconnect = false;
    options.call_timeout = timeout_;
    options.client_name = "cairn-node/train";
    auto client = Client::connect(options);
    if (!client.ok()) {
      if (client.status().code() == Code::unauthenticated || client.status().code() == Code::permission_denied) {
        return Status(client.status().code(), "the home node " + request_.home +
                                                  " refused this node's token (train.peer_token): " +
                                                  client.status().message());
      }
      return client.status().with_context("connecting to the home node " + request_.home);
    }
    home_ = std::move(client).value();
    return Status();
  }

  const PrepareRequest& request_;
  const Directory& directory_;
  storage::BlobStore& blobs_;
  const std::chrono::milliseconds timeout_;
  std::unique_ptr<Client> home_;
};

}  // namespace

std::string cursor_artifact_path(int rank) { return "cairn/data_cursor.rank" + std::to_string(rank) + ".json"; }

// ---- prepare ----

Result<PreparedJobPtr> prepare_job(const PrepareRequest& request, const Directory& directory,
                                   storage::BlobStore& blobs, std::chrono::milliseconds registry_timeout) {
  auto job = std::make_shared<PreparedJob>();
  job->job_id = request.job_id;
  job->generation = request.generation;
  job->run_id = request.run_id;
  auto config = parse_train_config(request.config_yaml, request.config_name, nullptr);
  if (!config.ok()) return config.status();
  job->config = std::move(config).value();
  const TrainJobConfig& c = job->config;
  job->config_digest = train_config_digest(c);
  job->world_size = static_cast<int>(c.num_workers);
  job->output_model = c.output_model.empty() ? c.experiment + "-" + request.job_id : c.output_model;

  std::error_code ec;
  job->work_dir = request.work_dir + "/gen-" + std::to_string(request.generation);
  fs::remove_all(job->work_dir, ec);
  fs::create_directories(job->work_dir, ec);
  if (ec) return io_error("create " + job->work_dir, ec);

  // The base model.
  VersionSource source(request, directory, blobs, registry_timeout);
  if (c.base_model.kind == ModelReference::Kind::registry) {
    msg::GetVersionRequest get;
    get.name = c.base_model.name;
    get.version = c.base_model.version;
    get.alias = c.base_model.alias;
    if (!request.pinned_base_model.empty()) {
      const size_t slash = request.pinned_base_model.rfind('/');
      if (slash == std::string::npos) {
        return Status(Code::invalid_argument, "base_model: the pinned version \"" + request.pinned_base_model +
                                                  "\" is not NAME/VERSION");
      }
      get.name = request.pinned_base_model.substr(0, slash);
      get.version = request.pinned_base_model.substr(slash + 1);
      get.alias.clear();
    }
    const std::string what = "base_model " + (request.pinned_base_model.empty() ? c.base_model.to_string()
                                                                                : request.pinned_base_model);
    auto version = source.get(get);
    if (!version.ok()) return version.status().with_context(what);
    const std::string dir = source.models_dir_for(*version);
    Status fetched = source.fetch(*version, dir);
    if (!fetched.ok()) return fetched.with_context(what);
    job->init.base_model_dir = dir;
    job->base_model_reference = version->name + "/" + version->version;
  } else if (c.base_model.kind == ModelReference::Kind::local_dir) {
    job->init.base_model_dir = c.base_model.path;
    job->base_model_reference = c.base_model.path;
  }
  job->init.base_model_reference = job->base_model_reference;

  // Tokenizer and data (the data once per job).
  std::string tokenizer_source = c.tokenizer.empty() ? job->init.base_model_dir : c.tokenizer;
  if (tokenizer_source.empty()) return Status(Code::invalid_argument, "tokenizer: the job names no tokenizer");
  job->init.tokenizer_path =
      fs::is_directory(tokenizer_source) ? tokenizer_source + "/tokenizer.json" : tokenizer_source;
  if (request.dataset) {
    job->dataset = request.dataset;
  } else {
    auto tokenizer = Tokenizer::load(tokenizer_source);
    if (!tokenizer.ok()) return tokenizer.status().with_context("tokenizer " + tokenizer_source);
    DataOptions data = data_options(c);
    bool chat = false;
    for (const auto& spec : c.datasets) chat = chat || spec.type == "chat_template";
    if (chat && data.chat_template.empty() && c.chat_template == ChatTemplateChoice::tokenizer_default) {
      auto chat_template = load_chat_template(tokenizer_source);
      if (!chat_template.ok()) return chat_template.status();
      data.chat_template = std::move(chat_template).value();
    }
    auto dataset = load_datasets(c.datasets, *tokenizer, data);
    if (!dataset.ok()) return dataset.status();
    job->dataset = std::make_shared<const TokenizedDataset>(std::move(dataset).value());
  }

  // The schedule, from the rows of the first epoch over all shards.
  StreamOptions stream = stream_options(c, 0);
  auto probe = BatchStream::create(*job->dataset, DataSplit::train, stream);
  if (!probe.ok()) return probe.status();
  auto schedule = training_schedule(c, probe->rows_in_epoch(0));
  if (!schedule.ok()) return schedule.status();
  job->schedule = *schedule;
  job->init.schedule = *schedule;

  // The checkpoint to resume from.
  if (!request.resume_from.model.empty()) {
    msg::GetVersionRequest get;
    get.name = request.resume_from.model;
    get.version = request.resume_from.version;
    auto version = source.get(get);
    if (!version.ok()) {
      return version.status().with_context("checkpoint " + get.name + "/" + get.version);
    }
    job->resume_dir = job->work_dir + "/resume";
    Status fetched = source.fetch(*version, job->resume_dir);
    if (!fetched.ok()) return fetched.with_context("checkpoint " + get.name + "/" + get.version);
    job->resume_step = request.resume_from.step;
    job->resume_cursors.resize(static_cast<size_t>(job->world_size));
    for (int rank = 0; rank < job->world_size; ++rank) {
      auto text = read_text_file(job->resume_dir + "/" + cursor_artifact_path(rank));
      if (!text.ok()) return text.status().with_context("checkpoint " + get.name + "/" + get.version);
      auto cursor = DataCursor::from_json(*text);
      if (!cursor.ok()) return cursor.status().with_context("checkpoint " + get.name + "/" + get.version);
      job->resume_cursors[static_cast<size_t>(rank)] = std::move(cursor).value();
    }
  }
  return PreparedJobPtr(std::move(job));
}

// ---- BatchQueue ----

void BatchQueue::push(ShardBatchPtr batch) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    batches_.push_back(std::move(batch));
  }
  cv_.notify_one();
}

Result<ShardBatchPtr> BatchQueue::pop() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return closed_.has_value() || !batches_.empty(); });
  if (closed_) return *closed_;
  ShardBatchPtr batch = std::move(batches_.front());
  batches_.pop_front();
  return batch;
}

void BatchQueue::close(const Status& why) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    closed_ = why;
    batches_.clear();
  }
  cv_.notify_all();
}

// ---- links ----

namespace {

class InProcessLink final : public RankLink {
 public:
  explicit InProcessLink(std::unique_ptr<Collective> member) : member_(std::move(member)) {}
  Result<Collective*> connect() override { return member_.get(); }
  void abort() override { member_->abort(); }

 private:
  const std::unique_ptr<Collective> member_;  // thread-safe abort(); used by one rank's thread
};

}  // namespace

std::vector<RankLinkPtr> in_process_links(int world_size) {
  std::vector<RankLinkPtr> links;
  auto group = InProcessGroup::create(world_size);
  if (!group) return links;
  for (int rank = 0; rank < world_size; ++rank) links.push_back(std::make_shared<InProcessLink>(group->member(rank)));
  return links;
}

RingLink::RingLink(std::unique_ptr<RingEndpoint> endpoint, RingOptions options)
    : bound_(endpoint->bound()), endpoint_(std::move(endpoint)), options_(std::move(options)) {}

Result<std::shared_ptr<RingLink>> RingLink::listen(const HostPort& bind, RingOptions options) {
  auto endpoint = RingEndpoint::listen(bind);
  if (!endpoint.ok()) return endpoint.status();
  return std::shared_ptr<RingLink>(new RingLink(std::move(endpoint).value(), std::move(options)));
}

HostPort RingLink::bound() const { return bound_; }

Status RingLink::set_peers(std::vector<HostPort> peers) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (static_cast<int>(peers.size()) != options_.world_size) {
    return Status(Code::invalid_argument, "ring of rank " + std::to_string(options_.rank) + ": " +
                                              std::to_string(peers.size()) + " peer addresses for world size " +
                                              std::to_string(options_.world_size));
  }
  options_.peers = std::move(peers);
  return Status();
}

Result<Collective*> RingLink::connect() {
  std::unique_ptr<RingEndpoint> endpoint;
  RingOptions options;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_) return Status(Code::cancelled, "ring of rank " + std::to_string(options_.rank) + ": aborted");
    if (!endpoint_) return Status(Code::internal, "ring of rank " + std::to_string(options_.rank) + ": connected twice");
    if (static_cast<int>(options_.peers.size()) != options_.world_size) {
      return Status(Code::internal, "ring of rank " + std::to_string(options_.rank) + ": connect before set_peers");
    }
    endpoint = std::move(endpoint_);
    options = options_;
  }
  auto connected = endpoint->connect(options);  // blocks: outside the lock so abort() stays free
  if (!connected.ok()) return connected.status();
  std::lock_guard<std::mutex> lock(mutex_);
  collective_ = std::move(connected).value();
  if (aborted_) collective_->abort();
  return collective_.get();
}

void RingLink::abort() {
  std::lock_guard<std::mutex> lock(mutex_);
  aborted_ = true;
  if (collective_) collective_->abort();
}

// ---- the worker thread ----

namespace {

class Worker {
 public:
  explicit Worker(const WorkerContext& context) : cx_(context), job_(*context.job), config_(context.job->config) {}

  // Trains; returns the guard's message ("" = ran to the end).
  Result<std::string> run() {
    Collective* collective = nullptr;
    if (cx_.link) {
      auto connected = cx_.link->connect();
      if (!connected.ok()) return connected.status();
      collective = *connected;
    }
    TrainerOptions options;
    options.rank = cx_.rank;
    options.world_size = job_.world_size;
    options.collective = collective;
    options.device = config_.device;
    collective_ = collective;
    auto trainer = Trainer::create(config_, job_.init, options);
    if (!trainer.ok()) return trainer.status();
    trainer_ = std::move(trainer).value();
    if (!job_.resume_dir.empty()) {
      CAIRN_RETURN_IF_ERROR(trainer_->load_checkpoint(job_.resume_dir));
      if (cx_.rank < static_cast<int>(job_.resume_cursors.size()) && job_.resume_cursors[cx_.rank]) {
        cursor_json_ = job_.resume_cursors[cx_.rank]->to_json();
      }
      log("info", "resumed from the checkpoint at step " + std::to_string(trainer_->completed_steps()));
    }
    CAIRN_RETURN_IF_ERROR(load_validation_batches());

    const TrainingSchedule& schedule = job_.schedule;
    int64_t step = trainer_->completed_steps();
    last_log_time_ = std::chrono::steady_clock::now();
    while (step < schedule.total_steps) {
      for (int64_t i = 0; i < config_.gradient_accumulation_steps; ++i) {
        if (cx_.stop->load()) return Status(Code::cancelled, "stopped");
        auto batch = cx_.queue->pop();
        if (!batch.ok()) return batch.status();
        caf::anon_send(cx_.trainer, batch_consumed_atom::value);
        CAIRN_RETURN_IF_ERROR(trainer_->accumulate((*batch)->rows));
        cursor_json_ = (*batch)->cursor_json;
      }
      auto stats = trainer_->step();
      if (!stats.ok()) return stats.status();
      step = stats->step;
      tokens_since_log_ += stats->tokens;
      const bool last = step >= schedule.total_steps;
      std::string stop_reason;
      if (step % config_.logging_steps == 0 || last) stop_reason = on_logging_step(*stats);
      if (has_validation_ && ((schedule.eval_every > 0 && step % schedule.eval_every == 0) || last)) {
        auto eval = trainer_->evaluate(val_batches_);
        if (!eval.ok()) return eval.status();
        std::string early = on_evaluation(step, *eval);
        if (stop_reason.empty()) stop_reason = early;
      }
      const bool final_save = last || !stop_reason.empty();
      if (final_save || (schedule.save_every > 0 && step % schedule.save_every == 0)) {
        CAIRN_RETURN_IF_ERROR(checkpoint(step, final_save, stop_reason));
      }
      if (!stop_reason.empty()) return stop_reason;
    }
    return std::string();
  }

  int64_t step() const { return trainer_ ? trainer_->completed_steps() : 0; }
  std::string digest() const { return trainer_ ? trainer_->parameters_digest() : std::string(); }

 private:
  Status load_validation_batches() {
    // Every rank evaluates together (evaluate() reduces across ranks), so whether the job evaluates
    // depends on the dataset only; a rank whose shard got no validation row passes no batches.
    has_validation_ = job_.dataset->val && !job_.dataset->val->empty();
    if (!has_validation_) return Status();
    StreamOptions options = stream_options(config_, cx_.rank);
    options.shuffle = false;
    options.num_epochs = 1;
    auto stream = BatchStream::create(*job_.dataset, DataSplit::val, options);
    if (!stream.ok()) return stream.status().with_context("validation split");
    std::vector<PackedRow> batch;
    while (auto row = stream->next()) {
      batch.push_back(std::move(*row));
      if (static_cast<int64_t>(batch.size()) == config_.micro_batch_size) {
        val_batches_.push_back(std::move(batch));
        batch.clear();
      }
    }
    if (!batch.empty()) val_batches_.push_back(std::move(batch));
    return Status();
  }

  // Every rank reports its progress (a rank on another node shows in the job's status through
  // it); rank 0 also logs the metrics to the run. Every rank runs the loss watchdog (the loss is
  // the same on every rank, so they stop together).
  std::string on_logging_step(const StepStats& stats) {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - last_log_time_).count();
    const double tokens_per_s = seconds > 0 ? static_cast<double>(tokens_since_log_) / seconds : 0.0;
    last_log_time_ = now;
    tokens_since_log_ = 0;
    {
      auto report = std::make_shared<WorkerReport>(base_report(WorkerReport::Kind::progress, stats.step));
      report->loss = stats.loss;
      report->lr = stats.lr;
      report->grad_norm = stats.grad_norm;
      report->tokens_per_s = tokens_per_s;
      char line[200];
      std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f lr %.3g grad_norm %.3f tokens/s %.0f",
                    static_cast<long long>(stats.step), static_cast<long long>(job_.schedule.total_steps), stats.loss,
                    stats.lr, stats.grad_norm, tokens_per_s);
      report->message = line;
      send(report);
    }
    if (cx_.rank == 0) {
      log_metrics(stats.step, {{"loss", stats.loss},
                               {"lr", stats.lr},
                               {"grad_norm", stats.grad_norm},
                               {"tokens_per_s", tokens_per_s}});
    }
    if (config_.loss_watchdog_threshold > 0) {
      watchdog_count_ = stats.loss > config_.loss_watchdog_threshold ? watchdog_count_ + 1 : 0;
      if (watchdog_count_ >= config_.loss_watchdog_patience) {
        char why[200];
        std::snprintf(why, sizeof why,
                      "loss watchdog: the training loss stayed above loss_watchdog_threshold %g for %lld logged "
                      "steps (last %.4f at step %lld)",
                      config_.loss_watchdog_threshold, static_cast<long long>(watchdog_count_), stats.loss,
                      static_cast<long long>(stats.step));
        return why;
      }
    }
    return std::string();
  }

  std::string on_evaluation(int64_t step, const EvalStats& eval) {
    if (cx_.rank == 0) {
      auto report = std::make_shared<WorkerReport>(base_report(WorkerReport::Kind::eval, step));
      report->eval_loss = eval.loss;
      report->eval_perplexity = eval.perplexity;
      char line[160];
      std::snprintf(line, sizeof line, "eval at step %lld: eval_loss %.4f perplexity %.2f",
                    static_cast<long long>(step), eval.loss, eval.perplexity);
      report->message = line;
      send(report);
      log_metrics(step, {{"eval_loss", eval.loss}, {"eval_perplexity", eval.perplexity}});
    }
    if (eval.loss < best_eval_loss_) {
      best_eval_loss_ = eval.loss;
      evals_without_improvement_ = 0;
    } else {
      ++evals_without_improvement_;
    }
    if (config_.early_stopping_patience > 0 && evals_without_improvement_ >= config_.early_stopping_patience) {
      char why[200];
      std::snprintf(why, sizeof why,
                    "early stopping: eval_loss has not improved on %.4f for %lld evaluations "
                    "(early_stopping_patience %lld)",
                    best_eval_loss_, static_cast<long long>(evals_without_improvement_),
                    static_cast<long long>(config_.early_stopping_patience));
      return why;
    }
    return std::string();
  }

  // Every rank's data cursor to rank 0, through the collective (so it works the same between
  // processes); then rank 0 saves and registers the checkpoint. Every rank calls it at the same
  // steps.
  Status checkpoint(int64_t step, bool final, const std::string& stop_reason) {
    std::vector<std::string> cursors(static_cast<size_t>(job_.world_size));
    cursors[static_cast<size_t>(cx_.rank)] = cursor_json_;
    if (job_.world_size > 1) {
      for (int root = 0; root < job_.world_size; ++root) {
        uint64_t size = root == cx_.rank ? cursor_json_.size() : 0;
        CAIRN_RETURN_IF_ERROR(collective_->broadcast(&size, sizeof size, root));
        std::string& text = cursors[static_cast<size_t>(root)];
        text.resize(size);
        CAIRN_RETURN_IF_ERROR(collective_->broadcast(text.data(), size, root));
      }
    }
    if (cx_.rank != 0) return Status();
    const std::string dir = job_.work_dir + "/checkpoint-" + std::to_string(step);
    std::error_code ec;
    fs::remove_all(dir, ec);
    CAIRN_RETURN_IF_ERROR(trainer_->save_checkpoint(dir));
    CAIRN_RETURN_IF_ERROR(copy_tokenizer_files(job_.init.tokenizer_path, dir));
    fs::create_directories(dir + "/cairn", ec);
    if (ec) return io_error("create " + dir + "/cairn", ec);
    for (int rank = 0; rank < job_.world_size; ++rank) {
      CAIRN_RETURN_IF_ERROR(write_text_file(dir + "/" + cursor_artifact_path(rank), cursors[static_cast<size_t>(rank)]));
    }
    msg::CreateVersionRequest request;
    request.name = job_.output_model;
    request.create_model = true;
    request.run_id = job_.run_id;
    request.source = "train:" + job_.job_id + ":step-" + std::to_string(step);
    request.base_model = job_.base_model_reference;
    request.description = (final ? "final model of training job " : "checkpoint of training job ") + job_.job_id +
                          " at step " + std::to_string(step);
    request.tags = {{"cairn.job_id", job_.job_id},
                    {"cairn.step", std::to_string(step)},
                    {"cairn.kind", final ? "final" : "checkpoint"},
                    {"cairn.config_digest", job_.config_digest},
                    {"cairn.dataset_digest", job_.dataset->digest}};
    if (!stop_reason.empty()) request.tags.push_back({"cairn.stop_reason", stop_reason});
    std::vector<fs::path> files;
    for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
      if (entry.is_regular_file()) files.push_back(entry.path());
    }
    if (ec) return io_error("list " + dir, ec);
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      auto blob = cx_.blobs->put_file(file.string());
      if (!blob.ok()) return blob.status().with_context("checkpoint at step " + std::to_string(step));
      request.artifacts.push_back({fs::relative(file, dir).generic_string(), blob->sha256, blob->size});
    }
    auto version = call_local_blocking<msg::VersionReply>(*cx_.directory, "registry",
                                                          std::string(msg::kCreateVersion), request,
                                                          cx_.registry_timeout);
    fs::remove_all(dir, ec);
    if (!version.ok()) return version.status().with_context("registering the checkpoint at step " + std::to_string(step));
    if (final && !config_.output_dir.empty()) {
      Status exported = trainer_->export_model(config_.output_dir);
      if (exported.ok()) exported = copy_tokenizer_files(job_.init.tokenizer_path, config_.output_dir);
      if (!exported.ok()) log("warn", "output_dir: " + exported.to_string());
    }
    auto report = std::make_shared<WorkerReport>(base_report(WorkerReport::Kind::checkpoint, step));
    report->checkpoint = {version->model_version.name, version->model_version.version, step};
    report->message = std::string(final ? "final model" : "checkpoint") + " at step " + std::to_string(step) +
                      " registered as " + version->model_version.name + "/" + version->model_version.version;
    send(report);
    return Status();
  }

  WorkerReport base_report(WorkerReport::Kind kind, int64_t step) const {
    WorkerReport report;
    report.job_id = job_.job_id;
    report.generation = job_.generation;
    report.kind = kind;
    report.rank = cx_.rank;
    report.step = step;
    return report;
  }

  void send(const std::shared_ptr<WorkerReport>& report) {
    caf::anon_send(cx_.job_manager, WorkerReportPtr(report));
  }

  void log(const std::string& level, const std::string& message) {
    if (cx_.rank != 0) return;
    auto report = std::make_shared<WorkerReport>(base_report(WorkerReport::Kind::log, step()));
    report->level = level;
    report->message = message;
    send(report);
  }

  // Fire and forget: the registry answers on its own time; a failure is logged, never waited on.
  void log_metrics(int64_t step, std::initializer_list<std::pair<const char*, double>> values) {
    if (job_.run_id.empty()) return;
    msg::LogBatchRequest request;
    request.run_id = job_.run_id;
    const int64_t now = unix_ms();
    for (const auto& [key, value] : values) {
      if (!std::isfinite(value)) continue;
      request.metrics.push_back({key, value, now, step});
    }
    LocalCallHandlers handlers;
    handlers.on_done = [job = job_.job_id](Result<std::string> reply) {
      if (!reply.ok()) spdlog::warn("train {}: metrics not logged: {}", job, reply.status().to_string());
    };
    send_local_call(*cx_.directory, "registry", std::string(msg::kLogBatch), wire::encode(request),
                    std::move(handlers));
  }

  const WorkerContext& cx_;
  const PreparedJob& job_;
  const TrainJobConfig& config_;
  Collective* collective_ = nullptr;
  std::unique_ptr<Trainer> trainer_;
  bool has_validation_ = false;
  std::vector<std::vector<PackedRow>> val_batches_;
  std::string cursor_json_;
  std::chrono::steady_clock::time_point last_log_time_;
  int64_t tokens_since_log_ = 0;
  int64_t watchdog_count_ = 0;
  double best_eval_loss_ = INFINITY;
  int64_t evals_without_improvement_ = 0;
};

}  // namespace

void run_worker(const WorkerContext& context) {
  auto done = std::make_shared<WorkerDone>();
  done->job_id = context.job->job_id;
  done->generation = context.job->generation;
  done->rank = context.rank;
  try {
    Worker worker(context);
    auto result = worker.run();
    if (result.ok()) {
      done->stop_reason = *result;
    } else {
      done->status = result.status();
    }
    done->step = worker.step();
    done->parameters_digest = worker.digest();
  } catch (const std::exception& e) {
    done->status = Status(Code::internal, std::string("trainer threw: ") + e.what());
  }
  if (!done->status.ok() && context.link) context.link->abort();  // the other ranks must not wait for this one
  caf::anon_send(context.job_manager, WorkerDonePtr(std::move(done)));
}

}  // namespace cairn::train
