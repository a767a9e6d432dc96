// Client commands: talk to a running node over the protocol.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <optional>

#include <nlohmann/json.hpp>

#include "cairn/client.h"
#include "cli/commands.h"
#include "cluster/detail/mlflow_json.h"
#include "runtime/messages/infer.h"
#include "cluster/auth.h"
#include "runtime/config.h"

namespace cairn::cli {

using nlohmann::json;

std::chrono::milliseconds timeout_of(const ConnectArgs& args) {
  return std::chrono::milliseconds(static_cast<int64_t>(args.timeout_s * 1000));
}

int report_error(const ConnectArgs& args, const std::string& command, const Status& status) {
  if (args.json) {
    std::cout << json{{"error", {{"code", code_name(status.code())}, {"message", status.message()}}}}.dump() << "\n";
  } else {
    std::cerr << "cairn " << command << ": " << status.to_string() << "\n";
  }
  return status.code() == Code::unavailable ? kExitUnavailable : kExitError;
}

Result<std::unique_ptr<Client>> open_client(const ConnectArgs& args) {
  ClientOptions options = ClientOptions::from_env();
  if (!args.address.empty()) options.address = args.address;
  if (!args.token.empty()) options.token = args.token;
  if (!args.token_file.empty()) {
    auto tokens = TokenStore::load(args.token_file);
    if (!tokens.ok()) return tokens.status().with_context("--token-file");
    options.token = tokens->first_token(Role::admin);
    if (options.token.empty()) options.token = tokens->first_token(Role::client);
  }
  if (options.token.empty()) {
    return Status(Code::unauthenticated, "no token: pass --token, --token-file or set CAIRN_TOKEN");
  }
  if (auto address = parse_host_port(options.address); !address.ok()) {
    return address.status().with_context("--connect");
  }
  options.tls = args.tls;
  options.tls_ca_file = args.tls_ca;
  options.tls_verify = !args.insecure;
  options.connect_timeout = timeout_of(args);
  options.call_timeout = timeout_of(args);
  options.reconnect = false;  // one-shot commands fail fast instead of waiting for the node
  options.client_name = "cairn-cli";
  return Client::connect(options);
}

namespace {

json status_json(const msg::NodeStatus& s) {
  json actors = json::array();
  for (const auto& a : s.actors) {
    actors.push_back({{"name", a.name}, {"state", a.state}, {"restarts", a.restarts}, {"mailbox", a.mailbox},
                      {"last_error", a.last_error}});
  }
  return {{"node", s.node},         {"node_id", s.node_id},       {"version", s.version},
          {"state", s.state},       {"pid", s.pid},               {"uptime_ms", s.uptime_ms},
          {"boot_count", s.boot_count}, {"data_dir", s.data_dir}, {"protocol", s.protocol},
          {"http", s.http},         {"tls", s.tls},               {"connections", s.connections},
          {"actors", actors}};
}

void print_status(const msg::NodeStatus& s) {
  const std::string uptime = format_duration(static_cast<double>(s.uptime_ms) / 1000.0, 1);
  std::cout << "node      " << s.node << " (" << s.node_id << ")\n"
            << "state     " << s.state << ", up " << uptime << ", boot #" << s.boot_count
            << ", pid " << s.pid << ", cairn " << s.version << "\n"
            << "protocol  " << s.protocol << (s.tls ? " (TLS)" : "") << "   http " << (s.http.empty() ? "off" : s.http)
            << "   connections " << s.connections << "\n"
            << "data      " << s.data_dir << "\n\n";
  size_t width = 5;
  for (const auto& a : s.actors) width = std::max(width, a.name.size());
  std::printf("%-*s  %-10s  %8s  %7s  %s\n", static_cast<int>(width), "ACTOR", "STATE", "RESTARTS", "MAILBOX",
              "LAST ERROR");
  for (const auto& a : s.actors) {
    std::string mailbox = a.mailbox < 0 ? "?" : std::to_string(a.mailbox);
    std::printf("%-*s  %-10s  %8lu  %7s  %s\n", static_cast<int>(width), a.name.c_str(), a.state.c_str(),
                static_cast<unsigned long>(a.restarts), mailbox.c_str(), a.last_error.c_str());
  }
}

int cmd_status(const ConnectArgs& args) {
  auto client = open_client(args);
  if (!client.ok()) return report_error(args, "status", client.status());
  auto status = (*client)->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, timeout_of(args));
  if (!status.ok()) return report_error(args, "status", status.status());
  // A node serving models also shows them: which are loading, retrying, ready or failed.
  std::optional<Result<msg::InferModelsReply>> models;
  if (find_if(status->actors.begin(), status->actors.end(), [](const auto& a) { return a.name == "inference"; }) !=
      status->actors.end()) {
    models = (*client)->call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{}, timeout_of(args));
  }
  if (args.json) {
    json out = status_json(*status);
    if (models && models->ok()) out["models"] = mlflow_json::encode(**models)["models"];
    std::cout << out.dump() << "\n";
  } else {
    print_status(*status);
    if (models) {
      std::cout << "\n";
      if (models->ok()) {
        print_served_models(**models);
      } else {
        std::cout << "models: " << models->status().message() << "\n";
      }
    }
  }
  return status->state == "running" ? kExitOk : kExitError;
}

