// registry_bench: the registry's benchmarks of issue #3, in one run against a real node.
//
//   1. Durable metric ingest: points/s through registry.log_batch (batches of 1000 points) over
//      the msgpack protocol (several connections, several requests in flight on each, so the
//      registry actor's group commit can merge them) and over the MLflow HTTP API
//      (POST /api/2.0/mlflow/runs/log-batch, keep-alive, several connections). Compared with the
//      naive store: one synced RocksDB put per point (a bounded count, extrapolated).
//      Goal: >= 200k points/s.
//   2. Version registration latency (registry.create_version, metadata only, sequential):
//      p50 and p99. Goal: p99 < 10 ms.
//   3. Listing and searching at scale: a data dir pre-filled (directly through RegistryStore
//      with sync=false, before the node starts on it) with --runs runs in one experiment and one
//      model with --versions versions; then, through the node, the first page (100) of a filtered
//      run search ("metrics.loss < 1.5") and of that model's version list. Goal: < 50 ms each.
//
// Prints a table and appends a dated section to bench/RESULTS.md.
//
//   registry_bench [--runs N] [--versions N] [--fill-seconds N] [--proto-points N]
//                  [--http-points N] [--connections N] [--window N] [--http-connections N]
//                  [--naive-points N] [--registrations N] [--search-repeat N]
//                  [--node-binary CAIRN] [--results FILE | --no-results]

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "bench/bench_support.h"
#include "cairn/client.h"
#include "runtime/messages/registry.h"
#include "runtime/wire.h"
#include "storage/kv_store.h"
#include "storage/node_identity.h"
#include "storage/registry_store.h"

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kGoalPointsPerSecond = 200e3;
constexpr double kGoalRegisterP99Ms = 10.0;
constexpr double kGoalSearchMs = 50.0;
constexpr size_t kBatchPoints = 1000;  // MLflow's log-batch limit
constexpr size_t kMetricKeys = 10;     // points of a batch spread over this many keys
constexpr std::chrono::seconds kCallTimeout{60};

struct BenchOptions {
  size_t runs = 100000;
  size_t versions = 10000;
  size_t fill_seconds = 60;       // budget for filling the runs; fewer runs when it runs out
  size_t proto_points = 2000000;  // points through registry.log_batch
  size_t http_points = 1000000;   // points through POST runs/log-batch
  size_t connections = 4;         // protocol connections
  size_t window = 8;              // log_batch requests in flight per protocol connection
  size_t http_connections = 8;    // keep-alive HTTP connections, one request in flight each
  size_t naive_points = 2000;     // synced RocksDB puts of the naive baseline
  size_t registrations = 2000;    // sequential create_version calls
  size_t search_repeat = 20;      // timed calls per search figure
  std::string results = std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md";
  std::string node_binary = CAIRN_BINARY;
};

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions o;
  auto count = [&](int& i, const char* flag) -> size_t {
    if (i + 1 >= argc) die(std::string(flag) + " needs a value");
    char* end = nullptr;
    unsigned long long value = std::strtoull(argv[++i], &end, 10);
    if (*end != '\0' || value == 0) die(std::string(flag) + ": expected a positive integer, got \"" + argv[i] + "\"");
    return static_cast<size_t>(value);
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--runs") o.runs = count(i, "--runs");
    else if (arg == "--versions") o.versions = count(i, "--versions");
    else if (arg == "--fill-seconds") o.fill_seconds = count(i, "--fill-seconds");
    else if (arg == "--proto-points") o.proto_points = count(i, "--proto-points");
    else if (arg == "--http-points") o.http_points = count(i, "--http-points");
    else if (arg == "--connections") o.connections = count(i, "--connections");
    else if (arg == "--window") o.window = count(i, "--window");
    else if (arg == "--http-connections") o.http_connections = count(i, "--http-connections");
    else if (arg == "--naive-points") o.naive_points = count(i, "--naive-points");
    else if (arg == "--registrations") o.registrations = count(i, "--registrations");
    else if (arg == "--search-repeat") o.search_repeat = count(i, "--search-repeat");
    else if (arg == "--results") {
      if (i + 1 >= argc) die("--results needs a file");
      o.results = argv[++i];
    } else if (arg == "--node-binary") {
      if (i + 1 >= argc) die("--node-binary needs a file");
      o.node_binary = argv[++i];
    } else if (arg == "--no-results") {
      o.results.clear();
    } else {
      die("unknown argument \"" + arg + "\" (see the comment at the top of bench/registry_bench.cc)");
    }
  }
  return o;
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }




