// protocol_bench: how close the Cairn protocol path comes to raw TCP on loopback (issue #2).
//
// In one run it starts a real node, measures
//   - round-trip latency (p50, p99): raw TCP ping-pong (the floor), node.ping (answered on the node's
//     I/O thread) and node.echo (through the echo actor) through the C++ client's blocking call, and
//     node.ping over a bare blocking socket (the node's share, without the client library); every
//     figure takes the same number of round trips after the same warm-up, round by round in turn;
//   - pipelined throughput (req/s): raw TCP with many small messages in flight (the floor), node.ping
//     and node.echo on one connection, node.ping over several connections;
//   - the node's resident memory when idle and after the load,
// prints a table, and appends a dated section to bench/RESULTS.md.
//
// Goals (issue #2): node.ping p50 within 2x of raw TCP; >= 100k node.ping/s on one connection.
// The node inherits the environment, so CAIRN_* settings apply to it (CAIRN_NODE_IO_THREADS=1 ...).
// The machine is shared with whatever else runs: the table records the load average at the start.
//
//   protocol_bench [--round-trips N] [--warmup N] [--rounds N] [--requests N] [--window N]
//                  [--connections N] [--repeat N] [--node-binary CAIRN] [--results FILE | --no-results]

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "bench/bench_support.h"
#include "cairn/client.h"
#include "runtime/config.h"
#include "runtime/protocol.h"

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;

// The goals of issue #2.
constexpr double kGoalPingP50Ratio = 2.0;        // cairn node.ping p50 / raw TCP p50, at most
constexpr double kGoalPipelinedPerSecond = 1e5;  // node.ping/s on one connection, at least

// The size of a node.ping request frame (4-byte length + the 18-byte map of docs/PROTOCOL.md), so
// the raw floor moves as many bytes per message as the client sends.
constexpr size_t kMessageBytes = 22;
// Messages per send() in the batched raw floor, roughly what the Cairn client coalesces under load.
constexpr size_t kRawBatch = 64;
constexpr std::chrono::seconds kSettle{1};             // before reading the idle RSS
constexpr std::chrono::seconds kCallTimeout{30};       // every Cairn call of the bench
constexpr const char* kEchoPayload = "0123456789abcdef";  // node.echo payload: a 16-byte string

struct BenchOptions {
  size_t round_trips = 20000;   // measured round trips per latency figure, over all rounds
  size_t warmup = 2000;         // round trips before measuring, not recorded, over all rounds
  size_t rounds = 5;            // latency rounds; each figure's percentiles are the median per round
  size_t requests = 500000;     // requests per throughput figure
  size_t window = 1024;         // requests in flight per connection
  size_t connections = 8;       // connections of the multi-connection figure
  size_t repeat = 3;            // runs per throughput figure; the median is reported
  std::string results = std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md";  // "" = do not append
  std::string node_binary = CAIRN_BINARY;  // the `cairn` that runs the node (to compare two builds)
};

// One latency round: `count` measured round trips after `warmup` unrecorded ones.
struct RoundTrips {
  size_t count;
  size_t warmup;
};

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions options;
  auto count = [&](int& i, const char* flag) -> size_t {
    if (i + 1 >= argc) die(std::string(flag) + " needs a value");
    char* end = nullptr;
    unsigned long long value = std::strtoull(argv[++i], &end, 10);
    if (*end != '\0' || value == 0) die(std::string(flag) + ": expected a positive integer, got \"" + argv[i] + "\"");
    return static_cast<size_t>(value);
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--round-trips") {
      options.round_trips = count(i, "--round-trips");
    } else if (arg == "--warmup") {
      options.warmup = count(i, "--warmup");
    } else if (arg == "--requests") {
      options.requests = count(i, "--requests");
    } else if (arg == "--window") {
      options.window = count(i, "--window");
    } else if (arg == "--connections") {
      options.connections = count(i, "--connections");
    } else if (arg == "--rounds") {
      options.rounds = count(i, "--rounds");
    } else if (arg == "--repeat") {
      options.repeat = count(i, "--repeat");
    } else if (arg == "--results") {
      if (i + 1 >= argc) die("--results needs a file");
      options.results = argv[++i];
    } else if (arg == "--node-binary") {
      if (i + 1 >= argc) die("--node-binary needs a file");
      options.node_binary = argv[++i];
    } else if (arg == "--no-results") {
      options.results.clear();
    } else {
      die("unknown argument \"" + arg + "\" (see the comment at the top of bench/protocol_bench.cc)");
    }
  }
  return options;
}

