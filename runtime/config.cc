#include "runtime/config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <type_traits>

#include <yaml-cpp/yaml.h>

#include "runtime/detail/text.h"

namespace cairn {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = kKiB * 1024;
constexpr uint64_t kGiB = kMiB * 1024;
constexpr uint64_t kTiB = kGiB * 1024;
constexpr uint64_t kMaxThreads = 64;
// Upper bounds on durations: a longer value is most likely a unit mistake, such as microseconds
// written where milliseconds are meant.
constexpr uint64_t kMaxTimeoutMs = 60 * 60 * 1000;      // one hour
constexpr uint64_t kMaxWindowMs = 24 * 60 * 60 * 1000;  // one day
constexpr uint64_t kMaxRestarts = 10000;
constexpr uint64_t kMaxInflight = 1000000;
constexpr uint64_t kMaxConnections = 1000000;
constexpr size_t kMaxNameLength = 253;  // a DNS name's limit, so a hostname always fits
constexpr uint64_t kMaxPort = 65535;

constexpr std::string_view kEnvPrefix = "CAIRN_";
constexpr std::string_view kDefaultsSource = "defaults";
constexpr std::string_view kOverrideSource = "command line";
constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
constexpr std::string_view kHttpOff = "off";
constexpr std::pair<std::string_view, uint64_t> kByteSuffixes[] = {
    {"KiB", kKiB}, {"MiB", kMiB}, {"GiB", kGiB}};

// One value as a source gives it. The environment and overrides give text; YAML may also give a
// sequence or a map, which only list settings (sequence) accept.
struct RawValue {
  enum class Kind { scalar, list, map };
  Kind kind = Kind::scalar;
  std::string text;                // for scalar
  std::vector<std::string> items;  // for list
};

RawValue scalar(std::string text) { return RawValue{RawValue::Kind::scalar, std::move(text), {}}; }

using detail::join;
using detail::quote;

std::string describe(const RawValue& value) {
  switch (value.kind) {
    case RawValue::Kind::scalar:
      return quote(value.text);
    case RawValue::Kind::list: {
      std::vector<std::string> quoted;
      for (const auto& item : value.items) quoted.push_back(quote(item));
      return "a list [" + join(quoted, ", ") + "]";
    }
    case RawValue::Kind::map:
      return "a map";
  }
  return "?";
}

// "expected <expected>, got <value>[ (<note>)]": the message every bad value gets, before the
// loader prefixes source and key.
Status invalid(std::string_view expected, const RawValue& got, std::string_view note = {}) {
  std::string message = "expected " + std::string(expected) + ", got " + describe(got);
  if (!note.empty()) message += " (" + std::string(note) + ")";
  return error(Code::invalid_argument, std::move(message));
}

std::string_view trim(std::string_view text) {
  const char* kSpace = " \t\r\n";
  size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  size_t end = text.find_last_not_of(kSpace);
  return text.substr(begin, end - begin + 1);
}

// Plain decimal digits, optionally followed by KiB, MiB or GiB when allow_suffix. Signs, spaces,
// fractions, hex, and values that overflow uint64 give nullopt.
std::optional<uint64_t> parse_unsigned(std::string_view text, bool allow_suffix) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc() || end != text.data() + digits) return std::nullopt;
  std::string_view suffix = text.substr(digits);
  if (suffix.empty()) return value;
  if (!allow_suffix) return std::nullopt;
  for (auto [name, scale] : kByteSuffixes) {
    if (suffix != name) continue;
    if (value > std::numeric_limits<uint64_t>::max() / scale) return std::nullopt;
    return value * scale;
  }
  return std::nullopt;
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

bool is_plain_name(std::string_view text) {
  return !text.empty() && text.size() <= kMaxNameLength &&
         std::all_of(text.begin(), text.end(), is_name_char);
}

