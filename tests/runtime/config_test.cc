#include "runtime/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace cairn {
namespace {

namespace fs = std::filesystem;

using Env = std::map<std::string, std::string>;

// A getenv that reads `env` only, so tests never see the process environment.
std::function<std::optional<std::string>(const std::string&)> fake_getenv(Env env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

ConfigSources sources(Env env = {}) {
  ConfigSources out;
  out.getenv = fake_getenv(std::move(env));
  return out;
}

std::string hostname() {
  char buffer[256] = {};
  EXPECT_EQ(gethostname(buffer, sizeof buffer - 1), 0);
  return buffer;
}

std::map<std::string, std::string> values(const NodeConfig& config) {
  auto pairs = describe_values(config);
  return {pairs.begin(), pairs.end()};
}

// describe_values of the defaults, with the name load_node_config fills in.
std::vector<std::pair<std::string, std::string>> loaded_defaults() {
  NodeConfig defaults;
  defaults.name = hostname();
  return describe_values(defaults);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

// Each test gets a fresh temporary directory for its YAML files.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "cairn_config_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  std::string write_yaml(const std::string& text, const std::string& name = "config.yaml") {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  // Loads `yaml` with the given environment and overrides.
  Result<NodeConfig> load_yaml(const std::string& yaml, Env env = {},
                               std::vector<std::pair<std::string, std::string>> overrides = {}) {
    ConfigSources s = sources(std::move(env));
    s.file = write_yaml(yaml);
    s.overrides = std::move(overrides);
    return load_node_config(s);
  }

  // The error message of loading `yaml`; fails the test when it loads.
  std::string yaml_error(const std::string& yaml) {
    Result<NodeConfig> result = load_yaml(yaml);
    EXPECT_FALSE(result.ok()) << yaml;
    if (result.ok()) return "";
    EXPECT_EQ(result.status().code(), Code::invalid_argument);
    return result.status().message();
  }

  std::string path(const std::string& name = "config.yaml") const { return (dir_ / name).string(); }

  fs::path dir_;
};

// The message of loading with these overrides; fails the test when it loads.
std::string override_error(std::vector<std::pair<std::string, std::string>> overrides,
                           std::vector<std::string> known_roles = {"echo", "registry"}) {
  ConfigSources s = sources();
  s.overrides = std::move(overrides);
  s.known_roles = std::move(known_roles);
  Result<NodeConfig> result = load_node_config(s);
  EXPECT_FALSE(result.ok());
  if (result.ok()) return "";
  EXPECT_EQ(result.status().code(), Code::invalid_argument);
  return result.status().message();
}

Result<NodeConfig> load_overrides(std::vector<std::pair<std::string, std::string>> overrides,
                                  std::vector<std::string> known_roles = {"echo", "registry"}) {
  ConfigSources s = sources();
  s.overrides = std::move(overrides);
  s.known_roles = std::move(known_roles);
  return load_node_config(s);
}

// ---- parse_host_port ---------------------------------------------------------------------------

TEST(HostPortTest, ParsesIpv4) {
  Result<HostPort> hp = parse_host_port("127.0.0.1:7420");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 7420);
  EXPECT_EQ(hp->to_string(), "127.0.0.1:7420");
}

TEST(HostPortTest, ParsesHostName) {
  Result<HostPort> hp = parse_host_port("node-1.example.com:80");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->host, "node-1.example.com");
  EXPECT_EQ(hp->port, 80);
}

TEST(HostPortTest, ParsesBracketedIpv6) {
  Result<HostPort> hp = parse_host_port("[::1]:7420");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 7420);
  EXPECT_EQ(hp->to_string(), "[::1]:7420");

  Result<HostPort> any = parse_host_port("[::]:0");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->host, "::");
  EXPECT_EQ(any->to_string(), "[::]:0");
}

TEST(HostPortTest, BarePortMeansAllInterfaces) {
  Result<HostPort> hp = parse_host_port(":9000");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->host, "0.0.0.0");
  EXPECT_EQ(hp->port, 9000);
}

TEST(HostPortTest, AcceptsPortZeroAndTheLargestPort) {
  Result<HostPort> zero = parse_host_port("127.0.0.1:0");
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(zero->port, 0);
  Result<HostPort> top = parse_host_port("127.0.0.1:65535");
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->port, 65535);
}

TEST(HostPortTest, ToStringRoundTrips) {
  for (const char* text :
       {"127.0.0.1:7420", "[::1]:1", "[fe80::1:2]:65535", "localhost:0", "0.0.0.0:9"}) {
    Result<HostPort> hp = parse_host_port(text);
    ASSERT_TRUE(hp.ok()) << text;
    EXPECT_EQ(hp->to_string(), text);
  }
}