// ---- flow control ----

// Bounds the requests in flight on one connection. The issuing thread calls acquire() before each
// request; whichever thread sees a completion calls release(). A blocked issuer is woken once half
// the window has drained, so a full pipeline costs one wake-up per window/2 completions, not one
// per completion (a wake-up per reply would measure futexes, not the protocol).
class Window {
 public:
  explicit Window(int64_t limit) : limit_(limit), resume_at_(limit / 2) {}

  void acquire(int64_t n) {
    if (outstanding_.load(std::memory_order_acquire) + n > limit_) {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return outstanding_.load(std::memory_order_acquire) <= resume_at_; });
    }
    outstanding_.fetch_add(n, std::memory_order_acq_rel);
  }

  void release(int64_t n) {
    int64_t before = outstanding_.fetch_sub(n, std::memory_order_acq_rel);
    int64_t after = before - n;
    if ((before > resume_at_ && after <= resume_at_) || after == 0) {
      std::lock_guard<std::mutex> lock(mutex_);  // pairs with the waiter's check: no lost wake-up
      cv_.notify_all();
    }
  }

  void wait_all() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return outstanding_.load(std::memory_order_acquire) == 0; });
  }

 private:
  // Constant after construction.
  const int64_t limit_;
  const int64_t resume_at_;

  std::atomic<int64_t> outstanding_{0};
  std::mutex mutex_;  // orders waiters' checks against release()'s notify; guards nothing else
  std::condition_variable cv_;
};

// Runs `body(index)` on `threads` threads that start together; returns the elapsed time from the
// start signal until the last one finished.
template <class Body>
std::chrono::nanoseconds run_together(size_t threads, Body body) {
  std::mutex mutex;  // guards go
  std::condition_variable cv;
  bool go = false;
  std::vector<std::thread> workers;
  for (size_t i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, [&] { return go; });
      }
      body(i);
    });
  }
  auto start = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex);
    go = true;
  }
  cv.notify_all();
  for (auto& t : workers) t.join();
  return Clock::now() - start;
}

double per_second(size_t count, std::chrono::nanoseconds elapsed) {
  return static_cast<double>(count) / std::chrono::duration<double>(elapsed).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// The median of `runs` results of `measure()`: one slow run (another process took the CPU) does
// not decide a throughput figure.
template <class Measure>
double median_of(size_t runs, Measure measure) {
  std::vector<double> results;
  for (size_t i = 0; i < runs; ++i) results.push_back(measure());
  return median(std::move(results));
}

// ---- the raw TCP floor ----

// A blocking socket descriptor; closes on destruction.
class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&&) = delete;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

void set_nodelay(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("setsockopt(TCP_NODELAY) failed");
}

void send_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die(std::string("raw TCP send failed: ") + std::strerror(errno));
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// A blocking TCP connection to host:port (an IPv4 literal) with TCP_NODELAY.
Socket connect_tcp(const std::string& host, uint16_t port) {
  Socket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) die("not an IPv4 address: " + host);
  if (::connect(socket.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die("connect() to " + host + ":" + std::to_string(port) + " failed: " + std::strerror(errno));
  }
  set_nodelay(socket.fd());
  return socket;
}

