// Node configuration: every setting a node reads at start, loaded from defaults, a YAML file, the
// environment and command-line overrides, and validated before the node does anything else.
//
// The settings are declared once, in one table in config.cc; the defaults below, the YAML and
// environment names, `cairn config show` and docs/CONFIG.md all follow that table.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/status.h"

namespace cairn {

// A TCP endpoint. `host` is a host name, an IPv4 address or an IPv6 address without brackets.
struct HostPort {
  std::string host;
  uint16_t port = 0;  // 0: the node binds a free port and reports it

  // "127.0.0.1:7420"; IPv6 hosts get brackets: "[::1]:7420". parse_host_port reads it back.
  std::string to_string() const;
};

// Accepts "host:port", "[v6]:port" and ":port" (host 0.0.0.0). The port is decimal, 0 to 65535.
// Resolves nothing. On failure returns invalid_argument with a message that quotes the text and
// says what is expected: `expected HOST:PORT, got "nope" (missing ":PORT")`.
Result<HostPort> parse_host_port(std::string_view text);

// Everything a node reads at start. Each field's comment names its setting key; docs/CONFIG.md (and
// node_settings()) give every key's environment variable and allowed values. A default-constructed
// NodeConfig holds the defaults, except `name`, which load_node_config fills with the hostname.
struct NodeConfig {
  // node.*
  std::string name;                    // node.name; "" = the machine's hostname
  HostPort listen{"127.0.0.1", 7420};  // node.listen (msgpack protocol)
  std::optional<HostPort> http = HostPort{"127.0.0.1", 7421};  // node.http; nullopt = off
  std::string data_dir = "cairn-data";                         // node.data_dir
  std::string token_file;                     // node.token_file; "" = <data_dir>/tokens
  std::vector<std::string> roles = {"echo", "registry"};  // node.roles: actors the supervisor spawns
  uint32_t io_threads = 2;                    // node.io_threads
  uint32_t actor_threads = 2;                 // node.actor_threads
  std::string log_level = "info";             // node.log_level
  // protocol.*
  uint32_t max_frame_bytes = 16 << 20;              // protocol.max_frame_bytes
  uint32_t max_inflight = 4096;                     // protocol.max_inflight, per connection
  uint64_t max_pending_output_bytes = 64ull << 20;  // protocol.max_pending_output_bytes
  uint32_t max_connections = 1024;                  // protocol.max_connections
  uint32_t handshake_timeout_ms = 5000;             // protocol.handshake_timeout_ms
  uint32_t frame_timeout_ms = 10000;                // protocol.frame_timeout_ms
  uint32_t write_timeout_ms = 30000;                // protocol.write_timeout_ms
  // tls.*: TLS is on when both files are set.
  std::string tls_cert_file;  // tls.cert_file (PEM)
  std::string tls_key_file;   // tls.key_file (PEM)
  // supervisor.*
  uint32_t max_restarts = 5;           // supervisor.max_restarts per window
  uint32_t restart_window_ms = 60000;  // supervisor.restart_window_ms
  uint32_t backoff_initial_ms = 100;   // supervisor.backoff_initial_ms
  uint32_t backoff_max_ms = 10000;     // supervisor.backoff_max_ms
  // shutdown.*
  uint32_t shutdown_grace_ms = 5000;  // shutdown.grace_ms
  // train.*
  uint32_t train_max_jobs = 1;      // train.max_jobs: jobs training at once
  uint32_t train_max_restarts = 3;  // train.max_restarts: per job, from its last checkpoint
  std::string train_peer_token;     // train.peer_token: presented to a job's other nodes; "" = admin token
  uint32_t train_peer_timeout_ms = 60000;  // train.peer_timeout_ms: waiting for another node of a job
  // serve.* (role inference; docs/CONFIG.md)
  std::vector<std::string> serve_models;             // serve.models: "NAME=SOURCE" to load at start
  uint64_t serve_kv_cache_bytes = 256ull << 20;       // serve.kv_cache_bytes, per loaded version
  uint32_t serve_block_size = 16;                     // serve.block_size: tokens per KV block
  uint32_t serve_max_running = 64;                    // serve.max_running: sequences per batch
  uint32_t serve_max_step_tokens = 512;               // serve.max_step_tokens: tokens per forward pass
  uint32_t serve_max_queue = 256;                     // serve.max_queue: waiting requests per model
  uint32_t serve_request_timeout_ms = 600000;         // serve.request_timeout_ms; 0 = none
  uint32_t serve_alias_poll_ms = 1000;                // serve.alias_poll_ms
  uint32_t serve_load_retry_initial_ms = 1000;        // serve.load_retry_initial_ms
  uint32_t serve_load_retry_max_ms = 30000;           // serve.load_retry_max_ms
  std::string serve_device = "cpu";                   // serve.device: libtorch device string

  bool tls_enabled() const { return !tls_cert_file.empty() && !tls_key_file.empty(); }
  // token_file, or <data_dir>/tokens when it is empty.
  std::string effective_token_file() const;
};

// Where load_node_config reads settings from.
struct ConfigSources {
  // YAML file; "" = none. A named file that cannot be read is an error (not_found or io_error).
  std::string file;
  // Looks up an environment variable; null = the process environment. Tests inject a map here.
  std::function<std::optional<std::string>(const std::string&)> getenv;
  // (key, value) pairs from command-line flags, applied in order: {"node.listen", "127.0.0.1:0"}.
  // Errors name their source as "command line".
  std::vector<std::pair<std::string, std::string>> overrides;
  // The roles node.roles may name: the actors this binary can spawn.
  std::vector<std::string> known_roles = {"echo", "registry"};
};

// Applies defaults < file < environment < overrides, then checks every value and the rules that
// join settings (TLS needs both files, backoff_max_ms >= backoff_initial_ms, ...). A bad value in
// any source is an error even when a later source replaces it. Returns the first error found, as
// invalid_argument with the message "<source>: <key>: expected <allowed>, got \"<value>\"", where
// source is the file path, "environment CAIRN_..." or "command line". Reads only the file and the
// environment; never throws.
Result<NodeConfig> load_node_config(const ConfigSources& sources);

// One row of the settings table: what docs/CONFIG.md and `cairn config` print.
struct SettingInfo {
  std::string key;   // "protocol.max_frame_bytes"; in YAML, `protocol: {max_frame_bytes: }`
  std::string type;  // "integer", "bytes", "milliseconds", "host:port", ...
  std::string default_value;  // as it would be written in YAML or the environment
  std::string env;            // "CAIRN_PROTOCOL_MAX_FRAME_BYTES"
  std::string meaning;
  std::string allowed;
};

// Every setting, in table order (grouped by section). The reference is valid for the whole program.
const std::vector<SettingInfo>& node_settings();

// The config's values as (key, text) pairs in table order, each text in the form the setting
// accepts (lists comma-separated, a disabled node.http as "off"), for `cairn config show`.
std::vector<std::pair<std::string, std::string>> describe_values(const NodeConfig& config);

}  // namespace cairn
