// The `cairn` subcommands. Each returns the process exit code.
#pragma once

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "cairn/client.h"
#include "runtime/status.h"

namespace cairn::msg {
struct InferModelsReply;
}

namespace cairn::cli {

// Exit codes shared by every command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;         // bad input, or the node answered with an error
inline constexpr int kExitUnavailable = 2;   // could not reach the node
inline constexpr int kExitEscalated = 3;     // the node stopped because an actor spent its restart budget

// `cairn node`: flags map to config keys and override the file and environment.
struct NodeArgs {
  std::string config_file;
  std::vector<std::pair<std::string, std::string>> overrides;
};
int run_node(const NodeArgs& args);

// Flags every client command takes.
struct ConnectArgs {
  std::string address;   // --connect, else CAIRN_ADDR, else 127.0.0.1:7420
  std::string token;     // --token, else CAIRN_TOKEN
  std::string token_file;  // --token-file: read the first admin (else client) token from it
  bool tls = false;
  std::string tls_ca;
  bool insecure = false;
  double timeout_s = 10;
  bool json = false;
};
void add_connect_flags(CLI::App& command, ConnectArgs& args);
// Adds the client subcommand `name` of `parent` with the connect flags bound to `*args`; when it is
// chosen, the process exits with `run()`, the command's exit code.
template <class Run>
CLI::App* leaf(CLI::App& parent, const std::string& name, const std::string& help,
               const std::shared_ptr<ConnectArgs>& args, Run run) {
  auto* command = parent.add_subcommand(name, help);
  add_connect_flags(*command, *args);
  command->callback([run] { std::exit(run()); });
  return command;
}
// A client for `args` (one-shot: no reconnect; --timeout for connecting and for each call).
Result<std::unique_ptr<Client>> open_client(const ConnectArgs& args);
// --timeout as a duration.
std::chrono::milliseconds timeout_of(const ConnectArgs& args);
// Prints an error the way every client command does (JSON on stdout with --json, else
// "cairn <command>: <code>: <message>" on stderr) and returns the exit code for it.
int report_error(const ConnectArgs& args, const std::string& command, const Status& status);

// Text output shared by the client commands (cli/registry_commands.cc).
std::string format_time(int64_t unix_ms);  // "2024-05-01 12:34:56Z"; "-" for <= 0
std::string format_bytes(double bytes);    // "1.5 MiB"
std::string format_value(double value);    // %.6g
// "4s" ("4.2s" with second_decimals 1) under a minute, then "12m05s", "3h07m" (rounded to the
// second); "?" for a negative, NaN or absurd (over 1e8 s) value.
std::string format_duration(double seconds, int second_decimals);
// Column-aligned text table on stdout: a header row, then rows; the last column is not padded.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
// One line of ▁▂▃▄▅▆▇█ for `values`, at most `width` characters.
std::string sparkline(const std::vector<double>& values, size_t width);

void add_client_commands(CLI::App& app);
void add_config_commands(CLI::App& app);
// cli/model_commands.cc: `cairn generate`.
void add_model_commands(CLI::App& app);
// cli/registry_commands.cc: `cairn experiments|runs|models ...` and `cairn gc`.
void add_registry_commands(CLI::App& app);
// cli/tokenizer_commands.cc: `cairn tokenize`, `cairn detokenize`, `cairn tokenizer train`.
void add_tokenizer_commands(CLI::App& app);
// cli/train_commands.cc: `cairn train submit|status|list|cancel|logs`.
void add_train_commands(CLI::App& app);
// cli/serve_commands.cc: `cairn serve load|unload|list|stats`, `cairn complete`, `cairn chat`.
void add_serve_commands(CLI::App& app);
// The `cairn serve list` table (also under `cairn status` when the node serves models).
void print_served_models(const msg::InferModelsReply& reply);

}  // namespace cairn::cli