TEST(HostPortTest, RejectsBadTextNamingTextAndExpectation) {
  struct Case {
    const char* text;
    const char* reason;
  };
  const Case cases[] = {
      {"", "empty"},
      {"nope", "missing \":PORT\""},
      {"host:", "missing port"},
      {"host:70000", "0 to 65535"},
      {"host:65536", "0 to 65535"},
      {"host:-1", "0 to 65535"},
      {"host:80x", "0 to 65535"},
      {"host: 80", "0 to 65535"},
      {"host:99999999999999999999999", "0 to 65535"},
      {"::1:80", "needs brackets"},
      {"[::1]", "missing \":PORT\" after \"]\""},
      {"[::1]80", "missing \":PORT\" after \"]\""},
      {"[::1:80", "missing \"]\""},
      {"[zz]:80", "not an IPv6 address"},
      {"[]:80", "not an IPv6 address"},
      {"[127.0.0.1]:80", "not an IPv6 address"},
      {"bad host:80", "a host is"},
      {"a/b:80", "a host is"},
  };
  for (const Case& c : cases) {
    Result<HostPort> hp = parse_host_port(c.text);
    ASSERT_FALSE(hp.ok()) << c.text;
    EXPECT_EQ(hp.status().code(), Code::invalid_argument);
    const std::string& message = hp.status().message();
    EXPECT_TRUE(starts_with(message, "expected HOST:PORT, got \"" + std::string(c.text) + "\" ("))
        << message;
    EXPECT_NE(message.find(c.reason), std::string::npos) << c.text << " -> " << message;
  }
}

// ---- Defaults ----------------------------------------------------------------------------------

TEST(NodeConfigTest, DefaultsMatchTheDocumentedValues) {
  NodeConfig c;
  EXPECT_EQ(c.name, "");
  EXPECT_EQ(c.listen.to_string(), "127.0.0.1:7420");
  ASSERT_TRUE(c.http.has_value());
  EXPECT_EQ(c.http->to_string(), "127.0.0.1:7421");
  EXPECT_EQ(c.data_dir, "cairn-data");
  EXPECT_EQ(c.token_file, "");
  EXPECT_EQ(c.roles, (std::vector<std::string>{"echo", "registry"}));
  EXPECT_EQ(c.io_threads, 2u);
  EXPECT_EQ(c.actor_threads, 2u);
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.max_frame_bytes, 16u << 20);
  EXPECT_EQ(c.max_inflight, 4096u);
  EXPECT_EQ(c.max_pending_output_bytes, 64ull << 20);
  EXPECT_EQ(c.max_connections, 1024u);
  EXPECT_EQ(c.handshake_timeout_ms, 5000u);
  EXPECT_EQ(c.frame_timeout_ms, 10000u);
  EXPECT_EQ(c.write_timeout_ms, 30000u);
  EXPECT_FALSE(c.tls_enabled());
  EXPECT_EQ(c.max_restarts, 5u);
  EXPECT_EQ(c.restart_window_ms, 60000u);
  EXPECT_EQ(c.backoff_initial_ms, 100u);
  EXPECT_EQ(c.backoff_max_ms, 10000u);
  EXPECT_EQ(c.shutdown_grace_ms, 5000u);
}

TEST(NodeConfigTest, EffectiveTokenFileDefaultsIntoDataDir) {
  NodeConfig c;
  EXPECT_EQ(c.effective_token_file(), "cairn-data/tokens");
  c.data_dir = "/var/lib/cairn/";
  EXPECT_EQ(c.effective_token_file(), "/var/lib/cairn/tokens");
  c.token_file = "/etc/cairn/tokens";
  EXPECT_EQ(c.effective_token_file(), "/etc/cairn/tokens");
}

TEST(NodeConfigTest, TlsIsEnabledOnlyWithBothFiles) {
  NodeConfig c;
  c.tls_cert_file = "cert.pem";
  EXPECT_FALSE(c.tls_enabled());
  c.tls_key_file = "key.pem";
  EXPECT_TRUE(c.tls_enabled());
}

TEST(LoadTest, NoSourcesGivesDefaultsNamedAfterTheHost) {
  Result<NodeConfig> c = load_node_config(sources());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->name, hostname());
  EXPECT_FALSE(c->name.empty());
  EXPECT_EQ(describe_values(*c), loaded_defaults());
}

// ---- The settings table ------------------------------------------------------------------------