// parse_host_port with the expected form named by the caller, so node.http can say "HOST:PORT or
// off".
Result<HostPort> parse_host_port_as(std::string_view text, std::string_view expected) {
  auto fail = [&](std::string_view why) -> Status {
    return error(Code::invalid_argument, "expected " + std::string(expected) + ", got " +
                                             quote(text) + " (" + std::string(why) + ")");
  };
  if (text.empty()) return fail("empty");
  HostPort out;
  std::string_view port_text;
  if (text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return fail("missing \"]\" after the IPv6 address");
    std::string host(text.substr(1, close - 1));
    in6_addr address{};
    if (host.empty() || inet_pton(AF_INET6, host.c_str(), &address) != 1) {
      return fail(quote(host) + " is not an IPv6 address");
    }
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return fail("missing \":PORT\" after \"]\"");
    out.host = std::move(host);
    port_text = rest.substr(1);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail("missing \":PORT\"");
    std::string_view host = text.substr(0, colon);
    if (host.find(':') != std::string_view::npos) {
      return fail("an IPv6 address needs brackets, as in [::1]:7420");
    }
    if (host.empty()) {
      out.host = "0.0.0.0";
    } else if (is_plain_name(host)) {
      out.host = std::string(host);
    } else {
      return fail("a host is a name or an address of letters, digits, \".\", \"-\" and \"_\"");
    }
    port_text = text.substr(colon + 1);
  }
  if (port_text.empty()) return fail("missing port");
  std::optional<uint64_t> port = parse_unsigned(port_text, false);
  if (!port || *port > kMaxPort) return fail("the port must be an integer from 0 to 65535");
  out.port = static_cast<uint16_t>(*port);
  return out;
}

