// The protocol server: accepts client (and node) connections over TCP or TLS, runs the handshake
// and token check, frames and decodes requests, and hands each one to a Dispatcher as a Call.
// Runs on the caller's Asio io_context; each connection is serialized on its own strand.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cluster/auth.h"
#include "runtime/call.h"
#include "runtime/config.h"
#include "runtime/status.h"

namespace boost::asio {
class io_context;
}

namespace cairn {

// Decides who serves a call. Called on a connection's strand; must not block.
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  // Takes the call and answers it now or later, from any thread.
  virtual void dispatch(CallPtr call) = 0;
};

struct ServerOptions {
  HostPort listen;
  uint32_t max_frame_bytes = 16u << 20;
  uint32_t max_inflight = 4096;
  uint64_t max_pending_output_bytes = 64ull << 20;
  uint32_t max_connections = 1024;
  uint32_t handshake_timeout_ms = 5000;
  uint32_t frame_timeout_ms = 10000;
  uint32_t write_timeout_ms = 30000;
  std::string tls_cert_file;  // TLS when both files are set
  std::string tls_key_file;
  // Sent in the handshake reply.
  std::string node_name;
  std::string node_id;

  static ServerOptions from_config(const NodeConfig& config);
};

class ProtocolServer {
 public:
  // Binds and starts accepting. Fails with io_error naming the address when it cannot bind, and
  // with invalid_argument naming the file when the TLS certificate or key cannot be loaded.
  // `tokens` and `dispatcher` must outlive the server.
  static Result<std::unique_ptr<ProtocolServer>> start(boost::asio::io_context& io, const ServerOptions& options,
                                                        const TokenStore& tokens, Dispatcher& dispatcher);
  ~ProtocolServer();
  ProtocolServer(const ProtocolServer&) = delete;
  ProtocolServer& operator=(const ProtocolServer&) = delete;

  // The address actually bound (the real port when port 0 was asked for).
  HostPort bound() const;
  bool tls() const;
  size_t connection_count() const;
  // Requests received but not yet finally answered, over all connections.
  size_t inflight() const;

  // Graceful shutdown, step 1: stop accepting; requests that arrive from now on are answered with
  // shutting_down, while those in flight may finish. Thread-safe.
  void begin_shutdown();
  // Step 2: cancel what is still in flight (answered with shutting_down), flush and close every
  // connection. Thread-safe.
  void close_all();

  struct Impl;

 private:
  explicit ProtocolServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace cairn