TEST(SettingsTableTest, OneRowPerSettingInDescribeOrder) {
  const auto& table = node_settings();
  auto described = describe_values(NodeConfig{});
  ASSERT_EQ(table.size(), described.size());
  // Rows per section, so adding a setting is a deliberate change here (train.* belongs to the
  // training role's tests).
  size_t serve_rows = 0, core_rows = 0;
  for (const SettingInfo& row : table) {
    if (row.key.rfind("serve.", 0) == 0) ++serve_rows;
    if (row.key.rfind("serve.", 0) != 0 && row.key.rfind("train.", 0) != 0) ++core_rows;
  }
  EXPECT_EQ(core_rows, 23u);
  EXPECT_EQ(serve_rows, 11u);
  std::set<std::string> keys;
  for (size_t i = 0; i < table.size(); ++i) {
    const SettingInfo& row = table[i];
    EXPECT_EQ(row.key, described[i].first);
    EXPECT_EQ(row.default_value, described[i].second) << row.key;
    EXPECT_TRUE(keys.insert(row.key).second) << "duplicate " << row.key;
    EXPECT_FALSE(row.type.empty()) << row.key;
    EXPECT_FALSE(row.meaning.empty()) << row.key;
    EXPECT_FALSE(row.allowed.empty()) << row.key;
  }
}

TEST(SettingsTableTest, EnvironmentNamesFollowTheKeys) {
  std::map<std::string, std::string> env;
  for (const SettingInfo& row : node_settings()) env[row.key] = row.env;
  EXPECT_EQ(env["node.listen"], "CAIRN_NODE_LISTEN");
  EXPECT_EQ(env["protocol.max_frame_bytes"], "CAIRN_PROTOCOL_MAX_FRAME_BYTES");
  EXPECT_EQ(env["shutdown.grace_ms"], "CAIRN_SHUTDOWN_GRACE_MS");
  EXPECT_EQ(env["tls.cert_file"], "CAIRN_TLS_CERT_FILE");
}

TEST(SettingsTableTest, EveryDefaultTextLoadsBackToTheDefault) {
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const SettingInfo& row : node_settings()) overrides.emplace_back(row.key, row.default_value);
  Result<NodeConfig> c = load_overrides(overrides);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(describe_values(*c), loaded_defaults());
}

TEST(SettingsTableTest, DescribedValuesLoadBack) {
  NodeConfig custom;
  custom.name = "n1";
  custom.listen = {"::1", 0};
  custom.http.reset();
  custom.roles = {"echo", "kv"};
  custom.max_pending_output_bytes = 5ull << 30;
  custom.tls_cert_file = "c.pem";
  custom.tls_key_file = "k.pem";
  std::vector<std::pair<std::string, std::string>> overrides = describe_values(custom);
  Result<NodeConfig> c = load_overrides(overrides, {"echo", "kv"});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(describe_values(*c), describe_values(custom));
}

TEST(SettingsTableTest, DocsListEverySetting) {
  std::string docs = read_text(CAIRN_SOURCE_DIR "/docs/CONFIG.md");
  ASSERT_FALSE(docs.empty());
  for (const SettingInfo& row : node_settings()) {
    EXPECT_NE(docs.find("`" + row.key + "`"), std::string::npos)
        << row.key << " is missing from docs/CONFIG.md";
    EXPECT_NE(docs.find("`" + row.env + "`"), std::string::npos)
        << row.env << " is missing from docs/CONFIG.md";
  }
}

TEST(SettingsTableTest, ShippedNodeYamlHoldsEveryKeyAtItsDefault) {
  ConfigSources s = sources();
  s.file = CAIRN_SOURCE_DIR "/configs/node.yaml";
  Result<NodeConfig> c = load_node_config(s);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(describe_values(*c), loaded_defaults());

  // Every key is written out, so the file documents them all.
  std::string yaml = read_text(s.file);
  for (const SettingInfo& row : node_settings()) {
    std::string leaf = row.key.substr(row.key.find('.') + 1);
    EXPECT_NE(yaml.find("  " + leaf + ":"), std::string::npos)
        << row.key << " is missing from configs/node.yaml";
  }
}

// ---- YAML --------------------------------------------------------------------------------------