// ---- phase 0: the fixture, written straight into the data dir ----

struct FillResult {
  size_t runs = 0;
  size_t versions = 0;
  double run_seconds = 0;
  double version_seconds = 0;
  std::string experiment_id;
};

FillResult fill_store(const std::string& data_dir, const BenchOptions& o) {
  FillResult r;
  std::vector<std::string> families = storage::registry_families();
  families.emplace_back(storage::kNodeFamily);
  auto kv = take(storage::open_rocks_store({data_dir + "/db", families}), "open fixture store");
  auto store = take(storage::RegistryStore::open(*kv, storage::RegistryStoreOptions{false}), "open RegistryStore");
  msg::CreateExperimentRequest exp;
  exp.name = "bench-scale";
  r.experiment_id = take(store->create_experiment(exp, unix_ms()), "create_experiment").experiment_id;

  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> loss(0.0, 3.0);  // about half the runs match loss < 1.5
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(o.fill_seconds);
  const int64_t t0 = unix_ms() - 86400000;
  storage::LogBatchGroup group;
  for (size_t i = 0; i < o.runs; ++i) {
    if ((i & 1023) == 0 && Clock::now() > deadline) break;
    msg::CreateRunRequest cr;
    cr.experiment_id = r.experiment_id;
    cr.run_name = "run-" + std::to_string(i);
    cr.start_time = t0 + static_cast<int64_t>(i);
    auto run = take(store->create_run(cr, unix_ms()), "create_run");
    msg::LogBatchRequest lb;
    lb.run_id = run.info.run_id;
    lb.metrics = {{"loss", loss(rng), cr.start_time, 1}, {"accuracy", 1.0 - loss(rng) / 3.0, cr.start_time, 1},
                  {"lr_final", 1e-5, cr.start_time, 1}};
    lb.params = {{"lr", (i % 2) ? "3e-4" : "1e-3"}, {"batch_size", std::to_string(16 << (i % 4))},
                 {"seed", std::to_string(i)}};
    check(store->stage_log_batch(lb, group, unix_ms()), "stage_log_batch");
    if (group.requests() >= 512) check(store->commit(group), "commit");
    ++r.runs;
  }
  check(store->commit(group), "commit");
  r.run_seconds = seconds(Clock::now() - start);

  const auto vstart = Clock::now();
  msg::CreateModelRequest cm;
  cm.name = "bench-scale-model";
  take(store->create_model(cm, unix_ms()), "create_model");
  for (size_t i = 0; i < o.versions; ++i) {
    msg::CreateVersionRequest cv;
    cv.name = cm.name;
    cv.source = "file:///models/ckpt-" + std::to_string(i);
    take(store->create_version(cv, unix_ms()), "create_version");
    ++r.versions;
  }
  r.version_seconds = seconds(Clock::now() - vstart);
  store.reset();
  check(kv->flush(), "flush fixture");
  return r;
}

// ---- phase 1: ingest ----

// A batch of 1000 points for `run_id`, request number `n` (steps distinct across requests, so
// no point deduplicates another).
msg::LogBatchRequest make_batch(const std::string& run_id, size_t n, int64_t t0) {
  msg::LogBatchRequest lb;
  lb.run_id = run_id;
  lb.metrics.reserve(kBatchPoints);
  const size_t per_key = kBatchPoints / kMetricKeys;
  for (size_t k = 0; k < kMetricKeys; ++k) {
    for (size_t j = 0; j < per_key; ++j) {
      int64_t step = static_cast<int64_t>(n * per_key + j);
      lb.metrics.push_back({"metric_" + std::to_string(k), 1.0 / static_cast<double>(step + 1), t0 + step, step});
    }
  }
  return lb;
}

std::string batch_json(const msg::LogBatchRequest& lb) {
  std::string out;
  out.reserve(lb.metrics.size() * 80 + 64);
  out += "{\"run_id\":\"" + lb.run_id + "\",\"metrics\":[";
  char buf[160];
  for (size_t i = 0; i < lb.metrics.size(); ++i) {
    const auto& m = lb.metrics[i];
    int n = std::snprintf(buf, sizeof buf, "%s{\"key\":\"%s\",\"value\":%.17g,\"timestamp\":%lld,\"step\":%lld}",
                          i ? "," : "", m.key.c_str(), m.value, static_cast<long long>(m.timestamp),
                          static_cast<long long>(m.step));
    out.append(buf, static_cast<size_t>(n));
  }
  out += "]}";
  return out;
}