std::string machine_hostname() {
  char buffer[kMaxNameLength + 2] = {};
  if (gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0') return "localhost";
  return buffer;
}

std::optional<std::string> process_getenv(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// ---- The settings table ------------------------------------------------------------------------

// One setting. `assign` parses a value into the config and on failure returns invalid_argument
// with "expected ..., got ..." (the loader adds source and key); `format` gives the value back as
// text that `assign` accepts. Checks that join several settings live in validate().
struct Setting {
  std::string key;
  std::string type;
  std::string meaning;
  std::string allowed;
  std::function<Status(const RawValue&, NodeConfig&)> assign;
  std::function<std::string(const NodeConfig&)> format;
};

enum class Unit { count, bytes, milliseconds };

template <class Int>
Setting integer_setting(std::string key, Int NodeConfig::*field, uint64_t min, uint64_t max,
                        Unit unit, std::string meaning, std::string_view extra_allowed = {}) {
  static_assert(std::is_unsigned_v<Int>, "settings hold unsigned integers");
  const bool bytes = unit == Unit::bytes;
  const std::string expected =
      "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  const std::string note = bytes ? "a byte count; the suffixes KiB, MiB and GiB are accepted" : "";
  std::string allowed = std::to_string(min) + " to " + std::to_string(max);
  if (bytes) allowed += "; suffix KiB, MiB or GiB accepted";
  if (!extra_allowed.empty()) allowed += "; " + std::string(extra_allowed);
  Setting setting;
  setting.key = std::move(key);
  setting.type = unit == Unit::count ? "integer" : bytes ? "bytes" : "milliseconds";
  setting.meaning = std::move(meaning);
  setting.allowed = std::move(allowed);
  setting.assign = [field, min, max, bytes, expected, note](const RawValue& value,
                                                            NodeConfig& config) -> Status {
    std::optional<uint64_t> parsed;
    if (value.kind == RawValue::Kind::scalar) parsed = parse_unsigned(value.text, bytes);
    if (!parsed || *parsed < min || *parsed > max) return invalid(expected, value, note);
    config.*field = static_cast<Int>(*parsed);
    return Status::ok_status();
  };
  setting.format = [field](const NodeConfig& config) { return std::to_string(config.*field); };
  return setting;
}

// A text setting; `accepts` (null = anything) decides which texts are valid, `expected` says so.
Setting text_setting(std::string key, std::string NodeConfig::*field, std::string type,
                     std::string meaning, std::string allowed, std::string expected,
                     bool (*accepts)(std::string_view)) {
  Setting setting;
  setting.key = std::move(key);
  setting.type = std::move(type);
  setting.meaning = std::move(meaning);
  setting.allowed = std::move(allowed);
  setting.assign = [field, expected, accepts](const RawValue& value, NodeConfig& config) -> Status {
    if (value.kind != RawValue::Kind::scalar || (accepts != nullptr && !accepts(value.text))) {
      return invalid(expected, value);
    }
    config.*field = value.text;
    return Status::ok_status();
  };
  setting.format = [field](const NodeConfig& config) { return config.*field; };
  return setting;
}

constexpr std::string_view kHostPortForms =
    "HOST:PORT, [IPV6]:PORT or :PORT (all interfaces); port 0 to 65535";
constexpr std::string_view kYamlIpv6Hint = "in YAML, quote IPv6 addresses: \"[::1]:7420\"";

Setting listen_setting() {
  Setting setting;
  setting.key = "node.listen";
  setting.type = "host:port";
  setting.meaning = "Address the msgpack protocol listens on. Port 0 binds a free port.";
  setting.allowed = std::string(kHostPortForms);
  setting.assign = [](const RawValue& value, NodeConfig& config) -> Status {
    if (value.kind != RawValue::Kind::scalar) return invalid("HOST:PORT", value, kYamlIpv6Hint);
    Result<HostPort> parsed = parse_host_port_as(value.text, "HOST:PORT");
    if (!parsed) return parsed.status();
    config.listen = std::move(parsed).value();
    return Status::ok_status();
  };
  setting.format = [](const NodeConfig& config) { return config.listen.to_string(); };
  return setting;
}

Setting http_setting() {
  Setting setting;
  setting.key = "node.http";
  setting.type = "host:port or off";
  setting.meaning = "Address of the HTTP endpoint. \"off\" or \"\" disables it.";
  setting.allowed = std::string(kHostPortForms) + "; off or \"\"; not the address of node.listen";
  setting.assign = [](const RawValue& value, NodeConfig& config) -> Status {
    if (value.kind != RawValue::Kind::scalar) {
      return invalid("HOST:PORT or off", value, kYamlIpv6Hint);
    }
    if (value.text.empty() || value.text == kHttpOff) {
      config.http.reset();
      return Status::ok_status();
    }
    Result<HostPort> parsed = parse_host_port_as(value.text, "HOST:PORT or off");
    if (!parsed) return parsed.status();
    config.http = std::move(parsed).value();
    return Status::ok_status();
  };
  setting.format = [](const NodeConfig& config) {
    return config.http ? config.http->to_string() : std::string(kHttpOff);
  };
  return setting;
}

// The items of a list setting: a YAML sequence as given, or comma-separated text with each item
// trimmed ("" is the empty list; "a,,b" and "a," hold an empty item, which the caller rejects).
// nullopt for a map.
std::optional<std::vector<std::string>> list_items(const RawValue& value) {
  if (value.kind == RawValue::Kind::list) return value.items;
  if (value.kind != RawValue::Kind::scalar) return std::nullopt;
  std::vector<std::string> items;
  if (trim(value.text).empty()) return items;
  std::string_view rest = value.text;
  for (;;) {
    size_t comma = rest.find(',');
    items.emplace_back(trim(rest.substr(0, comma)));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return items;
}

// Whether a role exists is checked in validate(), against ConfigSources::known_roles; here only the
// shape: a YAML sequence, or comma-separated text, of non-empty names.
Setting roles_setting() {
  Setting setting;
  setting.key = "node.roles";
  setting.type = "list";
  setting.meaning = "Actors the supervisor spawns at start, by role name. May be empty.";
  setting.allowed =
      "role names this binary knows (built in: echo, registry), each at most once; comma-separated in the "
      "environment and on the command line";
  setting.assign = [](const RawValue& value, NodeConfig& config) -> Status {
    constexpr std::string_view kExpected = "a list of role names";
    auto roles = list_items(value);
    if (!roles) return invalid(kExpected, value);
    for (const auto& role : *roles) {
      if (!is_plain_name(role)) {
        return invalid(
            kExpected, value,
            "a role name is letters, digits, \".\", \"-\" and \"_\"; got " + quote(role));
      }
    }
    config.roles = std::move(*roles);
    return Status::ok_status();
  };
  setting.format = [](const NodeConfig& config) { return join(config.roles, ","); };
  return setting;
}

// serve.models: "NAME=SOURCE" items, a YAML sequence or comma-separated text. Whether SOURCE
// exists is checked when the model loads (the node starts anyway and reports the failure).
Setting serve_models_setting() {
  Setting setting;
  setting.key = "serve.models";
  setting.type = "list";
  setting.meaning =
      "Models the inference role loads at start, as NAME=SOURCE; SOURCE is a Hugging Face model folder, "
      "MODEL@ALIAS or MODEL/VERSION from the registry. `cairn node --serve` adds to it and turns the role on.";
  setting.allowed = "NAME=SOURCE items, NAME of letters, digits, \".\", \"-\" and \"_\"; comma-separated in the "
                    "environment and on the command line";
  setting.assign = [](const RawValue& value, NodeConfig& config) -> Status {
    constexpr std::string_view kExpected = "a list of NAME=SOURCE";
    auto items = list_items(value);
    if (!items) return invalid(kExpected, value);
    for (const auto& item : *items) {
      size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == item.size() ||
          !is_plain_name(std::string_view(item).substr(0, eq))) {
        return invalid(kExpected, value, "each item is NAME=SOURCE; got " + quote(item));
      }
    }
    config.serve_models = std::move(*items);
    return Status::ok_status();
  };
  setting.format = [](const NodeConfig& config) { return join(config.serve_models, ","); };
  return setting;
}

bool is_node_name(std::string_view text) { return text.empty() || is_plain_name(text); }
bool is_log_level(std::string_view text) {
  return std::find(std::begin(kLogLevels), std::end(kLogLevels), text) != std::end(kLogLevels);
}
bool is_non_empty(std::string_view text) { return !text.empty(); }

std::vector<Setting> make_settings() {
  using N = NodeConfig;
  std::vector<Setting> table;
  // node.*
  table.push_back(text_setting(
      "node.name", &N::name, "string",
      "Name of this node, reported in the handshake reply, node.status and logs. \"\" means the "
      "machine's hostname.",
      "letters, digits, \".\", \"-\", \"_\"; at most 253 characters; \"\" = the hostname",
      "a name of letters, digits, \".\", \"-\" and \"_\", at most 253 characters", is_node_name));
  table.push_back(listen_setting());
  table.push_back(http_setting());
  table.push_back(text_setting("node.data_dir", &N::data_dir, "path",
                               "Directory holding the node's persistent state, such as its tokens.",
                               "a non-empty path", "a non-empty path", is_non_empty));
  table.push_back(text_setting(
      "node.token_file", &N::token_file, "path",
      "File of access tokens, one \"<role> <token>\" per line. \"\" means <data_dir>/tokens.",
      "a path, or \"\" for <data_dir>/tokens", "a path", nullptr));
  table.push_back(roles_setting());
  table.push_back(
      integer_setting("node.io_threads", &N::io_threads, 1, kMaxThreads, Unit::count,
                      "Threads that accept connections, read, write and frame messages."));
  table.push_back(integer_setting("node.actor_threads", &N::actor_threads, 1, kMaxThreads,
                                  Unit::count, "Threads that run actors."));
  table.push_back(
      text_setting("node.log_level", &N::log_level, "enum",
                   "Least severe log level written. node.set_log_level changes it at run time.",
                   "trace, debug, info, warn, error, off",
                   "one of trace, debug, info, warn, error, off", is_log_level));
  // protocol.*
  table.push_back(integer_setting(
      "protocol.max_frame_bytes", &N::max_frame_bytes, kKiB, kGiB, Unit::bytes,
      "Largest frame body accepted or sent; announced in the handshake reply. A larger length "
      "prefix is answered with frame_too_large and the connection is closed."));
  table.push_back(integer_setting(
      "protocol.max_inflight", &N::max_inflight, 1, kMaxInflight, Unit::count,
      "Requests on one connection still unanswered before the node pauses reading from it."));
  table.push_back(integer_setting(
      "protocol.max_pending_output_bytes", &N::max_pending_output_bytes, kKiB, kTiB, Unit::bytes,
      "Reply bytes queued for one connection before the node pauses reading from it.",
      "at least protocol.max_frame_bytes"));
  table.push_back(integer_setting("protocol.max_connections", &N::max_connections, 1,
                                  kMaxConnections, Unit::count,
                                  "Connections open at once; further ones are refused."));
  table.push_back(integer_setting("protocol.handshake_timeout_ms", &N::handshake_timeout_ms, 1,
                                  kMaxTimeoutMs, Unit::milliseconds,
                                  "A new connection must complete its handshake within this."));
  table.push_back(integer_setting("protocol.frame_timeout_ms", &N::frame_timeout_ms, 1,
                                  kMaxTimeoutMs, Unit::milliseconds,
                                  "A frame that has started arriving must complete within this."));
  table.push_back(integer_setting(
      "protocol.write_timeout_ms", &N::write_timeout_ms, 1, kMaxTimeoutMs, Unit::milliseconds,
      "A write that makes no progress for this long closes the connection."));
  // tls.*
  table.push_back(text_setting(
      "tls.cert_file", &N::tls_cert_file, "path",
      "PEM certificate chain. TLS is on when tls.cert_file and tls.key_file are both set.",
      "a path, or \"\"; set together with tls.key_file", "a path", nullptr));
  table.push_back(
      text_setting("tls.key_file", &N::tls_key_file, "path", "PEM private key for tls.cert_file.",
                   "a path, or \"\"; set together with tls.cert_file", "a path", nullptr));
  // supervisor.*
  table.push_back(integer_setting(
      "supervisor.max_restarts", &N::max_restarts, 0, kMaxRestarts, Unit::count,
      "Restarts of failed actors allowed within supervisor.restart_window_ms; one more escalates "
      "and stops the node."));
  table.push_back(integer_setting("supervisor.restart_window_ms", &N::restart_window_ms, 1,
                                  kMaxWindowMs, Unit::milliseconds,
                                  "The window supervisor.max_restarts counts over."));
  table.push_back(integer_setting(
      "supervisor.backoff_initial_ms", &N::backoff_initial_ms, 0, kMaxTimeoutMs, Unit::milliseconds,
      "Delay before restarting a failed actor the first time; it grows with each restart up to "
      "supervisor.backoff_max_ms."));
  table.push_back(integer_setting("supervisor.backoff_max_ms", &N::backoff_max_ms, 0, kMaxTimeoutMs,
                                  Unit::milliseconds, "Longest delay before a restart.",
                                  "at least supervisor.backoff_initial_ms"));
  // shutdown.*
  table.push_back(integer_setting(
      "shutdown.grace_ms", &N::shutdown_grace_ms, 0, kMaxTimeoutMs, Unit::milliseconds,
      "On shutdown, how long in-flight requests get to finish before the node stops."));
  // train.*
  table.push_back(integer_setting(
      "train.max_jobs", &N::train_max_jobs, 1, 1000, Unit::count,
      "Training jobs that run at once on this node (role train); later submissions wait, queued."));
  table.push_back(integer_setting(
      "train.max_restarts", &N::train_max_restarts, 0, 10000, Unit::count,
      "Times a training job's workers are restarted from its last checkpoint after a failure "
      "before the job fails."));
  {
    // A secret: `cairn config check` shows whether it is set, never the token.
    Setting peer_token = text_setting(
        "train.peer_token", &N::train_peer_token, "string",
        "Token this node presents to the other nodes of a training job spanning nodes: as the job's "
        "home, for train.join/start/abort (needs the admin role there); on the others, to fetch "
        "registry models and checkpoints from the home node. \"\" means this node's own admin token "
        "(the nodes then share a token file).",
        "a token of the other nodes, or \"\"", "a token", nullptr);
    peer_token.format = [](const NodeConfig& config) {
      return config.train_peer_token.empty() ? std::string() : std::string("(set)");
    };
    table.push_back(std::move(peer_token));
  }
  table.push_back(integer_setting(
      "train.peer_timeout_ms", &N::train_peer_timeout_ms, 1, kMaxTimeoutMs, Unit::milliseconds,
      "How long the home node of a training job spanning nodes keeps trying to join another node "
      "(down, restarting, or still stopping the job's previous ranks) before the job fails, naming "
      "the node."));
  // serve.*
  table.push_back(serve_models_setting());
  table.push_back(integer_setting(
      "serve.kv_cache_bytes", &N::serve_kv_cache_bytes, kMiB, kTiB, Unit::bytes,
      "Memory for the keys and values of each loaded model version (the paged KV cache)."));
  table.push_back(integer_setting("serve.block_size", &N::serve_block_size, 1, 1024, Unit::count,
                                  "Tokens per KV cache block: the unit of allocation and of prefix sharing."));
  table.push_back(integer_setting("serve.max_running", &N::serve_max_running, 1, 4096, Unit::count,
                                  "Sequences in one decoding step's batch at most."));
  table.push_back(integer_setting(
      "serve.max_step_tokens", &N::serve_max_step_tokens, 1, 1u << 20, Unit::count,
      "Tokens in one forward pass at most; prompts are prefilled in chunks that fit."));
  table.push_back(integer_setting(
      "serve.max_queue", &N::serve_max_queue, 0, kMaxInflight, Unit::count,
      "Requests per model waiting beyond serve.max_running; more are refused at once with overloaded "
      "(HTTP 429)."));
  table.push_back(integer_setting(
      "serve.request_timeout_ms", &N::serve_request_timeout_ms, 0, kMaxTimeoutMs, Unit::milliseconds,
      "A generation request still unfinished after this ends with timeout (HTTP 504); 0 = none. A "
      "request may set its own (timeout_ms)."));
  table.push_back(integer_setting(
      "serve.alias_poll_ms", &N::serve_alias_poll_ms, 10, kMaxTimeoutMs, Unit::milliseconds,
      "How often a model served from MODEL@ALIAS reads the alias; when it moves, the new version is "
      "loaded and swapped in."));
  table.push_back(integer_setting(
      "serve.load_retry_initial_ms", &N::serve_load_retry_initial_ms, 10, kMaxTimeoutMs, Unit::milliseconds,
      "First wait before a startup model whose registry source cannot be resolved yet (no such alias or "
      "version, registry unavailable) is tried again; doubled after each failure. A missing alias is read "
      "again every serve.alias_poll_ms."));
  table.push_back(integer_setting(
      "serve.load_retry_max_ms", &N::serve_load_retry_max_ms, 10, kMaxTimeoutMs, Unit::milliseconds,
      "Longest wait between two attempts to load a startup model (see serve.load_retry_initial_ms)."));
  table.push_back(text_setting("serve.device", &N::serve_device, "string",
                               "Where served models run: a libtorch device (cpu, cuda, cuda:1).",
                               "a libtorch device string", "a device such as cpu or cuda:0", is_non_empty));
  return table;
}

const std::vector<Setting>& settings() {
  static const std::vector<Setting> kTable = make_settings();
  return kTable;
}

// "protocol.max_frame_bytes" -> "CAIRN_PROTOCOL_MAX_FRAME_BYTES".
std::string env_name(std::string_view key) {
  std::string name(kEnvPrefix);
  for (char c : key) {
    if (c == '.') {
      name += '_';
    } else if (c >= 'a' && c <= 'z') {
      name += static_cast<char>(c - 'a' + 'A');
    } else {
      name += c;
    }
  }
  return name;
}

// The YAML sections, in table order: the part of each key before its first '.'.
const std::vector<std::string>& sections() {
  static const std::vector<std::string> kSections = [] {
    std::vector<std::string> out;
    for (const Setting& setting : settings()) {
      std::string section = setting.key.substr(0, setting.key.find('.'));
      if (std::find(out.begin(), out.end(), section) == out.end()) out.push_back(section);
    }
    return out;
  }();
  return kSections;
}

// Index into settings(), or nullopt.
std::optional<size_t> find_setting(std::string_view key) {
  const auto& table = settings();
  for (size_t i = 0; i < table.size(); ++i) {
    if (table[i].key == key) return i;
  }
  return std::nullopt;
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  for (const Setting& setting : settings()) keys.push_back(setting.key);
  return keys;
}

Status unknown_key(std::string_view source, std::string_view key) {
  return error(Code::invalid_argument,
               std::string(source) + ": unknown key " + quote(key) + detail::did_you_mean(key, all_keys()));
}

// ---- Loading -----------------------------------------------------------------------------------

// Where a setting's current value came from. Sources are applied in precedence order, so the
// setting with the larger `sequence` was set by the more specific source (or later on it).
struct Origin {
  uint64_t sequence = 0;  // 0: the default
  std::string source{kDefaultsSource};
};

// The config being built, and each setting's origin (by table index), so that checks across
// settings can say where each value came from.
struct LoadState {
  NodeConfig config;
  std::vector<Origin> origin = std::vector<Origin>(settings().size());
  uint64_t applied = 0;
};

Status apply(LoadState& state, size_t index, std::string_view source, const RawValue& value) {
  const Setting& setting = settings()[index];
  Status status = setting.assign(value, state.config);
  if (!status.ok()) return status.with_context(setting.key).with_context(source);
  state.origin[index] = Origin{++state.applied, std::string(source)};
  return Status::ok_status();
}

// The whole file, or not_found / io_error naming the path.
Result<std::string> read_file(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    int err = errno;
    return error(err == ENOENT ? Code::not_found : Code::io_error,
                 path + ": cannot open the config file: " + std::strerror(err));
  }
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) text.append(buffer, n);
  bool failed = std::ferror(file) != 0;
  int err = errno;
  std::fclose(file);
  if (failed) {
    return error(Code::io_error, path + ": cannot read the config file: " + std::strerror(err));
  }
  return text;
}