TEST_F(ConfigTest, YamlSetsValuesInEverySection) {
  Result<NodeConfig> c = load_yaml(R"(
node:
  name: alpha
  listen: "[::1]:9000"
  http: off
  data_dir: /var/lib/cairn
  token_file: /etc/cairn/tokens
  roles: [echo, kv]
  io_threads: 4
  actor_threads: 8
  log_level: debug
protocol:
  max_frame_bytes: 1MiB
  max_inflight: 10
  max_pending_output_bytes: 2GiB
  max_connections: 7
  handshake_timeout_ms: 50
  frame_timeout_ms: 60
  write_timeout_ms: 70
tls:
  cert_file: cert.pem
  key_file: key.pem
supervisor:
  max_restarts: 0
  restart_window_ms: 1000
  backoff_initial_ms: 0
  backoff_max_ms: 0
shutdown:
  grace_ms: 0
)",
                                   {}, {});
  // kv is unknown by default; the rest of the file is checked first.
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), path() + ": node.roles: unknown role \"kv\"; known roles: echo, registry");

  ConfigSources s = sources();
  s.file = path();
  s.known_roles = {"echo", "kv"};
  c = load_node_config(s);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->name, "alpha");
  EXPECT_EQ(c->listen.host, "::1");
  EXPECT_EQ(c->listen.port, 9000);
  EXPECT_FALSE(c->http.has_value());
  EXPECT_EQ(c->data_dir, "/var/lib/cairn");
  EXPECT_EQ(c->effective_token_file(), "/etc/cairn/tokens");
  EXPECT_EQ(c->roles, (std::vector<std::string>{"echo", "kv"}));
  EXPECT_EQ(c->io_threads, 4u);
  EXPECT_EQ(c->actor_threads, 8u);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->max_frame_bytes, 1u << 20);
  EXPECT_EQ(c->max_inflight, 10u);
  EXPECT_EQ(c->max_pending_output_bytes, 2ull << 30);
  EXPECT_EQ(c->max_connections, 7u);
  EXPECT_EQ(c->handshake_timeout_ms, 50u);
  EXPECT_EQ(c->frame_timeout_ms, 60u);
  EXPECT_EQ(c->write_timeout_ms, 70u);
  EXPECT_TRUE(c->tls_enabled());
  EXPECT_EQ(c->tls_cert_file, "cert.pem");
  EXPECT_EQ(c->tls_key_file, "key.pem");
  EXPECT_EQ(c->max_restarts, 0u);
  EXPECT_EQ(c->restart_window_ms, 1000u);
  EXPECT_EQ(c->backoff_initial_ms, 0u);
  EXPECT_EQ(c->backoff_max_ms, 0u);
  EXPECT_EQ(c->shutdown_grace_ms, 0u);
}

TEST_F(ConfigTest, KeysLeftOutKeepTheirDefaults) {
  Result<NodeConfig> c = load_yaml("node:\n  io_threads: 3\n");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto expected = loaded_defaults();
  for (auto& [key, value] : expected) {
    if (key == "node.io_threads") value = "3";
  }
  EXPECT_EQ(describe_values(*c), expected);
}

TEST_F(ConfigTest, EmptyFileCommentsAndEmptySectionsAreDefaults) {
  for (const char* yaml : {"", "# nothing here\n", "node:\ntls:\n", "---\n"}) {
    Result<NodeConfig> c = load_yaml(yaml);
    ASSERT_TRUE(c.ok()) << yaml << ": " << c.status().to_string();
    EXPECT_EQ(describe_values(*c), loaded_defaults()) << yaml;
  }
}

TEST_F(ConfigTest, RolesAcceptListsCommaTextAndEmpty) {
  ConfigSources s = sources();
  s.known_roles = {"echo", "kv"};
  s.file = write_yaml("node:\n  roles: echo, kv\n");
  Result<NodeConfig> c = load_node_config(s);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->roles, (std::vector<std::string>{"echo", "kv"}));

  s.file = write_yaml("node:\n  roles: []\n");
  c = load_node_config(s);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->roles.empty());
}

TEST_F(ConfigTest, HttpCanBeTurnedOff) {
  for (const char* value : {"off", "\"\"", ""}) {
    Result<NodeConfig> c = load_yaml(std::string("node:\n  http: ") + value + "\n");
    ASSERT_TRUE(c.ok()) << value << ": " << c.status().to_string();
    EXPECT_FALSE(c->http.has_value()) << value;
    EXPECT_EQ(values(*c)["node.http"], "off");
  }
}

TEST_F(ConfigTest, MalformedYamlNamesFileLineAndColumn) {
  std::string message = yaml_error("node:\n  io_threads: 2\n  listen: [1, 2\n");
  EXPECT_TRUE(starts_with(message, path() + ":4:1: malformed YAML: ")) << message;

  message = yaml_error("node:\n  io_threads: 2\n   bad: x\n");
  EXPECT_TRUE(starts_with(message, path() + ":3:7: malformed YAML: ")) << message;
}

TEST_F(ConfigTest, MissingFileIsNotFound) {
  ConfigSources s = sources();
  s.file = path("absent.yaml");
  Result<NodeConfig> c = load_node_config(s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::not_found);
  EXPECT_TRUE(starts_with(c.status().message(), s.file + ": cannot open")) << c.status().message();
}

