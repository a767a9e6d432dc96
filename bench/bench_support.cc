#include "bench/bench_support.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kStopGrace{10};
constexpr std::string_view kReadyPrefix = "cairn node ready ";

Status errno_status(const std::string& what) {
  return Status(Code::io_error, what + ": " + std::strerror(errno));
}

std::string random_token() {
  std::random_device device;
  std::uniform_int_distribution<int> digit(0, 15);
  std::string token;
  for (int i = 0; i < 48; ++i) token += "0123456789abcdef"[digit(device)];
  return token;
}

// The value of `key=` in a space-separated line, or "".
std::string line_field(const std::string& line, const std::string& key) {
  auto at = line.find(" " + key + "=");
  if (at == std::string::npos) return {};
  at += key.size() + 2;
  return line.substr(at, line.find(' ', at) - at);
}

// Reads one line from `fd` before `deadline`; false on EOF, error or timeout.
bool read_line(int fd, Clock::time_point deadline, std::string& line) {
  line.clear();
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line += c;
  }
}

void stop_child(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  auto deadline = Clock::now() + kStopGrace;
  while (Clock::now() < deadline) {
    pid_t done = ::waitpid(pid, nullptr, WNOHANG);
    if (done == pid || (done < 0 && errno != EINTR)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "bench: node %d did not stop within %lld s; killing it\n", static_cast<int>(pid),
               static_cast<long long>(kStopGrace.count()));
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace

Result<std::unique_ptr<NodeProcess>> NodeProcess::start(const NodeOptions& options) {
  std::unique_ptr<NodeProcess> node(new NodeProcess());
  char dir_template[] = "/tmp/cairn-bench-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return errno_status("mkdtemp");
  node->data_dir_ = dir_template;
  node->token_ = random_token();

  const std::string token_file = node->data_dir_ + "/tokens";
  const std::string node_dir = options.data_dir.empty() ? node->data_dir_ + "/node" : options.data_dir;
  {
    std::ofstream out(token_file);
    out << "admin " << node->token_ << "\n";
    if (!out) return Status(Code::io_error, "cannot write " + token_file);
  }
  ::chmod(token_file.c_str(), 0600);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return errno_status("pipe");
  std::vector<std::string> args = {options.binary, "node",
                                   "--listen", "127.0.0.1:0",
                                   "--http", options.http ? "127.0.0.1:0" : "off",
                                   "--data-dir", node_dir,
                                   "--token-file", token_file,
                                   "--log-level", options.log_level};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return errno_status("fork");
  }
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "bench: cannot exec %s: %s\n", argv[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  node->pid_ = pid;
  node->stdout_fd_ = fds[0];

  std::string line;
  auto deadline = Clock::now() + options.ready_timeout;
  while (read_line(node->stdout_fd_, deadline, line)) {
    if (line.rfind(kReadyPrefix, 0) != 0) continue;
    node->address_ = line_field(line, "protocol");
    node->http_ = line_field(line, "http");
    break;
  }
  if (node->address_.empty()) {
    return Status(Code::unavailable, options.binary + " node printed no ready line within " +
                                         std::to_string(options.ready_timeout.count()) + " ms");
  }
  return node;
}

NodeProcess::~NodeProcess() {
  stop_child(pid_);
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  if (!data_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(data_dir_, ignored);
  }
}

Result<uint64_t> NodeProcess::status_bytes(const std::string& field) const {
  const std::string path = "/proc/" + std::to_string(pid_) + "/status";
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) != 0) continue;
    std::istringstream fields(line.substr(field.size()));
    uint64_t kib = 0;
    fields >> kib;
    return kib * 1024;
  }
  return Status(Code::io_error, "no " + field + " line in " + path);
}

double LatencySamples::percentile_us(double p) {
  if (samples_.empty()) return 0;
  if (!sorted_) {
    std::sort(samples_.begin(), samples_.end());
    sorted_ = true;
  }
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(samples_.size())));
  rank = std::clamp<size_t>(rank, 1, samples_.size());
  return static_cast<double>(samples_[rank - 1]) / 1000.0;
}

double LatencySamples::mean_us() const {
  if (samples_.empty()) return 0;
  double sum = std::accumulate(samples_.begin(), samples_.end(), 0.0);
  return sum / static_cast<double>(samples_.size()) / 1000.0;
}

MachineInfo describe_machine() {
  MachineInfo info;
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", &utc);
  info.date_utc = date;

  utsname names{};
  if (::uname(&names) == 0) info.kernel = std::string(names.sysname) + " " + names.release + " " + names.machine;

  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    auto colon = line.find(':');
    if (colon != std::string::npos) info.cpu_model = line.substr(line.find_first_not_of(" \t", colon + 1));
    break;
  }
  if (info.cpu_model.empty()) info.cpu_model = "unknown";
  info.cores = std::max(1u, std::thread::hardware_concurrency());
  std::ifstream loadavg("/proc/loadavg");
  std::string one, five, fifteen;
  if (loadavg >> one >> five >> fifteen) info.load = one + " " + five + " " + fifteen;
  return info;
}

Status append_results(const std::string& path, const std::string& header, const std::string& section) {
  std::error_code ec;
  bool exists = std::filesystem::exists(path, ec);
  std::ofstream out(path, std::ios::app);
  if (!out) return Status(Code::io_error, "cannot open " + path + " for appending");
  if (!exists) out << header;
  out << section;
  out.flush();
  if (!out) return Status(Code::io_error, "cannot write " + path);
  return Status();
}

const char* const kResultsHeader =
    "# Benchmark results\n\n"
    "Appended by the benchmark programs in bench/ (run them all with scripts/bench.sh): one dated section\n"
    "per run, newest last. Compare figures within one section rather than across machines.\n";

std::string machine_summary(const MachineInfo& machine) {
  return "Machine: " + machine.cpu_model + ", " + std::to_string(machine.cores) + " cores, " + machine.kernel +
         "; load " + machine.load + " at start; build " + CAIRN_BUILD_TYPE;
}

void append_section(const std::string& path, const std::string& section) {
  check(append_results(path, kResultsHeader, section), "append results");
  std::cerr << program_invocation_short_name << ": appended to " << path << "\n";
}

std::string fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

[[noreturn]] void die(const std::string& message) {
  std::cerr << program_invocation_short_name << ": " << message << "\n";
  std::exit(1);
}

void check(const Status& status, const std::string& what) {
  if (!status.ok()) die(what + ": " + status.to_string());
}

}  // namespace cairn::bench
