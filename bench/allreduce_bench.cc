// allreduce_bench: Cairn's TCP ring all-reduce between two processes on loopback (issue #5), against
// torch.distributed's gloo all_reduce (bench/allreduce/gloo_peer.py, Debian's python3-torch) and
// the loopback TCP bandwidth that iperf3 measures, all in the same run.
//
// Each side all-reduces the same float32 buffer (64 MiB by default) between 2 processes: warm-up
// iterations, then timed ones, each after a barrier. Algorithm bandwidth = buffer bytes / time
// (nccl-tests' "algbw"; for 2 ranks it equals the bus bandwidth). Prints a table with the ratios and
// appends a dated section to bench/RESULTS.md.
//
// Wall times on this shared 2-core machine swing with whatever else runs (2x within a minute), so
// the two all-reduces run in many short alternating rounds (--rounds) and their samples are
// pooled; the table also gives the median of the per-round ratios (each round's cairn median over
// the gloo median of the round right after it), which a load change between rounds moves least.
// Each side also reports the CPU time (user + system, both ranks) that one all-reduce costs, which
// the load barely moves.
//
// Goals (issue #5): at least as fast as gloo, and at least half of iperf3's loopback bandwidth.
// (A 2-rank ring moves the whole buffer in both directions at once over the same loopback that
// iperf3 uses for one direction, so half of iperf3 is roughly the ceiling on a 2-core machine.)
//
//   allreduce_bench [--mib N] [--rounds N] [--iterations N] [--warmup N] [--chunk-bytes N] [--socket-buffer N]
//                   [--no-gloo] [--no-iperf] [--results FILE | --no-results]

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_support.h"
#include "cluster/collective.h"

namespace cairn::bench {
namespace {

struct Options {
  size_t mib = 64;
  int rounds = 6;  // of each side, alternating
  int iterations = 6;  // timed all-reduces per round
  int warmup = 2;
  size_t chunk_bytes = RingOptions{}.chunk_bytes;
  int socket_buffer = RingOptions{}.socket_buffer_bytes;
  bool gloo = true;
  bool iperf = true;
  std::string results = std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--mib") o.mib = std::stoul(value());
    else if (arg == "--iterations") o.iterations = std::stoi(value());
    else if (arg == "--rounds") o.rounds = std::stoi(value());
    else if (arg == "--warmup") o.warmup = std::stoi(value());
    else if (arg == "--chunk-bytes") o.chunk_bytes = std::stoul(value());
    else if (arg == "--socket-buffer") o.socket_buffer = std::stoi(value());
    else if (arg == "--no-gloo") o.gloo = false;
    else if (arg == "--no-iperf") o.iperf = false;
    else if (arg == "--results") o.results = value();
    else if (arg == "--no-results") o.results.clear();
    else die("unknown argument " + arg + " (see the top of bench/allreduce_bench.cc)");
  }
  if (o.iterations < 1 || o.mib < 1 || o.rounds < 1) die("--iterations, --rounds and --mib must be positive");
  return o;
}

// Wall times of the timed iterations (rank 0's view) and the CPU time both ranks spent in them.
struct Timings {
  size_t bytes = 0;
  std::vector<double> seconds;
  double cpu_seconds = 0;
  void add(const Timings& round) {
    bytes = round.bytes;
    seconds.insert(seconds.end(), round.seconds.begin(), round.seconds.end());
    cpu_seconds += round.cpu_seconds;
  }
  double cpu_ms_per_iteration() const { return seconds.empty() ? 0 : cpu_seconds * 1e3 / seconds.size(); }
  double median() const {
    std::vector<double> s = seconds;
    std::sort(s.begin(), s.end());
    return s.empty() ? 0 : s[s.size() / 2];
  }
  double best() const { return seconds.empty() ? 0 : *std::min_element(seconds.begin(), seconds.end()); }
  double median_gbs() const { return median() > 0 ? bytes / median() / 1e9 : 0; }
  double best_gbs() const { return best() > 0 ? bytes / best() / 1e9 : 0; }
};

double cpu_now() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// One rank's loop; rank 0 returns the timings (with both ranks' CPU time). The buffer starts small
// so that the repeated sums stay finite.
Timings run_rank(Collective& ring, const Options& o) {
  Timings t;
  std::vector<float> data(o.mib * (1u << 20) / sizeof(float), 1e-3f);
  t.bytes = data.size() * sizeof(float);
  double cpu_start = 0;
  for (int i = 0; i < o.warmup + o.iterations; ++i) {
    check(ring.barrier(), "barrier");
    if (i == o.warmup) cpu_start = cpu_now();
    auto start = std::chrono::steady_clock::now();
    check(ring.all_reduce_sum(data.data(), data.size()), "all_reduce_sum");
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (i >= o.warmup) t.seconds.push_back(took.count());
  }
  double cpu[2] = {0, 0};
  cpu[ring.rank()] = cpu_now() - cpu_start;
  check(ring.broadcast(&cpu[1], sizeof(double), 1), "broadcast of rank 1's CPU time");
  t.cpu_seconds = cpu[0] + cpu[1];
  check(ring.barrier(), "final barrier");
  return t;
}

// Rank 1 in a forked child, rank 0 here, over a fresh ring on 127.0.0.1.
Timings measure_cairn(const Options& o) {
  std::vector<std::unique_ptr<RingEndpoint>> endpoints;
  RingOptions ring;
  ring.world_size = 2;
  ring.secret = "allreduce_bench";
  ring.chunk_bytes = o.chunk_bytes;
  ring.socket_buffer_bytes = o.socket_buffer;
  for (int r = 0; r < 2; ++r) {
    auto endpoint = take(RingEndpoint::listen({"127.0.0.1", 0}), "listen");
    ring.peers.push_back(endpoint->bound());
    endpoints.push_back(std::move(endpoint));
  }
  std::cout.flush();
  pid_t child = ::fork();
  if (child < 0) die("fork failed");
  const int rank = child == 0 ? 1 : 0;
  endpoints[1 - rank].reset();
  ring.rank = rank;
  auto collective = take(endpoints[rank]->connect(ring), "rank " + std::to_string(rank) + " connect");
  Timings t = run_rank(*collective, o);
  if (child == 0) _exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("rank 1 failed");
  return t;
}

// Runs `command` through the shell and returns its standard output.
std::string capture(const std::string& command, int& exit_code) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) die("popen failed: " + command);
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  int status = ::pclose(pipe);
  exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::string torch_version;