// Reads up to `size` bytes; returns 0 at EOF.
size_t recv_some(int fd, char* data, size_t size) {
  while (true) {
    ssize_t n = ::recv(fd, data, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(std::string("raw TCP recv failed: ") + std::strerror(errno));
    return static_cast<size_t>(n);
  }
}

void recv_all(int fd, char* data, size_t size) {
  while (size > 0) {
    size_t n = recv_some(fd, data, size);
    if (n == 0) die("raw TCP: the echo server closed the connection");
    data += n;
    size -= n;
  }
}

// An in-process TCP echo server on 127.0.0.1: one thread per connection, blocking sockets,
// TCP_NODELAY, every byte read is written back at once. The floor that the node is measured
// against. Not copyable; the destructor closes every socket and joins the threads.
class RawEchoServer {
 public:
  RawEchoServer() : listener_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (listener_.fd() < 0) die("socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listener_.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind() failed");
    if (::listen(listener_.fd(), 16) != 0) die("listen() failed");
    socklen_t len = sizeof addr;
    ::getsockname(listener_.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~RawEchoServer() {
    ::shutdown(listener_.fd(), SHUT_RDWR);  // wakes accept()
    acceptor_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    for (int fd : connection_fds_) ::shutdown(fd, SHUT_RDWR);
    for (auto& t : echoers_) t.join();
  }
  RawEchoServer(const RawEchoServer&) = delete;
  RawEchoServer& operator=(const RawEchoServer&) = delete;

  // A connected client socket with TCP_NODELAY.
  Socket connect() const { return connect_tcp("127.0.0.1", port_); }

 private:
  void accept_loop() {
    while (true) {
      int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // shut down
      }
      set_nodelay(fd);
      std::lock_guard<std::mutex> lock(mutex_);
      connection_fds_.push_back(fd);
      echoers_.emplace_back([fd] {
        Socket owned(fd);
        std::vector<char> buffer(64 * 1024);
        while (true) {
          ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return;
          const char* p = buffer.data();
          size_t left = static_cast<size_t>(n);
          while (left > 0) {
            ssize_t w = ::send(fd, p, left, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return;
            p += w;
            left -= static_cast<size_t>(w);
          }
        }
      });
    }
  }

  Socket listener_;
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::mutex mutex_;  // guards connection_fds_ and echoers_
  std::vector<int> connection_fds_;  // owned by the echo threads; only shut down from here
  std::vector<std::thread> echoers_;
};

std::string raw_message() {
  // A node.ping request frame, byte for byte (docs/PROTOCOL.md, "a ping in bytes").
  const unsigned char frame[kMessageBytes] = {0x00, 0x00, 0x00, 0x12, 0x82, 0xa2, 0x69, 0x64, 0x01, 0xa2, 0x6f,
                                              0x70, 0xa9, 0x6e, 0x6f, 0x64, 0x65, 0x2e, 0x70, 0x69, 0x6e, 0x67};
  return std::string(reinterpret_cast<const char*>(frame), kMessageBytes);
}

LatencySamples raw_ping_pong(const RawEchoServer& server, const RoundTrips& trips) {
  Socket socket = server.connect();
  const std::string message = raw_message();
  char reply[kMessageBytes];
  LatencySamples samples(trips.count);
  for (size_t i = 0; i < trips.warmup + trips.count; ++i) {
    auto start = Clock::now();
    send_all(socket.fd(), message.data(), message.size());
    recv_all(socket.fd(), reply, sizeof reply);
    if (i >= trips.warmup) samples.add(Clock::now() - start);
  }
  return samples;
}

// `options.requests` messages through one connection, `batch` per send(), at most options.window in
// flight; a second thread reads the echoes. Returns messages per second.
double raw_pipelined(const RawEchoServer& server, const BenchOptions& options, size_t batch) {
  Socket socket = server.connect();
  std::string burst;
  for (size_t i = 0; i < batch; ++i) burst += raw_message();
  const size_t total = options.requests;
  Window window(static_cast<int64_t>(std::max(options.window, batch)));
  auto elapsed = run_together(2, [&](size_t role) {
    if (role == 0) {
      for (size_t sent = 0; sent < total;) {
        size_t n = std::min(batch, total - sent);
        window.acquire(static_cast<int64_t>(n));
        send_all(socket.fd(), burst.data(), n * kMessageBytes);
        sent += n;
      }
      return;
    }
    std::vector<char> buffer(64 * 1024);
    size_t bytes = 0;
    size_t messages = 0;
    while (messages < total) {
      size_t n = recv_some(socket.fd(), buffer.data(), buffer.size());
      if (n == 0) die("raw TCP: the echo server closed the connection");
      bytes += n;
      size_t complete = bytes / kMessageBytes;
      window.release(static_cast<int64_t>(complete - messages));
      messages = complete;
    }
  });
  return per_second(total, elapsed);
}

// ---- Cairn ----

// Reads one frame and checks that it is an ok reply.
void read_ok_reply(int fd, std::string& frame, std::string_view what) {
  char header[protocol::kHeaderBytes];
  recv_all(fd, header, sizeof header);
  frame.resize(protocol::read_length(header));
  recv_all(fd, frame.data(), frame.size());
  auto handle = wire::unpack_map(frame.data(), frame.size());
  check(handle, std::string(what) + " reply");
  auto reply = protocol::parse_reply(handle->get());
  check(reply, std::string(what) + " reply");
  if (reply->kind != protocol::ReplyKind::ok) die(std::string(what) + " failed: " + reply->error.to_string());
}

// node.ping from the calling thread over a blocking socket that speaks the protocol itself: the
// node's share of a round trip, without the client library's I/O thread in between.
LatencySamples direct_node_ping(const NodeProcess& node, const RoundTrips& trips) {
  auto address = parse_host_port(node.address());
  check(address, "node address");
  Socket socket = connect_tcp(address->host, address->port);
  msg::Hello hello;
  hello.version = protocol::kVersion;
  hello.token = node.token();
  hello.client = "protocol_bench/direct";
  std::string out;
  std::string in;
  protocol::append_request(out, protocol::kConnectionId, protocol::kHelloOp, wire::encode(hello));
  send_all(socket.fd(), out.data(), out.size());
  read_ok_reply(socket.fd(), in, "hello");
  LatencySamples samples(trips.count);
  for (size_t i = 0; i < trips.warmup + trips.count; ++i) {
    out.clear();
    protocol::append_request(out, i + 1, msg::kPing, {});
    auto start = Clock::now();
    send_all(socket.fd(), out.data(), out.size());
    read_ok_reply(socket.fd(), in, "node.ping");
    if (i >= trips.warmup) samples.add(Clock::now() - start);
  }
  return samples;
}

std::unique_ptr<Client> connect_client(const NodeProcess& node) {
  ClientOptions options;
  options.address = node.address();
  options.token = node.token();
  options.reconnect = false;  // a dropped connection is a failed benchmark
  options.call_timeout = kCallTimeout;
  options.client_name = "protocol_bench";
  auto client = Client::connect(options);
  check(client, "connect to " + node.address());
  return std::move(client).value();
}

std::string echo_body() {
  std::string payload;
  wire::AppendBuffer buffer{&payload};
  wire::Packer packer(buffer);
  packer.pack(std::string(kEchoPayload));
  msg::Echo echo;
  echo.payload.bytes = payload;
  return wire::encode(echo);
}

// Blocking round trips of `op` with `body`; every reply must be ok.
LatencySamples cairn_round_trips(Client& client, std::string_view op, const std::string& body,
                                 const RoundTrips& trips) {
  LatencySamples samples(trips.count);
  for (size_t i = 0; i < trips.warmup + trips.count; ++i) {
    auto start = Clock::now();
    auto reply = client.call(op, body);
    auto rtt = Clock::now() - start;
    if (!reply.ok()) die(std::string(op) + " failed: " + reply.status().to_string());
    if (i >= trips.warmup) samples.add(rtt);
  }
  return samples;
}

// Issues `count` calls of `op` through call_async with at most options.window in flight, and waits
// for every reply. Dies if any reply is an error.
void cairn_pipeline(Client& client, std::string_view op, const std::string& body, size_t count,
                    const BenchOptions& options) {
  Window window(static_cast<int64_t>(options.window));
  std::atomic<size_t> failures{0};
  std::mutex error_mutex;  // guards first_error
  std::string first_error;
  for (size_t i = 0; i < count; ++i) {
    window.acquire(1);
    client.call_async(op, body, [&](Result<std::string> reply) {
      if (!reply.ok() && failures.fetch_add(1) == 0) {
        std::lock_guard<std::mutex> lock(error_mutex);
        first_error = reply.status().to_string();
      }
      window.release(1);
    });
  }
  window.wait_all();
  if (failures.load() > 0) {
    die(std::string(op) + ": " + std::to_string(failures.load()) + " of " + std::to_string(count) +
        " pipelined calls failed; first: " + first_error);
  }
}

// Requests per second over `connections` clients, each on its own thread, sharing options.requests.
double cairn_pipelined(const NodeProcess& node, std::string_view op, const std::string& body, size_t connections,
                       const BenchOptions& options) {
  std::vector<std::unique_ptr<Client>> clients;
  for (size_t i = 0; i < connections; ++i) clients.push_back(connect_client(node));
  // Warm each connection (allocations, the node's strand, the caches) before timing.
  for (auto& client : clients) cairn_pipeline(*client, op, body, std::min(options.requests, options.window * 4), options);
  const size_t per_connection = options.requests / connections;
  auto elapsed = run_together(connections, [&](size_t i) { cairn_pipeline(*clients[i], op, body, per_connection, options); });
  return per_second(per_connection * connections, elapsed);
}

// ---- report ----

struct Latency {
  double p50_us = 0;
  double p99_us = 0;
  double mean_us = 0;
};

Latency summarize(LatencySamples samples) {
  return {samples.percentile_us(50), samples.percentile_us(99), samples.mean_us()};
}

// Each field is the median over the rounds. A round can run in a slow state for its whole length
// (on a small VM, where the threads happen to land decides whether a wake-up is a context switch or
// an idle CPU's exit to the hypervisor); the median keeps one such round from deciding a figure.
Latency median_of_rounds(const std::vector<Latency>& rounds) {
  std::vector<double> p50, p99, mean;
  for (const auto& r : rounds) {
    p50.push_back(r.p50_us);
    p99.push_back(r.p99_us);
    mean.push_back(r.mean_us);
  }
  return {median(p50), median(p99), median(mean)};
}

struct Figures {
  Latency raw;
  Latency ping;
  Latency direct_ping;  // node.ping without the client library
  Latency echo;
  double raw_pipelined_single = 0;   // msg/s, one message per send()
  double raw_pipelined_batched = 0;  // msg/s, kRawBatch messages per send()
  double ping_pipelined = 0;         // req/s, one connection
  double echo_pipelined = 0;         // req/s, one connection
  double ping_pipelined_multi = 0;   // req/s, options.connections connections
  double rss_idle_mib = 0;
  double anon_idle_mib = 0;  // the heap-and-stacks part of rss_idle_mib
  double rss_after_mib = 0;
  double anon_after_mib = 0;
  double rss_peak_mib = 0;
};

double mib(const Result<uint64_t>& bytes, const char* what) {
  if (!bytes.ok()) die(std::string(what) + ": " + bytes.status().to_string());
  return static_cast<double>(*bytes) / (1024.0 * 1024.0);
}

std::string yes_no(bool met) { return met ? "met" : "MISSED"; }

std::string rate(double per_second) { return fixed(per_second / 1000.0, 1) + "k"; }

std::string throughput_ratio(double a, double b) { return b > 0 ? fixed(a / b, 2) + "x" : std::string("-"); }

// The rows shared by the terminal table and the markdown section: {name, value, comparison}.
std::vector<std::vector<std::string>> rows(const Figures& f, const BenchOptions& options) {
  auto ratio = [](double a, double b) { return b > 0 ? fixed(a / b, 2) + "x raw" : std::string("-"); };
  // What the client library adds to the node's share of a round trip.
  auto vs_bare = [&](const Latency& l) {
    return f.direct_ping.p50_us > 0 ? ", p50 " + fixed(l.p50_us / f.direct_ping.p50_us, 2) + "x bare socket"
                                    : std::string();
  };
  auto latency = [&](const char* name, const Latency& l, bool compare, std::string extra = {}) {
    return std::vector<std::string>{
        name, "p50 " + fixed(l.p50_us, 1) + " us, p99 " + fixed(l.p99_us, 1) + " us (mean " + fixed(l.mean_us, 1) + ")",
        compare ? "p50 " + ratio(l.p50_us, f.raw.p50_us) + ", p99 " + ratio(l.p99_us, f.raw.p99_us) + extra : ""};
  };
  const std::string conns = std::to_string(options.connections) + " conns";
  return {
      latency("raw TCP ping-pong", f.raw, false),
      latency("node.ping round trip", f.ping, true, vs_bare(f.ping)),
      latency("node.ping, bare socket (no client lib)", f.direct_ping, true),
      latency("node.echo round trip", f.echo, true),
      {"raw TCP pipelined, 1 msg/send", rate(f.raw_pipelined_single) + " msg/s", ""},
      {"raw TCP pipelined, " + std::to_string(kRawBatch) + " msg/send", rate(f.raw_pipelined_batched) + " msg/s", ""},
      {"node.ping pipelined, 1 conn", rate(f.ping_pipelined) + " req/s",
       throughput_ratio(f.ping_pipelined, f.raw_pipelined_single) + " raw 1 msg/send, " +
           throughput_ratio(f.ping_pipelined, f.raw_pipelined_batched) + " raw " + std::to_string(kRawBatch) +
           " msg/send"},
      {"node.echo pipelined, 1 conn", rate(f.echo_pipelined) + " req/s", ""},
      {"node.ping pipelined, " + conns, rate(f.ping_pipelined_multi) + " req/s", ""},
      {"node RSS idle / after load / peak",
       fixed(f.rss_idle_mib, 1) + " / " + fixed(f.rss_after_mib, 1) + " / " + fixed(f.rss_peak_mib, 1) + " MiB",
       "anonymous " + fixed(f.anon_idle_mib, 1) + " / " + fixed(f.anon_after_mib, 1) + " MiB"},
  };
}

std::vector<std::vector<std::string>> goals(const Figures& f) {
  double ratio = f.raw.p50_us > 0 ? f.ping.p50_us / f.raw.p50_us : 0;
  return {
      {"node.ping p50 <= " + fixed(kGoalPingP50Ratio, 0) + "x raw TCP p50", fixed(ratio, 2) + "x",
       yes_no(ratio <= kGoalPingP50Ratio)},
      {"node.ping pipelined, 1 conn >= " + rate(kGoalPipelinedPerSecond) + " req/s", rate(f.ping_pipelined),
       yes_no(f.ping_pipelined >= kGoalPipelinedPerSecond)},
  };
}

void print_table(const Figures& f, const BenchOptions& options, const MachineInfo& machine) {
  std::printf("\ncairn protocol benchmark: %s, %u cores, %s build, load average %s at start\n",
              machine.cpu_model.c_str(), machine.cores, CAIRN_BUILD_TYPE, machine.load.c_str());
  std::printf("latency: %zu round trips after %zu warm-up in %zu rounds, median per round; pipelined: %zu requests, "
              "window %zu per connection, median of %zu runs\n\n",
              options.round_trips, options.warmup, options.rounds, options.requests, options.window, options.repeat);
  for (const auto& row : rows(f, options)) {
    std::printf("  %-40s %-46s %s\n", row[0].c_str(), row[1].c_str(), row[2].c_str());
  }
  std::printf("\ngoals (issue #2)\n");
  for (const auto& row : goals(f)) std::printf("  %-46s %-12s %s\n", row[0].c_str(), row[1].c_str(), row[2].c_str());
  std::printf("\n");
}

std::string markdown(const Figures& f, const BenchOptions& options, const MachineInfo& machine) {
  std::ostringstream md;
  md << "\n## protocol_bench, " << machine.date_utc << "\n\n"
     << "Machine: " << machine.kernel << ", " << machine.cpu_model << ", " << machine.cores << " cores; "
     << CAIRN_BUILD_TYPE << " build; load average " << machine.load << " at start. " << options.round_trips
     << " round trips after " << options.warmup << " warm-up in " << options.rounds
     << " rounds (median per round); " << options.requests
     << " pipelined requests, window " << options.window << ", median of " << options.repeat << " runs.";
  if (options.node_binary != CAIRN_BINARY) md << " Node binary: " << options.node_binary << ".";
  if (const char* io_threads = std::getenv("CAIRN_NODE_IO_THREADS")) md << " CAIRN_NODE_IO_THREADS=" << io_threads << ".";
  md << "\n\n"
     << "| figure | value | vs raw TCP |\n| --- | --- | --- |\n";
  for (const auto& row : rows(f, options)) md << "| " << row[0] << " | " << row[1] << " | " << row[2] << " |\n";
  md << "\n| goal | measured | result |\n| --- | --- | --- |\n";
  for (const auto& row : goals(f)) md << "| " << row[0] << " | " << row[1] << " | " << row[2] << " |\n";
  return md.str();
}

constexpr const char* kResultsHeader =
    "# Benchmark results\n\n"
    "Appended by the benchmark programs in bench/ (run them all with scripts/bench.sh): one dated section\n"
    "per run, newest last. Figures depend on the machine and on what else runs on it; compare figures\n"
    "within one section (one run) rather than across machines. \"raw TCP\" rows are the floor: an\n"
    "in-process echo server over loopback with the same message size, no framing or decoding.\n";

int run(const BenchOptions& options) {
  MachineInfo machine = describe_machine();
  NodeOptions node_options;
  node_options.binary = options.node_binary;
  auto node = NodeProcess::start(node_options);
  check(node, "start node");
  std::this_thread::sleep_for(kSettle);  // start-up allocations settle before the idle figure
  Figures f;
  f.rss_idle_mib = mib((*node)->rss_bytes(), "node RSS");
  f.anon_idle_mib = mib((*node)->anon_rss_bytes(), "node anonymous RSS");
  std::fprintf(stderr, "node %d at %s: idle RSS %.1f MiB\n", static_cast<int>((*node)->pid()),
               (*node)->address().c_str(), f.rss_idle_mib);

  RawEchoServer echo_server;
  // The latency figures take turns, round by round, each on a fresh connection, so that a slow
  // stretch of the machine or an unlucky thread placement falls on all of them alike.
  const RoundTrips trips{std::max<size_t>(1, options.round_trips / options.rounds), options.warmup / options.rounds};
  const std::string echo = echo_body();
  std::vector<Latency> raw, ping, bare, echoed;
  for (size_t round = 1; round <= options.rounds; ++round) {
    std::fprintf(stderr, "latency round %zu of %zu: raw TCP, node.ping, node.ping bare socket, node.echo\n", round,
                 options.rounds);
    raw.push_back(summarize(raw_ping_pong(echo_server, trips)));
    auto client = connect_client(**node);
    ping.push_back(summarize(cairn_round_trips(*client, msg::kPing, {}, trips)));
    bare.push_back(summarize(direct_node_ping(**node, trips)));
    echoed.push_back(summarize(cairn_round_trips(*client, msg::kEcho, echo, trips)));
  }
  f.raw = median_of_rounds(raw);
  f.ping = median_of_rounds(ping);
  f.direct_ping = median_of_rounds(bare);
  f.echo = median_of_rounds(echoed);

  std::fprintf(stderr, "raw TCP pipelined...\n");
  f.raw_pipelined_single = median_of(options.repeat, [&] { return raw_pipelined(echo_server, options, 1); });
  f.raw_pipelined_batched = median_of(options.repeat, [&] { return raw_pipelined(echo_server, options, kRawBatch); });
  std::fprintf(stderr, "node.ping pipelined...\n");
  f.ping_pipelined = median_of(options.repeat, [&] { return cairn_pipelined(**node, msg::kPing, {}, 1, options); });
  std::fprintf(stderr, "node.echo pipelined...\n");
  f.echo_pipelined =
      median_of(options.repeat, [&] { return cairn_pipelined(**node, msg::kEcho, echo, 1, options); });
  std::fprintf(stderr, "node.ping pipelined over %zu connections...\n", options.connections);
  f.ping_pipelined_multi =
      median_of(options.repeat, [&] { return cairn_pipelined(**node, msg::kPing, {}, options.connections, options); });
  std::this_thread::sleep_for(kSettle);
  f.rss_after_mib = mib((*node)->rss_bytes(), "node RSS");
  f.anon_after_mib = mib((*node)->anon_rss_bytes(), "node anonymous RSS");
  f.rss_peak_mib = mib((*node)->peak_rss_bytes(), "node peak RSS");

  print_table(f, options, machine);
  if (!options.results.empty()) {
    check(append_results(options.results, kResultsHeader, markdown(f, options, machine)), "append results");
    std::printf("appended to %s\n", options.results.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) {
  return cairn::bench::run(cairn::bench::parse_args(argc, argv));
}