int cmd_ping(const ConnectArgs& args, int count) {
  auto client = open_client(args);
  if (!client.ok()) return report_error(args, "ping", client.status());
  std::vector<double> rtts_ms;
  for (int i = 0; i < count; ++i) {
    auto rtt = (*client)->ping(timeout_of(args));
    if (!rtt.ok()) return report_error(args, "ping", rtt.status());
    rtts_ms.push_back(static_cast<double>(rtt->count()) / 1e6);
    if (!args.json) {
      std::printf("pong from %s (%s): %.3f ms\n", (*client)->welcome().node.c_str(), (*client)->address().c_str(),
                  rtts_ms.back());
    }
  }
  auto sorted = rtts_ms;
  std::sort(sorted.begin(), sorted.end());
  double avg = std::accumulate(sorted.begin(), sorted.end(), 0.0) / static_cast<double>(sorted.size());
  if (args.json) {
    std::cout << json{{"node", (*client)->welcome().node}, {"count", count}, {"rtt_ms", rtts_ms},
                      {"min_ms", sorted.front()}, {"avg_ms", avg}, {"max_ms", sorted.back()}}
                     .dump()
              << "\n";
  } else if (count > 1) {
    std::printf("%d pings: min %.3f ms, avg %.3f ms, max %.3f ms\n", count, sorted.front(), avg, sorted.back());
  }
  return kExitOk;
}

template <class Request>
int cmd_admin(const ConnectArgs& args, const std::string& command, std::string_view op, const Request& request,
              const std::string& done_text) {
  auto client = open_client(args);
  if (!client.ok()) return report_error(args, command, client.status());
  auto reply = (*client)->call(op, wire::encode(request), timeout_of(args));
  if (!reply.ok()) return report_error(args, command, reply.status());
  if (args.json) {
    std::cout << json{{"ok", true}}.dump() << "\n";
  } else {
    std::cout << done_text << "\n";
  }
  return kExitOk;
}

}  // namespace

void add_connect_flags(CLI::App& command, ConnectArgs& args) {
  command.add_option("--connect", args.address, "Node address HOST:PORT (default: $CAIRN_ADDR, else 127.0.0.1:7420)");
  command.add_option("--token", args.token, "Access token (default: $CAIRN_TOKEN)");
  command.add_option("--token-file", args.token_file, "Read the token from a node token file");
  command.add_flag("--tls", args.tls, "Connect over TLS");
  command.add_option("--tls-ca", args.tls_ca, "PEM file of the CA that signed the node's certificate");
  command.add_flag("--insecure", args.insecure, "Do not verify the node's TLS certificate");
  command.add_option("--timeout", args.timeout_s, "Seconds to wait for the node")->check(CLI::PositiveNumber);
  command.add_flag("--json", args.json, "Machine-readable output");
}

void add_client_commands(CLI::App& app) {
  auto args = std::make_shared<ConnectArgs>();

  auto* status = app.add_subcommand("status", "Show a node's state and its actors");
  add_connect_flags(*status, *args);
  status->callback([args] { std::exit(cmd_status(*args)); });

  auto count = std::make_shared<int>(1);
  auto* ping = app.add_subcommand("ping", "Measure the round trip to a node");
  add_connect_flags(*ping, *args);
  ping->add_option("-c,--count", *count, "Number of pings")->check(CLI::Range(1, 1000000));
  ping->callback([args, count] { std::exit(cmd_ping(*args, *count)); });

  auto* admin = app.add_subcommand("admin", "Node administration (needs an admin token)");
  admin->require_subcommand(1);

  auto* shutdown = admin->add_subcommand("shutdown", "Stop the node gracefully");
  add_connect_flags(*shutdown, *args);
  shutdown->callback([args] { std::exit(cmd_admin(*args, "admin shutdown", msg::kShutdown, msg::Empty{}, "node is shutting down")); });

  auto actor = std::make_shared<std::string>();
  auto* kill = admin->add_subcommand("kill-actor", "Kill an actor as if it crashed (the supervisor restarts it)");
  add_connect_flags(*kill, *args);
  kill->add_option("name", *actor, "Actor name, as `cairn status` lists it")->required();
  kill->callback([args, actor] {
    std::exit(cmd_admin(*args, "admin kill-actor", msg::kKillActor, msg::KillActor{*actor}, "killed " + *actor));
  });

  auto level = std::make_shared<std::string>();
  auto* log_level = admin->add_subcommand("log-level", "Change the node's log level");
  add_connect_flags(*log_level, *args);
  log_level->add_option("level", *level, "trace, debug, info, warn, error or off")->required();
  log_level->callback([args, level] {
    std::exit(cmd_admin(*args, "admin log-level", msg::kSetLogLevel, msg::SetLogLevel{*level}, "log level set to " + *level));
  });
}

}  // namespace cairn::cli