std::string create_run(Client& client, const std::string& experiment_id, const std::string& name) {
  msg::CreateRunRequest cr;
  cr.experiment_id = experiment_id;
  cr.run_name = name;
  return take(client.call_as<msg::RunReply>(msg::kCreateRun, cr), "registry.create_run").run.info.run_id;
}

// The points stored for one metric of a run, counted page by page: proof that what was
// acknowledged was written.
size_t count_points(Client& client, const std::string& run_id, const std::string& key) {
  msg::GetMetricHistoryRequest req;
  req.run_id = run_id;
  req.metric_key = key;
  size_t total = 0;
  while (true) {
    auto page = take(client.call_as<msg::MetricHistoryReply>(msg::kGetMetricHistory, req, kCallTimeout),
                     "registry.get_metric_history");
    total += page.metrics.size();
    if (page.next_page_token.empty()) return total;
    req.page_token = page.next_page_token;
  }
}

void verify_points(Client& client, const std::string& run_id, size_t requests, const std::string& what) {
  const size_t expected = requests * (kBatchPoints / kMetricKeys);
  const size_t got = count_points(client, run_id, "metric_0");
  if (got != expected) {
    die(what + ": run " + run_id + " holds " + std::to_string(got) + " points of metric_0, expected " +
        std::to_string(expected));
  }
}