TEST_F(ConfigTest, UnknownKeysNameKeyAndFileAndSuggest) {
  EXPECT_EQ(
      yaml_error("protocol:\n  max_frame_byte: 1024\n"),
      path() +
          ": unknown key \"protocol.max_frame_byte\" (did you mean \"protocol.max_frame_bytes\"?)");
  EXPECT_EQ(yaml_error("nod:\n  name: x\n"),
            path() + ": unknown key \"nod\" (did you mean \"node\"?)");
  EXPECT_EQ(yaml_error("node:\n  grace_ms: 5\n"),
            path() + ": unknown key \"node.grace_ms\" (did you mean \"shutdown.grace_ms\"?)");
  EXPECT_EQ(yaml_error("node:\n  colour: blue\n"), path() + ": unknown key \"node.colour\"");
  EXPECT_EQ(yaml_error("database:\n  url: x\n"), path() + ": unknown key \"database\"");
  std::string flat = yaml_error("node.listen: 127.0.0.1:1\n");
  EXPECT_TRUE(starts_with(flat, path() + ": unknown key \"node.listen\" (settings are nested"))
      << flat;
}

TEST_F(ConfigTest, DuplicateKeysAreErrors) {
  EXPECT_EQ(yaml_error("node:\n  io_threads: 2\n  io_threads: 3\n"),
            path() + ": node.io_threads: appears twice");
  EXPECT_EQ(yaml_error("node:\n  io_threads: 2\nnode:\n  name: x\n"),
            path() + ": node: appears twice");
}

TEST_F(ConfigTest, WrongShapesAreErrors) {
  // The sections in table order: node, protocol, tls, supervisor, shutdown, then those of the roles.
  std::vector<std::string> sections;
  for (const SettingInfo& row : node_settings()) {
    std::string section = row.key.substr(0, row.key.find('.'));
    if (std::find(sections.begin(), sections.end(), section) == sections.end()) sections.push_back(section);
  }
  std::string listed;
  for (const auto& section : sections) listed += (listed.empty() ? "" : ", ") + section;
  EXPECT_EQ(listed.rfind("node, protocol, tls, supervisor, shutdown", 0), 0u) << listed;
  EXPECT_EQ(yaml_error("- node\n"), path() + ": expected a map of sections (" + listed + ") at the top level");
  EXPECT_EQ(yaml_error("node: 5\n"), path() + ": node: expected a map of settings, got \"5\"");
  EXPECT_EQ(
      yaml_error("node:\n  io_threads: [1, 2]\n"),
      path() + ": node.io_threads: expected an integer from 1 to 64, got a list [\"1\", \"2\"]");
  EXPECT_EQ(yaml_error("node:\n  listen: {host: x}\n"),
            path() +
                ": node.listen: expected HOST:PORT, got a map (in YAML, quote IPv6 addresses: "
                "\"[::1]:7420\")");
  EXPECT_EQ(yaml_error("node:\n  roles: {a: b}\n"),
            path() + ": node.roles: expected a list of role names, got a map");
  EXPECT_EQ(yaml_error("node:\n  io_threads: true\n"),
            path() + ": node.io_threads: expected an integer from 1 to 64, got \"true\"");
  EXPECT_EQ(yaml_error("node:\n  io_threads:\n"),
            path() + ": node.io_threads: expected an integer from 1 to 64, got \"\"");
}

TEST_F(ConfigTest, BadFileValueNamesFileKeyValueAndRange) {
  std::string message = yaml_error("protocol:\n  max_frame_bytes: huge\n");
  EXPECT_TRUE(
      starts_with(message, path() + ": protocol.max_frame_bytes: expected an integer from 1024 to "
                                    "1073741824, got \"huge\""))
      << message;
}

// ---- Environment -------------------------------------------------------------------------------

TEST(EnvironmentTest, OverridesDefaults) {
  ConfigSources s = sources({{"CAIRN_NODE_LISTEN", ":0"},
                             {"CAIRN_NODE_HTTP", "off"},
                             {"CAIRN_NODE_ROLES", "echo, kv"},
                             {"CAIRN_PROTOCOL_MAX_FRAME_BYTES", "4MiB"},
                             {"CAIRN_SHUTDOWN_GRACE_MS", "250"},
                             {"CAIRN_NODE_NAME", "from-env"},
                             {"UNRELATED", "x"}});
  s.known_roles = {"echo", "kv"};
  Result<NodeConfig> c = load_node_config(s);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->listen.to_string(), "0.0.0.0:0");
  EXPECT_FALSE(c->http.has_value());
  EXPECT_EQ(c->roles, (std::vector<std::string>{"echo", "kv"}));
  EXPECT_EQ(c->max_frame_bytes, 4u << 20);
  EXPECT_EQ(c->shutdown_grace_ms, 250u);
  EXPECT_EQ(c->name, "from-env");
}

