// `cairn`: launches nodes and talks to them.
#include <iostream>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "runtime/version.h"

int main(int argc, char** argv) {
  CLI::App app{"Cairn: an actor runtime for training, tracking, registering and serving language models."};
  app.set_version_flag("--version", std::string("cairn ") + cairn::kCairnVersion);
  app.require_subcommand(1);

  cairn::cli::NodeArgs node_args;
  auto* node = app.add_subcommand("node", "Launch a node (every role in one process by default)");
  node->add_option("--config", node_args.config_file, "YAML config file (see configs/node.yaml)")
      ->check(CLI::ExistingFile);
  auto flag_to_key = [&](const char* flag, const char* key, const char* help) {
    node->add_option_function<std::string>(
        flag, [&node_args, key](const std::string& value) { node_args.overrides.emplace_back(key, value); }, help);
  };
  flag_to_key("--listen", "node.listen", "HOST:PORT for the msgpack protocol (port 0 picks a free port)");
  flag_to_key("--http", "node.http", "HOST:PORT for HTTP (/health), or \"off\"");
  flag_to_key("--data-dir", "node.data_dir", "Directory for the node's database and files");
  flag_to_key("--token-file", "node.token_file", "Token file: lines of \"<role> <token>\"");
  flag_to_key("--name", "node.name", "Node name (default: the hostname)");
  flag_to_key("--log-level", "node.log_level", "trace, debug, info, warn, error or off");
  node->add_option_function<std::vector<std::string>>(
      "--serve",
      [&node_args](const std::vector<std::string>& specs) {
        std::string joined;
        for (const auto& spec : specs) joined += (joined.empty() ? "" : ",") + spec;
        node_args.overrides.emplace_back("serve.models", joined);
      },
      "NAME=SOURCE: serve a model (a Hugging Face folder, MODEL@ALIAS or MODEL/VERSION; a LoRA adapter version runs "
      "on its base); repeatable; turns on the inference role. The ready line waits until each has loaded, failed or "
      "is retrying a registry source not there yet, and names their states; GET /health is 200 once all are ready "
      "(docs/SERVING.md)");
  node->callback([&] { std::exit(cairn::cli::run_node(node_args)); });

  cairn::cli::add_client_commands(app);
  cairn::cli::add_config_commands(app);
  cairn::cli::add_model_commands(app);
  cairn::cli::add_registry_commands(app);
  cairn::cli::add_tokenizer_commands(app);
  cairn::cli::add_train_commands(app);
  cairn::cli::add_serve_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