// Points/s through registry.log_batch: o.connections clients, o.window requests in flight each.
double ingest_protocol(const std::string& address, const std::string& token, const std::string& experiment_id,
                       const BenchOptions& o, size_t& points_done) {
  const size_t requests = std::max<size_t>(1, o.proto_points / kBatchPoints);
  const size_t per_conn = (requests + o.connections - 1) / o.connections;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::string> run_ids;
  std::vector<std::vector<std::string>> bodies(o.connections);
  const int64_t t0 = unix_ms();
  for (size_t c = 0; c < o.connections; ++c) {
    ClientOptions co;
    co.address = address;
    co.token = token;
    co.call_timeout = kCallTimeout;
    clients.push_back(take(Client::connect(co), "connect"));
    std::string run_id = create_run(*clients[c], experiment_id, "ingest-proto-" + std::to_string(c));
    run_ids.push_back(run_id);
    for (size_t n = 0; n < per_conn; ++n) bodies[c].push_back(wire::encode(make_batch(run_id, n, t0)));
  }
  std::atomic<size_t> failures{0};
  std::string first_error;
  std::mutex error_mutex;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (size_t c = 0; c < o.connections; ++c) {
    threads.emplace_back([&, c] {
      std::mutex m;
      std::condition_variable cv;
      size_t in_flight = 0;
      for (auto& body : bodies[c]) {
        {
          std::unique_lock<std::mutex> lock(m);
          cv.wait(lock, [&] { return in_flight < o.window; });
          ++in_flight;
        }
        clients[c]->call_async(msg::kLogBatch, std::move(body), [&](Result<std::string> reply) {
          if (!reply.ok()) {
            if (failures.fetch_add(1) == 0) {
              std::lock_guard<std::mutex> lock(error_mutex);
              first_error = reply.status().to_string();
            }
          }
          std::lock_guard<std::mutex> lock(m);
          --in_flight;
          cv.notify_one();
        });
      }
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return in_flight == 0; });
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = seconds(Clock::now() - start);
  if (failures.load() > 0) die("registry.log_batch failed " + std::to_string(failures.load()) + " times: " + first_error);
  for (size_t c = 0; c < o.connections; ++c) verify_points(*clients[c], run_ids[c], per_conn, "protocol ingest");
  points_done = per_conn * o.connections * kBatchPoints;
  return static_cast<double>(points_done) / elapsed;
}

// A blocking keep-alive HTTP/1.1 connection.
class HttpConnection {
 public:
  HttpConnection(const std::string& host_port, std::string token) : token_(std::move(token)) {
    auto colon = host_port.rfind(':');
    host_ = host_port.substr(0, colon);
    uint16_t port = static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1)));
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, host_.c_str(), &addr.sin_addr) != 1) die("not an IPv4 address: " + host_);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("HTTP connect failed");
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    host_ = host_port;
  }
  ~HttpConnection() { ::close(fd_); }

  // POSTs `body` to `path`; returns the status code and puts the response body in `response`.
  int post(const std::string& path, const std::string& body, std::string& response) {
    std::string head = "POST " + path + " HTTP/1.1\r\nHost: " + host_ + "\r\nAuthorization: Bearer " + token_ +
                       "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: keep-alive\r\n\r\n";
    send_all(head);
    send_all(body);
    // Headers.
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) fill();
    std::string headers = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    int status = std::atoi(headers.c_str() + headers.find(' ') + 1);
    std::string lower = headers;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
    auto cl = lower.find("content-length:");
    if (cl != std::string::npos) {
      size_t length = std::strtoull(lower.c_str() + cl + 15, nullptr, 10);
      while (buffer_.size() < length) fill();
      response = buffer_.substr(0, length);
      buffer_.erase(0, length);
    } else if (lower.find("transfer-encoding: chunked") != std::string::npos) {
      response.clear();
      while (true) {
        size_t line_end;
        while ((line_end = buffer_.find("\r\n")) == std::string::npos) fill();
        size_t size = std::strtoull(buffer_.c_str(), nullptr, 16);
        buffer_.erase(0, line_end + 2);
        while (buffer_.size() < size + 2) fill();
        response += buffer_.substr(0, size);
        buffer_.erase(0, size + 2);
        if (size == 0) break;
      }
    } else {
      die("HTTP response without Content-Length or chunked encoding: " + headers);
    }
    return status;
  }

 private:
  void send_all(const std::string& data) {
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      ssize_t n = ::send(fd_, p, left, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die(std::string("HTTP send failed: ") + std::strerror(errno));
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  void fill() {
    char chunk[65536];
    while (true) {
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("HTTP connection closed by the node");
      buffer_.append(chunk, static_cast<size_t>(n));
      return;
    }
  }
  int fd_ = -1;
  std::string host_;
  std::string token_;
  std::string buffer_;
};

double ingest_http(const std::string& http, Client& client, const std::string& token, const std::string& experiment_id,
                   const BenchOptions& o, size_t& points_done) {
  const size_t requests = std::max<size_t>(1, o.http_points / kBatchPoints);
  const size_t per_conn = (requests + o.http_connections - 1) / o.http_connections;
  const int64_t t0 = unix_ms();
  std::vector<std::vector<std::string>> bodies(o.http_connections);
  std::vector<std::unique_ptr<HttpConnection>> conns;
  std::vector<std::string> run_ids;
  for (size_t c = 0; c < o.http_connections; ++c) {
    std::string run_id = create_run(client, experiment_id, "ingest-http-" + std::to_string(c));
    run_ids.push_back(run_id);
    for (size_t n = 0; n < per_conn; ++n) bodies[c].push_back(batch_json(make_batch(run_id, n, t0)));
    conns.push_back(std::make_unique<HttpConnection>(http, token));
  }
  std::atomic<size_t> failures{0};
  std::string first_error;
  std::mutex error_mutex;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (size_t c = 0; c < o.http_connections; ++c) {
    threads.emplace_back([&, c] {
      std::string response;
      for (const auto& body : bodies[c]) {
        int status = conns[c]->post("/api/2.0/mlflow/runs/log-batch", body, response);
        if (status != 200 && failures.fetch_add(1) == 0) {
          std::lock_guard<std::mutex> lock(error_mutex);
          first_error = std::to_string(status) + " " + response.substr(0, 300);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = seconds(Clock::now() - start);
  if (failures.load() > 0) die("HTTP log-batch failed " + std::to_string(failures.load()) + " times: " + first_error);
  for (size_t c = 0; c < o.http_connections; ++c) verify_points(client, run_ids[c], per_conn, "HTTP ingest");
  points_done = per_conn * o.http_connections * kBatchPoints;
  return static_cast<double>(points_done) / elapsed;
}

// The naive store: each point its own synced put.
double ingest_naive(const std::string& dir, size_t points) {
  auto kv = take(storage::open_rocks_store({dir, {"metrics"}}), "open naive store");
  auto batch = make_batch("naive-run", 0, unix_ms());
  storage::WriteOptions sync;
  sync.sync = true;
  const auto start = Clock::now();
  for (size_t i = 0; i < points; ++i) {
    auto& m = batch.metrics[i % batch.metrics.size()];
    m.step = static_cast<int64_t>(i);
    std::string key = "naive-run/" + m.key + "/" + std::to_string(i);
    check(kv->put("metrics", key, wire::encode(m), sync), "naive put");
  }
  return static_cast<double>(points) / seconds(Clock::now() - start);
}

// ---- phases 2 and 3: latencies ----

template <class R, class Q>
R timed_call(Client& client, std::string_view op, const Q& request, LatencySamples* samples) {
  const auto start = Clock::now();
  auto reply = client.call_as<R>(op, request, kCallTimeout);
  if (samples != nullptr) samples->add(Clock::now() - start);
  return take(std::move(reply), std::string(op));
}

std::string ms(double us) { return fixed(us / 1000.0, 2); }
const char* verdict(bool met) { return met ? "met" : "NOT met"; }

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) {
  using namespace cairn;
  using namespace cairn::bench;
  ::signal(SIGPIPE, SIG_IGN);
  const BenchOptions o = parse_args(argc, argv);
  const MachineInfo machine = describe_machine();

  char dir_template[] = "/tmp/cairn-rbench-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) die("mkdtemp failed");
  const std::string root = dir_template;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{root};

  // Phase 0: the fixture, before the node opens the data dir.
  std::cerr << "registry_bench: filling " << o.runs << " runs (at most " << o.fill_seconds << " s) and " << o.versions
            << " versions...\n";
  std::filesystem::create_directories(root + "/node");
  const FillResult fill = fill_store(root + "/node", o);
  std::cerr << "registry_bench: filled " << fill.runs << " runs in " << fixed(fill.run_seconds, 1) << " s, "
            << fill.versions << " versions in " << fixed(fill.version_seconds, 1) << " s\n";

  // The naive baseline, before the node runs, on its own RocksDB.
  std::cerr << "registry_bench: naive baseline, " << o.naive_points << " synced puts...\n";
  const double naive = ingest_naive(root + "/naive", o.naive_points);

  NodeOptions node_options;
  node_options.binary = o.node_binary;
  node_options.data_dir = root + "/node";
  node_options.http = true;
  node_options.ready_timeout = std::chrono::seconds(120);  // a big store takes a while to open
  auto node = take(NodeProcess::start(node_options), "start the node");
  const std::string token = node->token();
  std::cerr << "registry_bench: node up, protocol " << node->address() << ", http " << node->http_address() << "\n";
  ClientOptions co;
  co.address = node->address();
  co.token = token;
  co.call_timeout = kCallTimeout;
  auto client = take(Client::connect(co), "connect");

  msg::CreateExperimentRequest ce;
  ce.name = "bench-ingest";
  const std::string ingest_exp =
      take(client->call_as<msg::CreateExperimentReply>(msg::kCreateExperiment, ce), "create_experiment").experiment_id;

  // Phase 1.
  std::cerr << "registry_bench: protocol ingest...\n";
  size_t proto_points = 0, http_points = 0;
  const double proto = ingest_protocol(node->address(), token, ingest_exp, o, proto_points);
  std::cerr << "registry_bench: HTTP ingest...\n";
  const double http = ingest_http(node->http_address(), *client, token, ingest_exp, o, http_points);

  // Phase 2.
  std::cerr << "registry_bench: version registration...\n";
  msg::CreateModelRequest cm;
  cm.name = "bench-register";
  take(client->call_as<msg::ModelReply>(msg::kCreateModel, cm), "create_model");
  LatencySamples reg(o.registrations);
  for (size_t i = 0; i < o.registrations + 50; ++i) {
    msg::CreateVersionRequest cv;
    cv.name = cm.name;
    cv.source = "file:///models/reg-" + std::to_string(i);
    cv.description = "bench";
    timed_call<msg::VersionReply>(*client, msg::kCreateVersion, cv, i < 50 ? nullptr : &reg);
  }

  // Phase 3.
  std::cerr << "registry_bench: searches...\n";
  msg::SearchRunsRequest sr;
  sr.experiment_ids = {fill.experiment_id};
  sr.filter = "metrics.loss < 1.5";
  sr.max_results = 100;
  LatencySamples runs_search(o.search_repeat);
  auto cold_start = Clock::now();
  auto first_runs = timed_call<msg::SearchRunsReply>(*client, msg::kSearchRuns, sr, nullptr);
  const double runs_cold_us = std::chrono::duration<double, std::micro>(Clock::now() - cold_start).count();
  for (size_t i = 0; i < o.search_repeat; ++i) timed_call<msg::SearchRunsReply>(*client, msg::kSearchRuns, sr, &runs_search);

  // Informational (no goal): the same search sorted on the metric, which cannot be read in key
  // order and so examines every run of the experiment.
  msg::SearchRunsRequest sorted = sr;
  sorted.order_by = {"metrics.loss ASC"};
  LatencySamples sorted_search(5);
  for (size_t i = 0; i < 5; ++i) timed_call<msg::SearchRunsReply>(*client, msg::kSearchRuns, sorted, &sorted_search);

  msg::SearchVersionsRequest sv;
  sv.name = "bench-scale-model";
  sv.max_results = 100;
  LatencySamples versions_search(o.search_repeat);
  cold_start = Clock::now();
  auto first_versions = timed_call<msg::SearchVersionsReply>(*client, msg::kSearchVersions, sv, nullptr);
  const double versions_cold_us = std::chrono::duration<double, std::micro>(Clock::now() - cold_start).count();
  for (size_t i = 0; i < o.search_repeat; ++i) {
    timed_call<msg::SearchVersionsReply>(*client, msg::kSearchVersions, sv, &versions_search);
  }
  client->close();

  // Report.
  const double reg_p50 = reg.percentile_us(50), reg_p99 = reg.percentile_us(99);
  const double rs_p50 = runs_search.percentile_us(50), rs_p99 = runs_search.percentile_us(99);
  const double vs_p50 = versions_search.percentile_us(50), vs_p99 = versions_search.percentile_us(99);
  std::ostringstream t;
  t << "| Figure | Result | Goal |\n| --- | --- | --- |\n";
  t << "| log_batch over the protocol (" << o.connections << " conns x " << o.window << " in flight, "
    << proto_points << " points) | " << fixed(proto, 0) << " points/s (" << fixed(proto / naive, 0)
    << "x naive) | >= 200k: " << verdict(proto >= kGoalPointsPerSecond) << " |\n";
  t << "| log-batch over HTTP (" << o.http_connections << " keep-alive conns, " << http_points << " points) | "
    << fixed(http, 0) << " points/s (" << fixed(http / naive, 0) << "x naive) | >= 200k: "
    << verdict(http >= kGoalPointsPerSecond) << " |\n";
  t << "| naive: one synced RocksDB put per point (" << o.naive_points << " points, extrapolated) | " << fixed(naive, 0)
    << " points/s | baseline |\n";
  t << "| create_version, metadata only, sequential (" << o.registrations << ") | p50 " << ms(reg_p50) << " ms, p99 "
    << ms(reg_p99) << " ms | p99 < 10 ms: " << verdict(reg_p99 / 1000.0 < kGoalRegisterP99Ms) << " |\n";
  t << "| search_runs first page (100 of " << fill.runs << " runs, `" << sr.filter << "`, " << first_runs.runs.size()
    << " returned; " << o.search_repeat << " calls) | p50 " << ms(rs_p50) << " ms, p99 " << ms(rs_p99)
    << " ms (first call " << ms(runs_cold_us) << " ms) | < 50 ms: " << verdict(rs_p99 / 1000.0 < kGoalSearchMs)
    << " |\n";
  t << "| search_runs first page as above, `order_by metrics.loss ASC` (5 calls; informational) | p50 "
    << ms(sorted_search.percentile_us(50)) << " ms, max " << ms(sorted_search.percentile_us(100)) << " ms | no goal |\n";
  t << "| search_versions first page (100 of " << fill.versions << " versions, " << first_versions.model_versions.size()
    << " returned; " << o.search_repeat << " calls) | p50 " << ms(vs_p50) << " ms, p99 " << ms(vs_p99)
    << " ms (first call " << ms(versions_cold_us) << " ms) | < 50 ms: " << verdict(vs_p99 / 1000.0 < kGoalSearchMs)
    << " |\n";
  std::cout << t.str();

  if (!o.results.empty()) {
    std::ostringstream s;
    s << "\n## registry_bench (issue #3): " << machine.date_utc << "\n\n";
    s << machine_summary(machine) << ".\n";
    s << "Fixture: " << fill.runs << " runs (3 metrics, 3 params each; of " << o.runs << " asked, " << o.fill_seconds
      << " s budget) written in " << fixed(fill.run_seconds, 1) << " s and " << fill.versions
      << " versions of one model in " << fixed(fill.version_seconds, 1)
      << " s, straight into the data dir (RegistryStore, sync=false) before the node started.\n\n";
    s << t.str();
    append_section(o.results, s.str());
  }
  return 0;
}