TEST(EnvironmentTest, LooksUpExactlyTheTableNames) {
  std::set<std::string> asked;
  ConfigSources s;
  s.getenv = [&asked](const std::string& name) -> std::optional<std::string> {
    asked.insert(name);
    return std::nullopt;
  };
  ASSERT_TRUE(load_node_config(s).ok());
  std::set<std::string> expected;
  for (const SettingInfo& row : node_settings()) expected.insert(row.env);
  EXPECT_EQ(asked, expected);
}

TEST(EnvironmentTest, NullGetenvReadsTheProcessEnvironment) {
  ASSERT_EQ(setenv("CAIRN_NODE_ACTOR_THREADS", "7", 1), 0);
  ConfigSources real;
  Result<NodeConfig> from_process = load_node_config(real);
  Result<NodeConfig> injected = load_node_config(sources());
  ASSERT_EQ(unsetenv("CAIRN_NODE_ACTOR_THREADS"), 0);
  ASSERT_TRUE(from_process.ok()) << from_process.status().to_string();
  EXPECT_EQ(from_process->actor_threads, 7u);
  ASSERT_TRUE(injected.ok());
  EXPECT_EQ(injected->actor_threads, 2u);
}

TEST(EnvironmentTest, BadValueNamesVariableKeyAndValue) {
  Result<NodeConfig> c = load_node_config(sources({{"CAIRN_NODE_LISTEN", "nope"}}));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::invalid_argument);
  EXPECT_EQ(c.status().message(),
            "environment CAIRN_NODE_LISTEN: node.listen: expected HOST:PORT, got \"nope\" (missing "
            "\":PORT\")");
}

// ---- Precedence --------------------------------------------------------------------------------

TEST_F(ConfigTest, PrecedenceIsDefaultsFileEnvironmentOverrides) {
  std::string yaml = "node:\n  io_threads: 3\n  actor_threads: 3\n  log_level: warn\n";
  Env env = {{"CAIRN_NODE_ACTOR_THREADS", "5"}, {"CAIRN_NODE_LOG_LEVEL", "error"}};
  Result<NodeConfig> c = load_yaml(yaml, env, {{"node.log_level", "trace"}});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->io_threads, 3u);       // file over default
  EXPECT_EQ(c->actor_threads, 5u);    // environment over file
  EXPECT_EQ(c->log_level, "trace");   // override over environment
  EXPECT_EQ(c->max_inflight, 4096u);  // default
}

TEST(OverrideTest, LaterOverridesWin) {
  Result<NodeConfig> c = load_overrides({{"node.io_threads", "3"}, {"node.io_threads", "4"}});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->io_threads, 4u);
}

TEST_F(ConfigTest, BadValueIsAnErrorEvenWhenALaterSourceReplacesIt) {
  Result<NodeConfig> c = load_yaml("node:\n  io_threads: 0\n", {}, {{"node.io_threads", "4"}});
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(starts_with(c.status().message(), path() + ": node.io_threads: "))
      << c.status().message();
}

TEST(OverrideTest, UnknownKeySuggests) {
  EXPECT_EQ(override_error({{"node.lisen", "x"}}),
            "command line: unknown key \"node.lisen\" (did you mean \"node.listen\"?)");
}

TEST(OverrideTest, BadValueNamesSourceKeyValue) {
  EXPECT_EQ(override_error({{"node.listen", "127.0.0.1:70000"}}),
            "command line: node.listen: expected HOST:PORT, got \"127.0.0.1:70000\" (the port must "
            "be an integer "
            "from 0 to 65535)");
}

// ---- Bad values, one by one --------------------------------------------------------------------

struct BadValue {
  const char* key;
  std::string value;
  const char* expected;  // the message after "command line: <key>: expected "
};

