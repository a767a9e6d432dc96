// `cairn config`: the settings table, and checking a config file without starting a node.
#include <iostream>

#include <nlohmann/json.hpp>

#include "actors/supervisor.h"
#include "cli/commands.h"
#include "runtime/config.h"

namespace cairn::cli {

void add_config_commands(CLI::App& app) {
  auto* config = app.add_subcommand("config", "Node settings: list them, or check a config file");
  config->require_subcommand(1);

  auto json_out = std::make_shared<bool>(false);
  auto* settings = config->add_subcommand("settings", "Every setting with its default, environment variable and meaning");
  settings->add_flag("--json", *json_out, "Machine-readable output");
  settings->callback([json_out] {
    if (*json_out) {
      nlohmann::json rows = nlohmann::json::array();
      for (const auto& s : node_settings()) {
        rows.push_back({{"key", s.key}, {"type", s.type}, {"default", s.default_value}, {"env", s.env},
                        {"meaning", s.meaning}, {"allowed", s.allowed}});
      }
      std::cout << rows.dump(2) << "\n";
    } else {
      for (const auto& s : node_settings()) {
        std::cout << s.key << " = " << (s.default_value.empty() ? "\"\"" : s.default_value) << "   (" << s.env
                  << ")\n    " << s.meaning << "\n    allowed: " << s.allowed << "\n";
      }
    }
    std::exit(kExitOk);
  });

  auto file = std::make_shared<std::string>();
  auto check_json = std::make_shared<bool>(false);
  auto* check = config->add_subcommand("check", "Load a config file (with the environment) and print the result");
  check->add_option("file", *file, "YAML config file")->required();
  check->add_flag("--json", *check_json, "Machine-readable output");
  check->callback([file, check_json] {
    ConfigSources sources;
    sources.file = *file;
    sources.known_roles = known_roles();
    auto loaded = load_node_config(sources);
    if (!loaded.ok()) {
      if (*check_json) {
        std::cout << nlohmann::json{{"error", {{"code", code_name(loaded.status().code())}, {"message", loaded.status().message()}}}}.dump() << "\n";
      } else {
        std::cerr << "cairn config check: " << loaded.status().message() << "\n";
      }
      std::exit(kExitError);
    }
    auto values = describe_values(*loaded);
    if (*check_json) {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& [key, value] : values) out[key] = value;
      std::cout << out.dump(2) << "\n";
    } else {
      for (const auto& [key, value] : values) std::cout << key << " = " << value << "\n";
    }
    std::exit(kExitOk);
  });
}

}  // namespace cairn::cli
