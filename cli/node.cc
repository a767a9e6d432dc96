// `cairn node`: assembles a node from its config and runs it until a signal, an admin shutdown,
// or a supervisor escalation stops it.
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include <boost/asio.hpp>
#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/messages.h"
#include "actors/router.h"
#include "actors/supervisor.h"
#include "cli/commands.h"
#include "cluster/auth.h"
#include "cluster/http_server.h"
#include "cluster/mlflow_api.h"
#include "cluster/openai_api.h"
#include "cluster/server.h"
#include "runtime/config.h"
#include "runtime/version.h"
#include "storage/blob_store.h"
#include "storage/kv_store.h"
#include "storage/job_store.h"
#include "storage/registry_store.h"
#include "storage/node_identity.h"

namespace cairn::cli {
namespace {

using Clock = std::chrono::steady_clock;

// How the node's run ends: the first request wins.
class StopSignal {
 public:
  void request(const std::string& reason, int exit_code) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (requested_) return;
      requested_ = true;
      reason_ = reason;
      exit_code_ = exit_code;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return requested_; });
  }
  bool requested() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requested_;
  }
  std::string reason() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return reason_;
  }
  int exit_code() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return exit_code_;
  }

 private:
  mutable std::mutex mutex_;  // guards everything below
  std::condition_variable cv_;
  bool requested_ = false;
  std::string reason_;
  int exit_code_ = 0;
};

void init_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("cairn");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

// The inference role's settings (serve.*). Serving models turns the role on.
void configure_inference(NodeConfig& config, InferenceContext& inference) {
  if (!config.serve_models.empty() &&
      std::find(config.roles.begin(), config.roles.end(), "inference") == config.roles.end()) {
    config.roles.emplace_back("inference");
  }
  InferenceOptions& o = inference.options;
  o.cache_dir = config.data_dir + "/serve-cache";
  o.model.device = config.serve_device;
  o.engine.kv_cache_bytes = config.serve_kv_cache_bytes;
  o.engine.block_size = config.serve_block_size;
  o.engine.max_running = config.serve_max_running;
  o.engine.max_step_tokens = config.serve_max_step_tokens;
  o.max_queue = config.serve_max_queue;
  o.request_timeout = std::chrono::milliseconds(config.serve_request_timeout_ms);
  o.alias_poll = std::chrono::milliseconds(config.serve_alias_poll_ms);
  o.load_retry_initial = std::chrono::milliseconds(config.serve_load_retry_initial_ms);
  o.load_retry_max = std::chrono::milliseconds(config.serve_load_retry_max_ms);
  for (const auto& spec : config.serve_models) {
    auto parsed = parse_served_model(spec);  // load_node_config checked the shape
    if (parsed.ok()) o.models.push_back(std::move(parsed).value());
  }
}

// Node-level series for /metrics.
std::string node_metrics_text(const msg::NodeStatus& status) {
  return "# HELP cairn:node_uptime_seconds Seconds since the node started.\n"
         "# TYPE cairn:node_uptime_seconds gauge\n"
         "cairn:node_uptime_seconds " + std::to_string(static_cast<double>(status.uptime_ms) / 1000.0) + "\n"
         "# HELP cairn:node_connections Open protocol connections.\n"
         "# TYPE cairn:node_connections gauge\n"
         "cairn:node_connections " + std::to_string(status.connections) + "\n"
         "# HELP cairn:node_boot_count Times this data directory has started a node.\n"
         "# TYPE cairn:node_boot_count counter\n"
         "cairn:node_boot_count " + std::to_string(status.boot_count) + "\n";
}

}  // namespace