TEST(BadValueTest, EveryKindOfBadValueIsRejected) {
  const char* kName = "a name of letters, digits, \".\", \"-\" and \"_\", at most 253 characters";
  const BadValue cases[] = {
      {"node.io_threads", "0", "an integer from 1 to 64"},
      {"node.io_threads", "65", "an integer from 1 to 64"},
      {"node.io_threads", "-1", "an integer from 1 to 64"},
      {"node.io_threads", "two", "an integer from 1 to 64"},
      {"node.io_threads", "1.5", "an integer from 1 to 64"},
      {"node.io_threads", "0x10", "an integer from 1 to 64"},
      {"node.io_threads", "1e1", "an integer from 1 to 64"},
      {"node.io_threads", "+2", "an integer from 1 to 64"},
      {"node.io_threads", " 2", "an integer from 1 to 64"},
      {"node.io_threads", "2 ", "an integer from 1 to 64"},
      {"node.io_threads", "true", "an integer from 1 to 64"},
      {"node.io_threads", "", "an integer from 1 to 64"},
      {"node.io_threads", "4294967298", "an integer from 1 to 64"},
      {"node.io_threads", "99999999999999999999999", "an integer from 1 to 64"},
      {"node.io_threads", "1KiB", "an integer from 1 to 64"},
      {"node.actor_threads", "0", "an integer from 1 to 64"},
      {"protocol.max_frame_bytes", "huge", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "1023", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "2GiB", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "16MB", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "16 MiB", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "1TiB", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "-5", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "18446744073709551616", "an integer from 1024 to 1073741824"},
      {"protocol.max_frame_bytes", "17179869184GiB", "an integer from 1024 to 1073741824"},
      {"protocol.max_pending_output_bytes", "1000", "an integer from 1024 to 1099511627776"},
      {"protocol.max_inflight", "0", "an integer from 1 to 1000000"},
      {"protocol.max_inflight", "1000001", "an integer from 1 to 1000000"},
      {"protocol.max_connections", "0", "an integer from 1 to 1000000"},
      {"protocol.handshake_timeout_ms", "0", "an integer from 1 to 3600000"},
      {"protocol.frame_timeout_ms", "3600001", "an integer from 1 to 3600000"},
      {"protocol.write_timeout_ms", "5s", "an integer from 1 to 3600000"},
      {"supervisor.max_restarts", "10001", "an integer from 0 to 10000"},
      {"supervisor.restart_window_ms", "0", "an integer from 1 to 86400000"},
      {"supervisor.backoff_initial_ms", "-100", "an integer from 0 to 3600000"},
      {"supervisor.backoff_max_ms", "1h", "an integer from 0 to 3600000"},
      {"shutdown.grace_ms", "soon", "an integer from 0 to 3600000"},
      {"node.log_level", "verbose", "one of trace, debug, info, warn, error, off"},
      {"node.log_level", "INFO", "one of trace, debug, info, warn, error, off"},
      {"node.log_level", "", "one of trace, debug, info, warn, error, off"},
      {"node.listen", "nope", "HOST:PORT"},
      {"node.listen", "", "HOST:PORT"},
      {"node.listen", "off", "HOST:PORT"},
      {"node.http", "on", "HOST:PORT or off"},
      {"node.http", "1.2.3.4:99999", "HOST:PORT or off"},
      {"node.name", "my node", kName},
      {"node.name", "a/b", kName},
      {"node.name", std::string(254, 'n'), kName},
      {"node.data_dir", "", "a non-empty path"},
      {"node.roles", "echo,,echo", "a list of role names"},
      {"node.roles", ",", "a list of role names"},
      {"node.roles", "bad role", "a list of role names"},
      {"serve.models", "tiny", "a list of NAME=SOURCE"},
      {"serve.models", "tiny=/m,", "a list of NAME=SOURCE"},
  };
  for (const BadValue& c : cases) {
    std::string message = override_error({{c.key, c.value}});
    std::string prefix =
        "command line: " + std::string(c.key) + ": expected " + c.expected + ", got \"";
    EXPECT_TRUE(starts_with(message, prefix)) << c.key << "=" << c.value << " -> " << message;
    EXPECT_NE(message.find("\"" + c.value + "\""), std::string::npos)
        << c.key << "=" << c.value << " -> " << message;
  }
}

TEST(BadValueTest, ControlCharactersAreEscapedInMessages) {
  EXPECT_EQ(
      override_error({{"node.log_level", "in\nfo\""}}),
      "command line: node.log_level: expected one of trace, debug, info, warn, error, off, got "
      "\"in\\x0afo\\\"\"");
}

TEST(GoodValueTest, EdgesOfEachRangeAreAccepted) {
  Result<NodeConfig> c = load_overrides({{"node.io_threads", "64"},
                                         {"node.actor_threads", "1"},
                                         {"protocol.max_frame_bytes", "1GiB"},
                                         {"protocol.max_pending_output_bytes", "1073741824"},
                                         {"protocol.max_inflight", "1000000"},
                                         {"supervisor.max_restarts", "0"},
                                         {"node.name", std::string(253, 'n')},
                                         {"node.io_threads", "007"}});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->io_threads, 7u);
  EXPECT_EQ(c->max_frame_bytes, 1u << 30);
  EXPECT_EQ(c->max_pending_output_bytes, 1ull << 30);
}