std::string position(const std::string& path, const YAML::Mark& mark) {
  if (mark.is_null()) return path;
  return path + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
}

Status file_error(const std::string& path, std::string message) {
  return error(Code::invalid_argument, path + ": " + message);
}

// One YAML value as a RawValue. Nested lists or maps inside a list are reported as a map so the
// setting rejects them with its own "expected".
RawValue raw_value(const YAML::Node& node) {
  RawValue value;
  if (node.IsNull()) return scalar("");
  if (node.IsScalar()) return scalar(node.Scalar());
  if (node.IsSequence()) {
    value.kind = RawValue::Kind::list;
    for (const auto& item : node) {
      if (!item.IsScalar()) return RawValue{RawValue::Kind::map, "", {}};
      value.items.push_back(item.Scalar());
    }
    return value;
  }
  value.kind = RawValue::Kind::map;
  return value;
}

Status load_file(LoadState& state, const std::string& path) {
  Result<std::string> text = read_file(path);
  if (!text) return text.status();
  YAML::Node root;
  try {
    root = YAML::Load(*text);
  } catch (const YAML::ParserException& e) {
    return error(Code::invalid_argument, position(path, e.mark) + ": malformed YAML: " + e.msg);
  }
  if (root.IsNull()) return Status::ok_status();
  const std::string sections_text = join(sections(), ", ");
  if (!root.IsMap()) {
    return file_error(path, "expected a map of sections (" + sections_text + ") at the top level");
  }
  std::set<std::string> seen;
  for (const auto& section : root) {
    if (!section.first.IsScalar()) {
      return file_error(path, "expected section names, got a non-text key");
    }
    const std::string& section_name = section.first.Scalar();
    if (std::find(sections().begin(), sections().end(), section_name) == sections().end()) {
      if (find_setting(section_name)) {
        return file_error(path,
                          "unknown key " + quote(section_name) + " (settings are nested: write " +
                              quote(section_name.substr(0, section_name.find('.')) + ": {" +
                                    section_name.substr(section_name.find('.') + 1) + ": ...}") +
                              ")");
      }
      return file_error(
          path, "unknown key " + quote(section_name) + detail::did_you_mean(section_name, sections()));
    }
    if (!seen.insert(section_name).second) {
      return file_error(path, section_name + ": appears twice");
    }
    const YAML::Node& body = section.second;
    if (body.IsNull()) continue;
    if (!body.IsMap()) {
      return file_error(
          path, section_name + ": expected a map of settings, got " + describe(raw_value(body)));
    }
    for (const auto& entry : body) {
      if (!entry.first.IsScalar()) {
        return file_error(path, section_name + ": expected setting names, got a non-text key");
      }
      std::string key = section_name + "." + entry.first.Scalar();
      std::optional<size_t> index = find_setting(key);
      if (!index) return unknown_key(path, key);
      if (!seen.insert(key).second) return file_error(path, key + ": appears twice");
      CAIRN_RETURN_IF_ERROR(apply(state, *index, path, raw_value(entry.second)));
    }
  }
  return Status::ok_status();
}