int run_node(const NodeArgs& args) {
  ConfigSources sources;
  sources.file = args.config_file;
  sources.overrides = args.overrides;
  sources.known_roles = known_roles();
  auto loaded = load_node_config(sources);
  if (!loaded.ok()) {
    std::cerr << "cairn node: " << loaded.status().message() << "\n";
    return kExitError;
  }
  NodeConfig config = std::move(loaded).value();
  init_logging(config.log_level);
  const auto started = Clock::now();

  // Storage first: a second node on the same data dir stops here, before binding anything.
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) {
    spdlog::error("node.data_dir {}: cannot create: {}", config.data_dir, ec.message());
    return kExitError;
  }
  std::vector<std::string> families = storage::registry_families();
  families.emplace_back(storage::kNodeFamily);
  for (auto& family : storage::job_families()) families.push_back(std::move(family));
  auto store = storage::open_rocks_store({config.data_dir + "/db", families});
  if (!store.ok()) {
    spdlog::error("{}", store.status().message());
    return kExitError;
  }
  auto identity = storage::record_boot(**store);
  if (!identity.ok()) {
    spdlog::error("{}", identity.status().message());
    return kExitError;
  }
  // The registry's stores belong to the node, not to the registry actor: they outlive the actor
  // system, so a registry restarted after a crash continues on them.
  auto registry_store = storage::RegistryStore::open(**store);
  if (!registry_store.ok()) {
    spdlog::error("registry store in {}/db: {}", config.data_dir, registry_store.status().message());
    return kExitError;
  }
  auto blob_store = storage::BlobStore::open(config.data_dir + "/blobs");
  if (!blob_store.ok()) {
    spdlog::error("blob store: {}", blob_store.status().message());
    return kExitError;
  }
  auto job_store = storage::JobStore::open(**store);
  if (!job_store.ok()) {
    spdlog::error("job store in {}/db: {}", config.data_dir, job_store.status().message());
    return kExitError;
  }

  const std::string token_file = config.effective_token_file();
  if (config.token_file.empty()) {
    auto created = TokenStore::create_if_missing(token_file);
    if (!created.ok()) {
      spdlog::error("{}", created.status().message());
      return kExitError;
    }
    if (*created) spdlog::info("created token file {} with an admin and a client token", token_file);
  }
  auto tokens = TokenStore::load(token_file);
  if (!tokens.ok()) {
    spdlog::error("node.token_file: {}", tokens.status().message());
    return kExitError;
  }

  StopSignal stop;
  boost::asio::io_context io(static_cast<int>(config.io_threads));
  std::unique_ptr<ProtocolServer> server;
  std::unique_ptr<HttpServer> http;
  std::atomic<bool> stopping{false};

  caf::actor_system_config caf_config;
  caf_config.set("scheduler.max-threads", static_cast<size_t>(config.actor_threads));
  caf_config.set("logger.verbosity", caf::atom("quiet"));
  register_message_types(caf_config);
  caf::actor_system system(caf_config);

  Directory directory;
  NodeHooks hooks;
  hooks.request_shutdown = [&stop](const std::string& reason, int code) { stop.request(reason, code); };
  hooks.node_status = [&]() {
    msg::NodeStatus s;
    s.node = config.name;
    s.node_id = identity->node_id;
    s.version = kCairnVersion;
    s.state = stopping.load() ? "stopping" : "running";
    s.pid = static_cast<uint64_t>(::getpid());
    s.uptime_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
    s.boot_count = identity->boot_count;
    s.data_dir = std::filesystem::absolute(config.data_dir).string();
    s.protocol = server ? server->bound().to_string() : "";
    s.http = http ? http->bound().to_string() : "";
    s.tls = config.tls_enabled();
    s.connections = server ? server->connection_count() : 0;
    return s;
  };
  SupervisorOptions supervisor_options;
  supervisor_options.restart.max_restarts = config.max_restarts;
  supervisor_options.restart.window = std::chrono::milliseconds(config.restart_window_ms);
  supervisor_options.restart.backoff_initial = std::chrono::milliseconds(config.backoff_initial_ms);
  supervisor_options.restart.backoff_max = std::chrono::milliseconds(config.backoff_max_ms);
  RoleContext roles;
  roles.registry.store = registry_store->get();
  roles.registry.blobs = blob_store->get();
  // Download chunks must fit a frame with room for the envelope.
  roles.registry.options.max_chunk_bytes = std::min(roles.registry.options.max_chunk_bytes, config.max_frame_bytes / 2);
  roles.registry.options.default_chunk_bytes =
      std::min(roles.registry.options.default_chunk_bytes, roles.registry.options.max_chunk_bytes);
  roles.train.jobs = job_store->get();
  roles.train.blobs = blob_store->get();
  roles.train.directory = &directory;
  roles.train.work_dir = config.data_dir + "/train";
  roles.train.node_name = config.name;
  roles.train.self_address = [&server] { return server ? server->bound().to_string() : std::string(); };
  roles.train.peer_token =
      config.train_peer_token.empty() ? tokens->first_token(Role::admin) : config.train_peer_token;
  roles.train.options.peer_timeout = std::chrono::milliseconds(config.train_peer_timeout_ms);
  roles.train.options.max_jobs = config.train_max_jobs;
  roles.train.options.max_restarts = config.train_max_restarts;
  configure_inference(config, roles.inference);
  roles.inference.directory = &directory;
  roles.inference.blobs = blob_store->get();
  roles.inference.store = store->get();  // the record of the models loaded at run time
  roles.inference.boot_count = identity->boot_count;
  caf::actor supervisor =
      spawn_supervisor(system, supervisor_options, child_specs_for(config.roles, roles), directory, hooks);

  {
    // The supervisor registers its children while it initializes; once it answers anything, every
    // role is routable, and only then may the node say it is ready.
    caf::scoped_actor self{system};
    self->request(supervisor, caf::infinite, mailbox_size_atom::value).receive([](int64_t) {}, [](caf::error&) {});
  }

  ActorRouter router(directory, default_routes());
  auto server_options = ServerOptions::from_config(config);
  server_options.node_id = identity->node_id;
  auto started_server = ProtocolServer::start(io, server_options, *tokens, router);
  if (!started_server.ok()) {
    spdlog::error("{}", started_server.status().message());
    caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    return kExitError;
  }
  server = std::move(started_server).value();

  HttpRouter http_routes;
  const bool serves_models = std::find(config.roles.begin(), config.roles.end(), "inference") != config.roles.end();
  register_health_route(http_routes, router, serves_models, [&]() {
    NodeHealth health;
    health.stopping = stopping.load();
    health.fields = {{"node", config.name}, {"node_id", identity->node_id}, {"version", kCairnVersion}};
    return health;
  });
  register_mlflow_routes(http_routes, router, *tokens);
  register_openai_routes(http_routes, router, *tokens);
  register_metrics_route(http_routes, router, [&]() { return node_metrics_text(hooks.node_status()); });
  if (config.http) {
    auto started_http = HttpServer::start(io, HttpOptions{*config.http}, http_routes);
    if (!started_http.ok()) {
      spdlog::error("{}", started_http.status().message());
      server.reset();
      caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
      return kExitError;
    }
    http = std::move(started_http).value();
  }

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&stop](const boost::system::error_code& e, int signal) {
    if (!e) stop.request(signal == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)", kExitOk);
  });

  std::vector<std::thread> io_threads;
  for (uint32_t i = 0; i < config.io_threads; ++i) io_threads.emplace_back([&io] { io.run(); });

  spdlog::info("node {} (id {}, boot {}) serving roles [{}] from {}", config.name, identity->node_id,
               identity->boot_count, fmt::join(config.roles, ", "), config.data_dir);
  // Like vLLM, ready once the startup models are: the listeners already answer (GET /health 503
  // meanwhile), and the line waits until each startup model has loaded, failed, or failed once
  // and retries, then names each with its state ("models=NAME:STATE,...").
  std::string models_field;
  if (serves_models && !stop.requested()) {
    auto models = await_startup_models(system, directory, std::chrono::seconds(1), [&stop] { return stop.requested(); });
    if (models.ok()) {
      for (const auto& m : models->models) {
        if (m.startup) models_field += (models_field.empty() ? "" : ",") + m.name + ":" + m.state;
      }
    } else {
      spdlog::warn("served models: {}", models.status().message());
    }
  }
  if (!stop.requested()) {  // a node told to stop while its models loaded never says it is ready
    std::cout << "cairn node ready protocol=" << server->bound().to_string()
              << " http=" << (http ? http->bound().to_string() : "off") << " pid=" << ::getpid()
              << (config.tls_enabled() ? " tls=on" : "") << (models_field.empty() ? "" : " models=" + models_field)
              << std::endl;
  }

  stop.wait();
  const int exit_code = stop.exit_code();
  spdlog::info("node stopping: {}", stop.reason());
  stopping.store(true);

  // In-flight requests get the grace period to finish; new ones are refused meanwhile.
  server->begin_shutdown();
  caf::anon_send(supervisor, drain_atom::value);
  if (http) http->stop();
  const auto grace_end = Clock::now() + std::chrono::milliseconds(config.shutdown_grace_ms);
  while (server->inflight() > 0 && Clock::now() < grace_end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (server->inflight() > 0) spdlog::warn("{} requests still in flight after the grace period; answering them with shutting_down", server->inflight());
  server->close_all();
  const auto flush_end = Clock::now() + std::chrono::seconds(1);
  while (server->connection_count() > 0 && Clock::now() < flush_end) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
  system.await_all_actors_done();
  signals.cancel();
  io.stop();
  for (auto& t : io_threads) t.join();
  server.reset();
  http.reset();
  registry_store->reset();
  job_store->reset();
  blob_store->reset();
  store->reset();  // closes RocksDB: flushed, lock released
  spdlog::info("node stopped");
  return exit_code;
}

}  // namespace cairn::cli