// ---- Checks across settings --------------------------------------------------------------------

TEST(CrossFieldTest, TlsNeedsBothFiles) {
  EXPECT_EQ(override_error({{"tls.cert_file", "cert.pem"}}),
            "command line: tls.cert_file: is set but tls.key_file is not; set both to enable TLS, "
            "or neither");
  EXPECT_EQ(override_error({{"tls.key_file", "key.pem"}}),
            "command line: tls.key_file: is set but tls.cert_file is not; set both to enable TLS, "
            "or neither");
  Result<NodeConfig> c =
      load_overrides({{"tls.cert_file", "cert.pem"}, {"tls.key_file", "key.pem"}});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->tls_enabled());
}

TEST_F(ConfigTest, BackoffMaxBelowInitialNamesBothSources) {
  Result<NodeConfig> c = load_yaml("supervisor:\n  backoff_initial_ms: 500\n",
                                   {{"CAIRN_SUPERVISOR_BACKOFF_MAX_MS", "100"}});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(
      c.status().message(),
      "environment CAIRN_SUPERVISOR_BACKOFF_MAX_MS: supervisor.backoff_max_ms: expected at least "
      "supervisor.backoff_initial_ms (500 from " +
          path() + "), got 100");

  // Raising the initial delay past the default maximum blames the initial delay.
  EXPECT_EQ(override_error({{"supervisor.backoff_initial_ms", "20000"}}),
            "command line: supervisor.backoff_initial_ms: expected at most "
            "supervisor.backoff_max_ms (10000 from "
            "defaults), got 20000");
  ASSERT_TRUE(load_overrides(
                  {{"supervisor.backoff_initial_ms", "300"}, {"supervisor.backoff_max_ms", "300"}})
                  .ok());
}

TEST(CrossFieldTest, PendingOutputMustHoldAFrame) {
  EXPECT_EQ(override_error({{"protocol.max_frame_bytes", "128MiB"}}),
            "command line: protocol.max_frame_bytes: expected at most "
            "protocol.max_pending_output_bytes (67108864 "
            "from defaults), got 134217728");
  EXPECT_EQ(
      override_error({{"protocol.max_pending_output_bytes", "1MiB"}}),
      "command line: protocol.max_pending_output_bytes: expected at least protocol.max_frame_bytes "
      "(16777216 from defaults), got 1048576");
  ASSERT_TRUE(load_overrides({{"protocol.max_frame_bytes", "128MiB"},
                              {"protocol.max_pending_output_bytes", "128MiB"}})
                  .ok());
}

TEST(CrossFieldTest, RolesMustBeKnownAndDistinct) {
  EXPECT_EQ(override_error({{"node.roles", "echo,kv"}}),
            "command line: node.roles: unknown role \"kv\"; known roles: echo, registry");
  EXPECT_EQ(override_error({{"node.roles", "echo,kv"}}, {"echo", "gpu"}),
            "command line: node.roles: unknown role \"kv\"; known roles: echo, gpu");
  EXPECT_EQ(override_error({{"node.roles", "echo, echo"}}),
            "command line: node.roles: role \"echo\" is listed more than once");
  // The default role is checked too.
  EXPECT_EQ(override_error({}, {"kv"}),
            "defaults: node.roles: unknown role \"echo\"; known roles: kv");
  EXPECT_EQ(override_error({}, {}),
            "defaults: node.roles: unknown role \"echo\"; known roles: none");

  Result<NodeConfig> none = load_overrides({{"node.roles", ""}}, {});
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  EXPECT_TRUE(none->roles.empty());
}

TEST(CrossFieldTest, HttpMustNotShareTheListenAddress) {
  EXPECT_EQ(
      override_error({{"node.http", "127.0.0.1:7420"}}),
      "command line: node.http: expected an address other than node.listen (127.0.0.1:7420 from "
      "defaults), got \"127.0.0.1:7420\"");
  EXPECT_EQ(
      override_error({{"node.listen", ":7421"}}),
      "command line: node.listen: expected an address other than node.http (127.0.0.1:7421 from "
      "defaults), got \"0.0.0.0:7421\"");
  // Port 0 picks two different free ports; other hosts or "off" do not clash.
  EXPECT_TRUE(load_overrides({{"node.listen", "127.0.0.1:0"}, {"node.http", "127.0.0.1:0"}}).ok());
  EXPECT_TRUE(load_overrides({{"node.listen", "127.0.0.2:7421"}}).ok());
  EXPECT_TRUE(load_overrides({{"node.listen", "127.0.0.1:7421"}, {"node.http", "off"}}).ok());
}

}  // namespace
}  // namespace cairn