Status load_environment(LoadState& state, const ConfigSources& sources) {
  for (size_t i = 0; i < settings().size(); ++i) {
    std::string name = env_name(settings()[i].key);
    std::optional<std::string> value = sources.getenv ? sources.getenv(name) : process_getenv(name);
    if (!value) continue;
    CAIRN_RETURN_IF_ERROR(apply(state, i, "environment " + name, scalar(std::move(*value))));
  }
  return Status::ok_status();
}

Status load_overrides(LoadState& state, const ConfigSources& sources) {
  for (const auto& [key, value] : sources.overrides) {
    std::optional<size_t> index = find_setting(key);
    if (!index) return unknown_key(kOverrideSource, key);
    CAIRN_RETURN_IF_ERROR(apply(state, *index, kOverrideSource, scalar(value)));
  }
  return Status::ok_status();
}

// "16777216 from config.yaml": a setting's value and where it came from, for messages about two
// settings at once.
std::string value_and_origin(const LoadState& state, std::string_view key) {
  size_t index = *find_setting(key);
  return settings()[index].format(state.config) + " from " + state.origin[index].source;
}

const Origin& origin_of(const LoadState& state, std::string_view key) {
  return state.origin[*find_setting(key)];
}

// Of two settings in conflict, whether `a` was set after `b`: the message then blames `a`, the
// value the user most likely just changed.
bool set_later(const LoadState& state, std::string_view a, std::string_view b) {
  return origin_of(state, a).sequence >= origin_of(state, b).sequence;
}

