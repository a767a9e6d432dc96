// `cairn serve load|unload|list|stats` (the inference role's models, over infer.* ops) and
// `cairn complete` / `cairn chat` (one generation, streamed to stdout as it is produced).
#include <condition_variable>
#include <iostream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cluster/detail/mlflow_json.h"
#include "runtime/messages/infer.h"

namespace cairn::cli {
namespace {

using nlohmann::json;

// Sends `request` as `op` and decodes the reply as R, or reports the error; returns the exit code
// (kExitOk and fills `out` on success).
template <class R, class Q>
int call_node(const ConnectArgs& args, const std::string& command, std::string_view op, const Q& request, R& out,
              std::chrono::milliseconds timeout) {
  auto client = open_client(args);
  if (!client.ok()) return report_error(args, command, client.status());
  auto reply = (*client)->call_as<R>(op, request, timeout);
  if (!reply.ok()) return report_error(args, command, reply.status());
  out = std::move(reply).value();
  return kExitOk;
}

struct LoadArgs {
  std::string name;
  std::string source;
  std::vector<std::string> adapters;  // NAME=DIR
  bool persist = false;
  double load_timeout_s = 600;
};

int cmd_load(const ConnectArgs& args, const LoadArgs& load) {
  msg::InferLoadRequest request;
  request.name = load.name;
  request.source = load.source;
  request.persist = load.persist;
  for (const auto& spec : load.adapters) {
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      return report_error(args, "serve load",
                          Status(Code::invalid_argument, "--adapter: expected NAME=DIR, got \"" + spec + "\""));
    }
    request.adapters.push_back({spec.substr(0, eq), spec.substr(eq + 1)});
  }
  msg::InferModel model;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(load.load_timeout_s * 1000));
  if (int code = call_node(args, "serve load", msg::kInferLoad, request, model, timeout); code != kExitOk) return code;
  if (args.json) {
    std::cout << mlflow_json::dump(mlflow_json::encode(model)) << "\n";
  } else {
    std::cout << "serving " << model.name << " from " << model.source
              << (model.version.empty() ? "" : " (version " + model.version + ")")
              << (model.base_model.empty() ? "" : " on base " + model.base_model) << "\n";
  }
  return kExitOk;
}

int cmd_unload(const ConnectArgs& args, const std::string& name) {
  msg::Empty reply;
  if (int code = call_node(args, "serve unload", msg::kInferUnload, msg::InferUnloadRequest{name}, reply,
                           timeout_of(args));
      code != kExitOk) {
    return code;
  }
  if (args.json) {
    std::cout << json{{"unloaded", name}}.dump() << "\n";
  } else {
    std::cout << "unloaded " << name << "\n";
  }
  return kExitOk;
}

// Calls `op` (no request body) and prints its reply R: as JSON with --json, else with `print`.
template <class R, class Print>
int show_reply(const ConnectArgs& args, const std::string& command, std::string_view op, Print print) {
  R reply;
  if (int code = call_node(args, command, op, msg::Empty{}, reply, timeout_of(args)); code != kExitOk) return code;
  if (args.json) {
    std::cout << mlflow_json::dump(mlflow_json::encode(reply)) << "\n";
  } else {
    print(reply);
  }
  return kExitOk;
}

}  // namespace

void print_served_models(const msg::InferModelsReply& reply) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : reply.models) {
    std::string kept = m.startup && !m.persist ? "start" : m.persist ? "persist" : "run";
    std::string detail = m.state == "ready" ? "context " + std::to_string(m.max_context) : m.error;
    if (!m.base_model.empty()) detail = "on " + m.base_model + (detail.empty() ? "" : "; " + detail);
    std::string engine = m.engine_id == 0 ? "-" : std::to_string(m.engine_id);
    rows.push_back({m.name, m.state, m.version.empty() ? "-" : m.version, m.source, kept, engine, detail});
  }
  // Names with the same ENGINE share one loaded base.
  print_table({"NAME", "STATE", "VERSION", "SOURCE", "LOADED", "ENGINE", "DETAIL"}, rows);
}

namespace {

void print_stats(const msg::InferStatsReply& reply) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : reply.models) {
    char kv[32];
    std::snprintf(kv, sizeof kv, "%.1f%%", m.kv_usage * 100);
    rows.push_back({m.name, std::to_string(m.running), std::to_string(m.waiting), kv,
                    std::to_string(m.prompt_tokens_total), std::to_string(m.generation_tokens_total),
                    std::to_string(m.requests_finished_total), std::to_string(m.requests_rejected_total)});
  }
  print_table({"NAME", "RUNNING", "WAITING", "KV", "PROMPT TOK", "GEN TOK", "FINISHED", "REJECTED"}, rows);
}

struct GenerateArgs {
  std::string model;
  std::string prompt;                 // complete
  std::vector<std::string> messages;  // chat: ROLE:TEXT, or TEXT for a user message
  std::string system;
  int64_t max_tokens = 0;  // 0 = the op's default
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  double gen_timeout_s = 600;
};

