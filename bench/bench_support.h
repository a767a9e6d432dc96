// What every Cairn benchmark needs: a real node in a child process, latency summaries, a
// description of the machine, and the dated sections appended to bench/RESULTS.md.
//
// Benchmarks are plain programs (no ctest); they print a table for people and append a markdown
// section so that figures from different days and machines can be compared.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/status.h"

namespace cairn::bench {

struct NodeOptions {
  std::string binary = CAIRN_BINARY;                // the `cairn` to launch
  std::chrono::milliseconds ready_timeout{30000};   // start-up until the ready line
  std::string log_level = "warn";                   // node.log_level; the node logs to stderr
  std::string data_dir;  // the node's data dir; "" = a fresh one, removed with the NodeProcess
  bool http = false;     // also listen for HTTP on a free port (see http_address())
};

// A `cairn node` child process on 127.0.0.1 with a token file holding one admin token and a free
// port; by default a fresh data directory and no HTTP listener. Not copyable; the destructor stops
// the node (SIGTERM, then SIGKILL after 10 s) and removes what it created.
class NodeProcess {
 public:
  // Fails with `unavailable` when the node exits or prints no ready line within ready_timeout, and
  // with `io_error` when the data directory, token file or pipe cannot be made.
  static Result<std::unique_ptr<NodeProcess>> start(const NodeOptions& options);
  ~NodeProcess();
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  const std::string& address() const { return address_; }  // HOST:PORT of the protocol listener
  const std::string& http_address() const { return http_; }  // HOST:PORT of HTTP, "off" without
  const std::string& token() const { return token_; }      // an admin token
  pid_t pid() const { return pid_; }

  // The node's resident set now (VmRSS), its anonymous part (RssAnon: heap, stacks; the rest is
  // mapped files such as shared libraries) and its peak so far (VmHWM), in bytes.
  Result<uint64_t> rss_bytes() const { return status_bytes("VmRSS:"); }
  Result<uint64_t> anon_rss_bytes() const { return status_bytes("RssAnon:"); }
  Result<uint64_t> peak_rss_bytes() const { return status_bytes("VmHWM:"); }

 private:
  NodeProcess() = default;
  // A "<field> N kB" line of /proc/<pid>/status, in bytes.
  Result<uint64_t> status_bytes(const std::string& field) const;

  pid_t pid_ = -1;
  int stdout_fd_ = -1;  // kept open until the node exits, so a late write cannot raise SIGPIPE
  std::string data_dir_;
  std::string address_;
  std::string http_;
  std::string token_;
};

// Round-trip times in nanoseconds; percentiles use the nearest-rank method.
class LatencySamples {
 public:
  explicit LatencySamples(size_t expected) { samples_.reserve(expected); }
  void add(std::chrono::nanoseconds rtt) { samples_.push_back(rtt.count()); }
  size_t size() const { return samples_.size(); }
  // p in [0, 100]. Sorts the samples on first use after an add.
  double percentile_us(double p);
  double mean_us() const;

 private:
  std::vector<int64_t> samples_;
  bool sorted_ = false;
};

struct MachineInfo {
  std::string date_utc;   // "2024-05-01 12:34:56 UTC"
  std::string kernel;     // `uname -srm`
  std::string cpu_model;  // first "model name" of /proc/cpuinfo
  unsigned cores = 0;     // online CPUs
  std::string load;       // 1, 5 and 15 minute load averages (/proc/loadavg): other work skews figures
};
MachineInfo describe_machine();

// Appends `section` to the markdown file at `path`, creating it with `header` first when it does
// not exist. Fails with io_error naming the path.
Status append_results(const std::string& path, const std::string& header, const std::string& section);

// The header a new bench/RESULTS.md starts with.
extern const char* const kResultsHeader;
// "Machine: <cpu>, <n> cores, <kernel>; load <1 5 15> at start; build <type>", without a final
// period: the start of a results section's setup paragraph.
std::string machine_summary(const MachineInfo& machine);
// append_results(path, kResultsHeader, section), then "<program>: appended to <path>" on stderr;
// dies when the file cannot be written.
void append_section(const std::string& path, const std::string& section);

// "12.3" style formatting for tables.
std::string fixed(double value, int decimals);

// Fatal errors of a benchmark program: writes "<program>: <message>" to stderr, where <program>
// is the executable's name (train_bench, ...), and exits with status 1.
[[noreturn]] void die(const std::string& message);

// die("<what>: <status>") unless `status` is ok.
void check(const Status& status, const std::string& what);
template <class T>
void check(const Result<T>& result, const std::string& what) {
  if (!result.ok()) die(what + ": " + result.status().to_string());
}

// The value of `result`, or die("<what>: <status>").
template <class T>
T take(Result<T> result, const std::string& what) {
  check(result, what);
  return std::move(result).value();
}

}  // namespace cairn::bench