// An error about `key`, prefixed with the source that set it.
Status conflict(const LoadState& state, std::string_view key, std::string message) {
  return error(Code::invalid_argument,
               origin_of(state, key).source + ": " + std::string(key) + ": " + message);
}

// Checks lower <= upper for two integer settings.
Status check_at_most(const LoadState& state, std::string_view lower_key, uint64_t lower,
                     std::string_view upper_key, uint64_t upper) {
  if (lower <= upper) return Status::ok_status();
  if (set_later(state, upper_key, lower_key)) {
    return conflict(state, upper_key,
                    "expected at least " + std::string(lower_key) + " (" +
                        value_and_origin(state, lower_key) + "), got " + std::to_string(upper));
  }
  return conflict(state, lower_key,
                  "expected at most " + std::string(upper_key) + " (" +
                      value_and_origin(state, upper_key) + "), got " + std::to_string(lower));
}

bool is_wildcard(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

// The checks that join settings, or that need ConfigSources::known_roles.
Status validate(const LoadState& state, const std::vector<std::string>& known_roles) {
  const NodeConfig& c = state.config;
  std::set<std::string> seen_roles;
  for (const auto& role : c.roles) {
    if (std::find(known_roles.begin(), known_roles.end(), role) == known_roles.end()) {
      return conflict(state, "node.roles",
                      "unknown role " + quote(role) + "; known roles: " +
                          (known_roles.empty() ? std::string("none") : join(known_roles, ", ")));
    }
    if (!seen_roles.insert(role).second) {
      return conflict(state, "node.roles", "role " + quote(role) + " is listed more than once");
    }
  }
  if (c.http && c.http->port != 0 && c.http->port == c.listen.port &&
      (c.http->host == c.listen.host || is_wildcard(c.http->host) || is_wildcard(c.listen.host))) {
    const bool blame_http = set_later(state, "node.http", "node.listen");
    std::string_view key = blame_http ? "node.http" : "node.listen";
    std::string_view other = blame_http ? "node.listen" : "node.http";
    return conflict(state, key,
                    "expected an address other than " + std::string(other) + " (" +
                        value_and_origin(state, other) + "), got " +
                        quote(settings()[*find_setting(key)].format(c)));
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    const bool cert_set = !c.tls_cert_file.empty();
    return conflict(state, cert_set ? "tls.cert_file" : "tls.key_file",
                    std::string("is set but ") + (cert_set ? "tls.key_file" : "tls.cert_file") +
                        " is not; set both to enable TLS, or neither");
  }
  CAIRN_RETURN_IF_ERROR(check_at_most(state, "protocol.max_frame_bytes", c.max_frame_bytes,
                                      "protocol.max_pending_output_bytes",
                                      c.max_pending_output_bytes));
  return check_at_most(state, "supervisor.backoff_initial_ms", c.backoff_initial_ms,
                       "supervisor.backoff_max_ms", c.backoff_max_ms);
}

}  // namespace