bool measure_gloo(const Options& o, Timings& t) {
  std::string command = "OPENBLAS_NUM_THREADS=1 /usr/bin/python3 " + std::string(CAIRN_SOURCE_DIR) +
                        "/bench/allreduce/gloo_peer.py --mib " + std::to_string(o.mib) + " --iterations " +
                        std::to_string(o.iterations) + " --warmup " + std::to_string(o.warmup);
  int code = 0;
  std::string out = capture(command, code);
  if (code != 0) {
    std::cerr << "allreduce_bench: gloo peer failed (exit " << code << "); is python3-torch installed?\n";
    return false;
  }
  auto json = nlohmann::json::parse(out.substr(out.rfind('{')));
  t.bytes = json["bytes"].get<size_t>();
  t.seconds = json["seconds"].get<std::vector<double>>();
  t.cpu_seconds = json["cpu_seconds"].get<double>();
  torch_version = json["torch"].get<std::string>();
  return true;
}

// iperf3's loopback TCP bandwidth, one stream, 3 s.
struct Iperf {
  double bytes_per_second = 0;  // 0 when iperf3 is missing or failed
  double bytes_per_cpu_second = 0;  // over both iperf3 processes' CPU time
};

Iperf measure_iperf() {
  int code = 0;
  std::string version = capture("iperf3 --version 2>/dev/null | head -1", code);
  if (code != 0 || version.empty()) {
    std::cerr << "allreduce_bench: iperf3 not found (apt-get install iperf3)\n";
    return {};
  }
  // A free port: bind one, note it, release it (iperf3 binds it a moment later).
  auto probe = take(RingEndpoint::listen({"127.0.0.1", 0}), "probe port");
  const std::string port = std::to_string(probe->bound().port);
  probe.reset();
  pid_t server = ::fork();
  if (server == 0) {
    std::freopen("/dev/null", "w", stdout);
    ::execlp("iperf3", "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", port.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // The server takes a moment to listen; a refused client is retried (it never reaches the server).
  Iperf result;
  std::string last;
  for (int attempt = 0; attempt < 50 && result.bytes_per_second == 0; ++attempt) {
    std::string out = capture("iperf3 -c 127.0.0.1 -p " + port + " -J -t 3 2>/dev/null", code);
    auto json = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
    const bool measured = code == 0 && json.is_object() && json.contains("end") && json["end"].contains("sum_received") &&
                          json["end"]["sum_received"].contains("bits_per_second");
    if (measured) {
      const auto& received = json["end"]["sum_received"];
      result.bytes_per_second = received["bits_per_second"].get<double>() / 8;
      // cpu_utilization_percent: each side's process CPU time over the test, as % of the wall time.
      const auto& cpu = json["end"]["cpu_utilization_percent"];
      double cpu_seconds = (cpu.value("host_total", 0.0) + cpu.value("remote_total", 0.0)) / 100 *
                           received.value("seconds", 0.0);
      if (cpu_seconds > 0) result.bytes_per_cpu_second = received.value("bytes", 0.0) / cpu_seconds;
    } else {
      last = json.is_object() && json.contains("error") ? json["error"].dump() : out.substr(0, 200);
      ::usleep(100 * 1000);
    }
  }
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
  if (result.bytes_per_second == 0) std::cerr << "allreduce_bench: iperf3 client failed: " << last << "\n";
  return result;
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) {
  using namespace cairn::bench;
  Options o = parse(argc, argv);
  MachineInfo machine = describe_machine();

  // Alternating rounds (this process starts no thread of its own, so forking is safe).
  Timings cairn_t, gloo_t;
  std::vector<double> round_ratios;  // per round: cairn median GB/s over gloo's
  bool have_gloo = o.gloo;
  for (int round = 0; round < o.rounds; ++round) {
    Timings c = measure_cairn(o);
    cairn_t.add(c);
    Timings g;
    if (have_gloo && (have_gloo = measure_gloo(o, g))) {
      gloo_t.add(g);
      round_ratios.push_back(c.median_gbs() / g.median_gbs());
    }
  }
  std::sort(round_ratios.begin(), round_ratios.end());
  const Iperf iperf = o.iperf ? measure_iperf() : Iperf{};
  const double iperf_bps = iperf.bytes_per_second;

  auto ratio = [](double a, double b) { return b > 0 ? fixed(a / b, 2) + "x" : std::string("-"); };
  std::ostringstream t;
  t << "| all-reduce of " << o.mib << " MiB float32, 2 processes | median GB/s | best GB/s | median ms | CPU ms per all-reduce (both ranks) | cairn median is |\n";
  t << "| --- | --- | --- | --- | --- | --- |\n";
  t << "| cairn ring (TCP, piece " << o.chunk_bytes / 1024 << " KiB) | " << fixed(cairn_t.median_gbs(), 2) << " | "
    << fixed(cairn_t.best_gbs(), 2) << " | " << fixed(cairn_t.median() * 1e3, 1) << " | "
    << fixed(cairn_t.cpu_ms_per_iteration(), 1) << " | 1.00x |\n";
  if (have_gloo) {
    t << "| torch " << torch_version << " gloo all_reduce | " << fixed(gloo_t.median_gbs(), 2) << " | "
      << fixed(gloo_t.best_gbs(), 2) << " | " << fixed(gloo_t.median() * 1e3, 1) << " | "
      << fixed(gloo_t.cpu_ms_per_iteration(), 1) << " | " << ratio(cairn_t.median_gbs(), gloo_t.median_gbs())
      << " |\n";
  }
  if (iperf_bps > 0) {
    t << "| iperf3 loopback TCP, 1 stream, 3 s | " << fixed(iperf_bps / 1e9, 2) << " | | | | "
      << ratio(cairn_t.median_gbs(), iperf_bps / 1e9) << " |\n";
  }
  // What a wall clock shared with other work cannot show: the CPU each side burns per byte. A 2-rank
  // ring sends the whole buffer from each rank, so an all-reduce moves 2x its bytes over loopback.
  if (iperf.bytes_per_cpu_second > 0 && cairn_t.cpu_seconds > 0) {
    double cairn_per_cpu = 2.0 * cairn_t.bytes * cairn_t.seconds.size() / cairn_t.cpu_seconds;
    t << "\nLoopback bytes moved per CPU-second (user + system of both ends): cairn ring "
      << fixed(cairn_per_cpu / 1e9, 2) << " GB, iperf3 " << fixed(iperf.bytes_per_cpu_second / 1e9, 2) << " GB ("
      << ratio(cairn_per_cpu, iperf.bytes_per_cpu_second) << ").\n";
  }
  if (have_gloo && !round_ratios.empty()) {
    t << "\nPer-round ratio cairn / gloo (sorted):";
    for (double r : round_ratios) t << " " << fixed(r, 2) << "x";
    t << "; median " << fixed(round_ratios[round_ratios.size() / 2], 2) << "x.\n";
  }
  t << "\n| goal | measured | result |\n| --- | --- | --- |\n";
  if (have_gloo) {
    double r = cairn_t.median_gbs() / gloo_t.median_gbs();
    t << "| cairn >= 1.0x gloo | " << fixed(r, 2) << "x | " << (r >= 1.0 ? "met" : "MISSED") << " |\n";
  }
  if (iperf_bps > 0) {
    double r = cairn_t.median_gbs() / (iperf_bps / 1e9);
    t << "| cairn >= 0.5x iperf3 | " << fixed(r, 2) << "x | " << (r >= 0.5 ? "met" : "MISSED") << " |\n";
  }
  std::cout << t.str();

  if (!o.results.empty()) {
    std::ostringstream s;
    s << "\n## allreduce_bench (issue #5): " << machine.date_utc << "\n\n";
    s << machine_summary(machine) << ". " << o.rounds << " alternating rounds per side of "
      << o.warmup << " warm-up and " << o.iterations << " timed all-reduces, each after a barrier, samples pooled; "
      << "GB/s = buffer bytes / time (algorithm bandwidth).\n\n";
    s << t.str();
    append_section(o.results, s.str());
  }
  return 0;
}