// Streams the completion to stdout (text as it comes); with --json prints the final reply instead.
int cmd_generate(const ConnectArgs& args, const GenerateArgs& g, bool chat) {
  const std::string command = chat ? "chat" : "complete";
  msg::CompletionRequest request;
  request.model = g.model;
  request.prompt = g.prompt;
  if (!g.system.empty()) request.messages.push_back({"system", g.system});
  for (const auto& m : g.messages) {
    auto colon = m.find(':');
    const std::string role = colon == std::string::npos ? "" : m.substr(0, colon);
    if (role == "system" || role == "user" || role == "assistant") {
      request.messages.push_back({role, m.substr(colon + 1)});
    } else {
      request.messages.push_back({"user", m});
    }
  }
  if (g.max_tokens > 0) request.max_tokens = g.max_tokens;
  request.temperature = g.temperature;
  request.top_p = g.top_p;
  request.top_k = g.top_k;
  request.seed = g.seed;
  request.stop = g.stop;
  request.stream = !args.json;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(g.gen_timeout_s * 1000));
  const std::string_view op = chat ? msg::kInferChat : msg::kInferCompletions;
  if (args.json) {
    msg::CompletionReply reply;
    if (int code = call_node(args, command, op, request, reply, timeout); code != kExitOk) return code;
    std::cout << mlflow_json::dump(mlflow_json::encode(reply)) << "\n";
    return kExitOk;
  }
  auto client = open_client(args);
  if (!client.ok()) return report_error(args, command, client.status());
  auto subscription = (*client)->subscribe(op, wire::encode(request), [](const std::string& body) {
    auto delta = wire::decode_bytes<msg::CompletionDelta>(body);
    if (delta.ok()) std::cout << delta->text << std::flush;
  });
  Status end = subscription->wait(timeout);
  std::cout << "\n";
  if (!end.ok()) return report_error(args, command, end);
  return kExitOk;
}

void add_generation_flags(CLI::App& command, GenerateArgs& g) {
  command.add_option("--model", g.model, "Served model name (cairn serve list)")->required();
  command.add_option("--max-tokens", g.max_tokens, "New tokens at most (default: 16 for complete, the context for chat)");
  command.add_option("--temperature", g.temperature, "0 (default) is greedy");
  command.add_option("--top-p", g.top_p, "Nucleus sampling (default 1: off)");
  command.add_option("--top-k", g.top_k, "Sample among the k most likely (default 0: off)");
  command.add_option("--seed", g.seed, "Seed for reproducible sampling");
  command.add_option("--stop", g.stop, "Stop string (repeatable)");
  command.add_option("--gen-timeout", g.gen_timeout_s, "Seconds to wait for the whole generation (default 600)");
}

}  // namespace

void add_serve_commands(CLI::App& app) {
  auto args = std::make_shared<ConnectArgs>();
  auto* serve = app.add_subcommand("serve", "Models served by a node's inference role");
  serve->require_subcommand(1);

  auto load = std::make_shared<LoadArgs>();
  auto* load_cmd = leaf(*serve, "load",
                        "Load a model (admin): a Hugging Face folder, MODEL@ALIAS or MODEL/VERSION. A registry version "
                        "holding a LoRA adapter is served on the base model its lineage names. The load is kept while "
                        "the node runs (also across a restart of its inference actor); with --persist also across "
                        "node restarts",
                        args, [args, load] { return cmd_load(*args, *load); });
  load_cmd->add_option("name", load->name, "Name requests use (as OpenAI's `model`)")->required();
  load_cmd->add_option("source", load->source,
                       "Folder on the node, MODEL@ALIAS (followed: a moved alias is swapped in) or MODEL/VERSION; "
                       "an adapter version (adapter_config.json) loads its base model (--base-model at "
                       "registration, else adapter_config.json's base_model_name_or_path)")
      ->required();
  load_cmd->add_option("--adapter", load->adapters,
                       "LoRA adapter NAME=DIR on the node (repeatable); requests select it as model NAME:ADAPTER");
  load_cmd->add_flag("--persist", load->persist,
                     "Load it again when the node restarts (default: only the node's serve.models are loaded at start)");
  load_cmd->add_option("--load-timeout", load->load_timeout_s, "Seconds to wait for the load (default 600)");

  auto name = std::make_shared<std::string>();
  auto* unload = leaf(*serve, "unload", "Stop serving a model (admin); its requests in flight are cancelled", args,
                      [args, name] { return cmd_unload(*args, *name); });
  unload->add_option("name", *name, "Served name")->required();

  leaf(*serve, "list",
       "Served models: state (loading, ready, retrying: the registry source is not there yet, failed: with the "
       "reason), version, whether loaded at start, at run time or persistently, and the engine (names with the "
       "same engine share one loaded base)",
       args, [args] {
    return show_reply<msg::InferModelsReply>(*args, "serve list", msg::kInferModels, print_served_models);
  });

  leaf(*serve, "stats", "Per-model load: running, waiting, KV cache, tokens", args, [args] {
    return show_reply<msg::InferStatsReply>(*args, "serve stats", msg::kInferStats, print_stats);
  });

  auto complete_args = std::make_shared<GenerateArgs>();
  auto* complete = leaf(app, "complete", "Complete a prompt with a served model, streaming the text", args,
                        [args, complete_args] { return cmd_generate(*args, *complete_args, false); });
  complete->add_option("--prompt", complete_args->prompt, "The prompt")->required();
  add_generation_flags(*complete, *complete_args);

  auto chat_args = std::make_shared<GenerateArgs>();
  auto* chat = leaf(app, "chat", "One chat turn with a served model (its chat template), streaming the reply", args,
                    [args, chat_args] { return cmd_generate(*args, *chat_args, true); });
  chat->add_option("--message", chat_args->messages, "A message: TEXT (user) or ROLE:TEXT (repeatable)")->required();
  chat->add_option("--system", chat_args->system, "A system message first");
  add_generation_flags(*chat, *chat_args);
}

}  // namespace cairn::cli