std::string HostPort::to_string() const {
  std::string port_text = std::to_string(port);
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port_text;
  return host + ":" + port_text;
}

Result<HostPort> parse_host_port(std::string_view text) {
  return parse_host_port_as(text, "HOST:PORT");
}

std::string NodeConfig::effective_token_file() const {
  if (!token_file.empty()) return token_file;
  if (!data_dir.empty() && data_dir.back() == '/') return data_dir + "tokens";
  return data_dir + "/tokens";
}

Result<NodeConfig> load_node_config(const ConfigSources& sources) {
  // yaml-cpp and std throw; nothing escapes this module.
  try {
    LoadState state;
    if (!sources.file.empty()) CAIRN_RETURN_IF_ERROR(load_file(state, sources.file));
    CAIRN_RETURN_IF_ERROR(load_environment(state, sources));
    CAIRN_RETURN_IF_ERROR(load_overrides(state, sources));
    CAIRN_RETURN_IF_ERROR(validate(state, sources.known_roles));
    if (state.config.name.empty()) state.config.name = machine_hostname();
    return std::move(state.config);
  } catch (const std::exception& e) {
    return error(Code::internal, std::string("loading the node config: ") + e.what());
  }
}

const std::vector<SettingInfo>& node_settings() {
  static const std::vector<SettingInfo> kInfo = [] {
    const NodeConfig defaults;
    std::vector<SettingInfo> out;
    for (const Setting& setting : settings()) {
      out.push_back({setting.key, setting.type, setting.format(defaults), env_name(setting.key),
                     setting.meaning, setting.allowed});
    }
    return out;
  }();
  return kInfo;
}

std::vector<std::pair<std::string, std::string>> describe_values(const NodeConfig& config) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const Setting& setting : settings()) out.emplace_back(setting.key, setting.format(config));
  return out;
}

}  // namespace cairn
