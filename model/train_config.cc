#include "model/train_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "model/chat_template.h"
#include "model/detail/data_util.h"
#include "model/detail/files.h"
#include "runtime/config.h"
#include "runtime/detail/text.h"

namespace cairn {
namespace {

using detail::join;
using detail::quote;
using nlohmann::json;

// Sanity bounds: a larger value is a mistake (a unit or a digit too many), not a plan.
constexpr int64_t kMaxSequenceLen = int64_t{1} << 20;  // rows are int32-indexed in model/data.h
constexpr int64_t kMaxWorkers = 1024;
constexpr size_t kMaxModelNameChars = 256;  // the registry's limit (storage/registry_store.h)

constexpr std::string_view kDatasetTypes[] = {"completion", "alpaca", "chat_template"};

Status invalid(const std::string& key, const std::string& message) {
  return error(Code::invalid_argument, key + ": " + message);
}

// "expected <allowed>, got <got>", the one shape of every value error.
Status expected(const std::string& key, const std::string& allowed, const std::string& got) {
  return invalid(key, "expected " + allowed + ", got " + got);
}

// A number as a message shows it: shortest text that reads back the same.
std::string number_text(double value) {
  char buffer[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

template <class Enum>
struct Choice {
  std::string_view name;
  Enum value;
};

template <class Enum, size_t N>
std::string_view choice_name(const Choice<Enum> (&choices)[N], Enum value) {
  for (const auto& choice : choices) {
    if (choice.value == value) return choice.name;
  }
  return "?";
}

template <class Enum, size_t N>
std::string choice_list(const Choice<Enum> (&choices)[N]) {
  std::vector<std::string> names;
  for (const auto& choice : choices) {
    std::string name(choice.name);
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return join(names, ", ");
}

// First entry of each value is its canonical name; later entries are accepted synonyms.
constexpr Choice<AdapterKind> kAdapters[] = {
    {"none", AdapterKind::none}, {"lora", AdapterKind::lora}, {"qlora", AdapterKind::qlora}};
constexpr Choice<LrScheduler> kSchedulers[] = {
    {"cosine", LrScheduler::cosine}, {"linear", LrScheduler::linear}, {"constant", LrScheduler::constant}};
constexpr Choice<OptimizerKind> kOptimizers[] = {{"adamw", OptimizerKind::adamw},
                                                 {"adamw_torch", OptimizerKind::adamw},
                                                 {"adamw_torch_fused", OptimizerKind::adamw}};
constexpr Choice<Bf16Mode> kBf16Modes[] = {
    {"false", Bf16Mode::off}, {"true", Bf16Mode::on}, {"auto", Bf16Mode::automatic}};
constexpr Choice<ChatTemplateChoice> kChatTemplates[] = {
    {"tokenizer_default", ChatTemplateChoice::tokenizer_default},
    {"chatml", ChatTemplateChoice::chatml},
    {"jinja", ChatTemplateChoice::jinja}};
constexpr Choice<LongExamplePolicy> kLongExamplePolicies[] = {
    {"drop", LongExamplePolicy::drop}, {"truncate", LongExamplePolicy::truncate}, {"split", LongExamplePolicy::split}};

bool is_decimal(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "a/b.yaml" -> "a"; "b.yaml" -> "".
std::string directory_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// `path` against `base_dir`, lexically normalized ("a/./b/../c" -> "a/c"); absolute paths and an
// empty base keep the path as written.
std::string resolve_path(const std::string& path, const std::string& base_dir) {
  if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

// Model names follow the registry's rule (storage/registry_store.h): 1..256 characters, no '/',
// '@' or control characters, since NAME/VERSION and NAME@ALIAS must parse.
Status check_model_name(const std::string& key, const std::string& name) {
  bool bad_char = std::any_of(name.begin(), name.end(), [](char c) {
    auto byte = static_cast<unsigned char>(c);
    return c == '/' || c == '@' || byte < 0x20 || byte == 0x7f;
  });
  if (name.empty() || name.size() > kMaxModelNameChars || bad_char) {
    return expected(key, "a registry model name (1 to 256 characters, without '/', '@' or control characters)",
                    quote(name));
  }
  return Status::ok_status();
}

// ---- Reading YAML values ------------------------------------------------------------------------

std::string describe(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return quote(node.Scalar());
}

Status need_scalar(const YAML::Node& node, const std::string& key, const std::string& allowed) {
  if (!node.IsScalar()) return expected(key, allowed, describe(node));
  return Status::ok_status();
}

Status read_bool(const YAML::Node& node, const std::string& key, bool* out) {
  static const std::string kAllowed = "true or false";
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, kAllowed));
  const std::string& text = node.Scalar();
  if (text == "true" || text == "True" || text == "TRUE") {
    *out = true;
  } else if (text == "false" || text == "False" || text == "FALSE") {
    *out = false;
  } else {
    return expected(key, kAllowed, quote(text));
  }
  return Status::ok_status();
}

Status read_int(const YAML::Node& node, const std::string& key, int64_t* out) {
  static const std::string kAllowed = "a whole number";
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, kAllowed));
  const std::string& text = node.Scalar();
  int64_t value = 0;
  const char* begin = text.data() + (text.rfind('+', 0) == 0 ? 1 : 0);
  auto [end, ec] = std::from_chars(begin, text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || begin == end) {
    return expected(key, kAllowed, quote(text));
  }
  *out = value;
  return Status::ok_status();
}

Status read_uint(const YAML::Node& node, const std::string& key, uint64_t* out) {
  static const std::string kAllowed = "a whole number >= 0";
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, kAllowed));
  const std::string& text = node.Scalar();
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    return expected(key, kAllowed, quote(text));
  }
  *out = value;
  return Status::ok_status();
}

// Accepts what YAML 1.1 reads as text too ("2e-4" has no dot), as Axolotl's pydantic does.
Status read_double(const YAML::Node& node, const std::string& key, double* out) {
  static const std::string kAllowed = "a number";
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, kAllowed));
  const std::string& text = node.Scalar();
  char* end = nullptr;
  double value = text.empty() ? 0 : std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value)) {
    return expected(key, kAllowed, quote(text));
  }
  *out = value;
  return Status::ok_status();
}

Status read_string(const YAML::Node& node, const std::string& key, std::string* out) {
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, "text"));
  *out = node.Scalar();
  return Status::ok_status();
}

Status read_string_list(const YAML::Node& node, const std::string& key, std::vector<std::string>* out) {
  if (!node.IsSequence()) return expected(key, "a list of text", describe(node));
  std::vector<std::string> items;
  for (size_t i = 0; i < node.size(); ++i) {
    std::string item;
    CAIRN_RETURN_IF_ERROR(read_string(node[i], key + "[" + std::to_string(i) + "]", &item));
    items.push_back(std::move(item));
  }
  *out = std::move(items);
  return Status::ok_status();
}

template <class Enum, size_t N>
Status read_choice(const YAML::Node& node, const std::string& key, const Choice<Enum> (&choices)[N], Enum* out) {
  std::string allowed = "one of " + choice_list(choices);
  CAIRN_RETURN_IF_ERROR(need_scalar(node, key, allowed));
  for (const auto& choice : choices) {
    if (node.Scalar() == choice.name) {
      *out = choice.value;
      return Status::ok_status();
    }
  }
  return expected(key, allowed, quote(node.Scalar()));
}

// ---- The key tables -----------------------------------------------------------------------------

// Axolotl keys Cairn reads but does not act on, with the reason the warning gives.
const std::map<std::string, std::string, std::less<>>& ignored_keys() {
  static const auto keys = [] {
    std::map<std::string, std::string, std::less<>> map;
    auto add = [&](std::initializer_list<const char*> names, const char* reason) {
      for (const char* name : names) map[name] = reason;
    };
    add({"base_model_config", "model_type", "tokenizer_type", "trust_remote_code", "tokenizer_use_fast",
         "tokenizer_legacy", "is_llama_derived_model", "is_mistral_derived_model", "resize_token_embeddings_to_32x"},
        "Cairn loads Llama-family models from their config.json");
    add({"load_in_8bit", "gptq", "bnb_config_kwargs"}, "Cairn quantizes only to NF4 (adapter: qlora)");
    add({"special_tokens", "tokens", "added_tokens_overrides"}, "Cairn uses the tokenizer's tokens as they are");
    add({"deepspeed", "fsdp", "fsdp_config", "ddp_timeout", "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
         "local_rank", "ddp_find_unused_parameters"},
        "Cairn's data parallelism is num_workers and nodes");
    add({"flash_attention", "sdp_attention", "xformers_attention", "s2_attention", "flash_attn_cross_entropy",
         "flash_attn_rms_norm", "flash_attn_fuse_qkv", "flash_attn_fuse_mlp", "torch_compile",
         "torch_compile_backend", "tf32", "fp8", "liger_rope", "liger_rms_norm", "liger_glu_activation",
         "liger_fused_linear_cross_entropy", "plugins", "unsloth_lora_mlp", "unsloth_lora_qkv", "unsloth_lora_o"},
        "Cairn chooses its own kernels");
    add({"wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_run_id", "wandb_log_model",
         "wandb_mode", "use_wandb", "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name",
         "use_mlflow", "comet_api_key", "comet_project_name", "use_tensorboard", "logging_dir",
         "include_tokens_per_second", "profiler_steps"},
        "Cairn logs metrics to its own registry (see experiment and run_name)");
    add({"hub_strategy", "hub_private_repo", "push_dataset_to_hub", "hf_use_auth_token", "push_to_hub"},
        "Cairn registers checkpoints in its registry (see output_model)");
    add({"dataset_prepared_path", "dataset_processes", "dataset_exact_deduplication", "dataset_keep_in_memory",
         "pad_to_sequence_len", "eval_sample_packing", "sample_packing_eff_est", "group_by_length",
         "max_packed_sequence_len", "dataloader_num_workers", "dataloader_pin_memory",
         "dataloader_prefetch_factor", "dataloader_drop_last", "remove_unused_columns", "test_datasets",
         "pretraining_dataset", "skip_prepare_dataset", "default_system_message", "chat_template_kwargs",
         "train_on_eos", "roles_to_train", "sequence_parallel_degree"},
        "Cairn's data pipeline (model/data.h) has no such option");
    add({"lora_model_dir", "lora_fan_in_fan_out", "lora_modules_to_save", "peft_use_dora", "peft_use_rslora",
         "peft_layers_to_transform", "loraplus_lr_ratio", "loraplus_lr_embedding", "relora_steps",
         "relora_warmup_steps", "relora_cpu_offload", "unfrozen_parameters", "lora_on_cpu"},
        "Cairn's adapters are plain LoRA (lora_r, lora_alpha, lora_dropout, lora_target_modules)");
    add({"lr_quadratic_warmup", "cosine_min_lr_ratio", "cosine_constant_lr_ratio", "lr_div_factor",
         "lr_scheduler_kwargs", "optim_args", "optim_target_modules", "neftune_noise_alpha",
         "gradient_checkpointing_kwargs", "torchdistx_path", "embedding_lr", "embedding_lr_scale"},
        "Cairn's optimizer and schedule take only the keys in docs/TRAINING.md");
    add({"eval_batch_size", "eval_table_size", "eval_max_new_tokens", "do_causal_lm_eval",
         "eval_causal_lm_metrics", "eval_strategy", "evaluation_strategy", "save_strategy", "save_total_limit",
         "save_safetensors", "save_only_model", "save_first_step", "resume_from_checkpoint",
         "auto_resume_from_checkpoints", "strict", "debug", "rl", "dpo_beta", "kd_trainer"},
        "not implemented by Cairn's trainer");
    return map;
  }();
  return keys;
}

// Keys of one dataset entry that Cairn does not act on.
const std::set<std::string, std::less<>>& ignored_dataset_keys() {
  static const std::set<std::string, std::less<>> keys = {
      "ds_type", "data_files", "split", "name", "revision", "trust_remote_code", "shards",
      "field_messages", "message_field_role", "message_field_content", "message_property_mappings",
      "roles", "roles_to_train", "train_on_eos", "field", "field_system", "field_instruction",
      "field_input", "field_output", "chat_template", "drop_system_message"};
  return keys;
}

// ---- The parser -----------------------------------------------------------------------------------

class Parser {
 public:
  Parser(std::string source, std::string base_dir, std::vector<ConfigWarning>* warnings)
      : source_(std::move(source)), base_dir_(std::move(base_dir)), warnings_(warnings) {}

  Result<TrainJobConfig> parse(std::string_view text) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      std::string where = source_;
      if (!e.mark.is_null()) {
        where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
      }
      return error(Code::invalid_argument, where + ": malformed YAML: " + e.msg);
    }
    if (!root.IsMap()) {
      return in_source(invalid("(top level)", std::string("expected a map of keys (see docs/TRAINING.md), got ") +
                                                  (root.IsNull() ? "an empty document" : describe(root))));
    }
    Status status;
    try {
      status = read_top_level(root);
    } catch (const YAML::Exception& e) {  // yaml-cpp's accessors throw on what the checks missed
      status = error(Code::invalid_argument, "malformed YAML: " + e.msg);
    }
    if (status.ok()) status = check_spelling();
    if (!status.ok()) return in_source(status);
    if (!has_learning_rate_) {
      return in_source(invalid("learning_rate", "required: the peak learning rate, a positive number such as 2e-4"));
    }
    status = config_.validate();
    if (!status.ok()) return in_source(status);
    return std::move(config_);
  }

 private:
  using Handler = std::function<Status(const YAML::Node&, const std::string&)>;

  Status in_source(const Status& status) const { return status.with_context(source_); }

  void warn(const std::string& key, const std::string& message) {
    if (warnings_ != nullptr) warnings_->push_back({key, source_ + ": " + message});
  }

  // Warns about a key that no table has, suggesting the closest of `known`.
  void warn_unknown(const std::string& key, const std::string& prefix, const std::vector<std::string>& known) {
    std::string leaf = key.substr(prefix.size());
    std::string hint = detail::did_you_mean(leaf, known);
    warn(key, "unknown key " + quote(key) + hint + "; ignored");
  }

  Status read_top_level(const YAML::Node& root) {
    std::map<std::string, Handler> handlers = top_level_handlers();
    // Synonyms read into the same field: key -> the canonical key.
    const std::map<std::string, std::string> synonyms = {{"hub_model_id", "output_model"},
                                                         {"tokenizer_config", "tokenizer"}};
    std::vector<std::string> known;
    for (const auto& [name, handler] : handlers) known.push_back(name);
    for (const auto& [name, canonical] : synonyms) known.push_back(name);

    std::map<std::string, std::string> seen;  // canonical key -> the spelling that set it
    for (const auto& entry : root) {
      if (!entry.first.IsScalar()) return invalid("(top level)", "expected key names, got " + describe(entry.first));
      std::string key = entry.first.Scalar();
      auto synonym = synonyms.find(key);
      std::string canonical = synonym == synonyms.end() ? key : synonym->second;
      auto handler = handlers.find(canonical);
      if (handler == handlers.end()) {
        auto ignored = ignored_keys().find(key);
        if (ignored != ignored_keys().end()) {
          warn(key, key + ": ignored (" + ignored->second + ")");
        } else {
          warn_unknown(key, "", known);
        }
        continue;
      }
      auto [previous, inserted] = seen.emplace(canonical, key);
      if (!inserted) {
        return invalid(key, previous->second == key ? "appears twice"
                                                    : "appears twice (as " + previous->second + " and " + key + ")");
      }
      if (entry.second.IsNull()) continue;  // `key:` or `key: null` keeps the default
      CAIRN_RETURN_IF_ERROR(handler->second(entry.second, key));
    }
    return Status::ok_status();
  }

  std::map<std::string, Handler> top_level_handlers() {
    TrainJobConfig& c = config_;
    auto boolean = [](bool* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_bool(n, k, field); };
    };
    auto integer = [](int64_t* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_int(n, k, field); };
    };
    auto number = [](double* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_double(n, k, field); };
    };
    auto text = [](std::string* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_string(n, k, field); };
    };
    auto path = [this](std::string* field) {
      return [this, field](const YAML::Node& n, const std::string& k) {
        CAIRN_RETURN_IF_ERROR(read_string(n, k, field));
        *field = resolve_path(*field, base_dir_);
        return Status::ok_status();
      };
    };
    std::map<std::string, Handler> h;
    // model and data
    h["base_model"] = [this](const YAML::Node& n, const std::string& k) {
      std::string text;
      CAIRN_RETURN_IF_ERROR(read_string(n, k, &text));
      Result<ModelReference> ref = parse_model_reference(text, base_dir_);
      if (!ref.ok()) return ref.status().with_context(k);
      config_.base_model = std::move(*ref);
      return Status::ok_status();
    };
    h["architecture"] = [this](const YAML::Node& n, const std::string& k) { return read_architecture(n, k); };
    h["tokenizer"] = path(&c.tokenizer);
    h["datasets"] = [this](const YAML::Node& n, const std::string& k) { return read_datasets(n, k); };
    h["val_set_size"] = number(&c.val_set_size);
    h["sequence_len"] = integer(&c.sequence_len);
    h["sample_packing"] = boolean(&c.sample_packing);
    h["train_on_inputs"] = boolean(&c.train_on_inputs);
    h["shuffle_merged_datasets"] = boolean(&c.shuffle);
    h["excess_length_strategy"] = [&c](const YAML::Node& n, const std::string& k) {
      return read_choice(n, k, kLongExamplePolicies, &c.excess_length_strategy);
    };
    h["chat_template"] = [this](const YAML::Node& n, const std::string& k) {
      chat_template_set_ = true;
      return read_choice(n, k, kChatTemplates, &config_.chat_template);
    };
    h["chat_template_jinja"] = text(&c.chat_template_jinja);
    // adapters
    h["adapter"] = [&c](const YAML::Node& n, const std::string& k) { return read_choice(n, k, kAdapters, &c.adapter); };
    h["load_in_4bit"] = [this](const YAML::Node& n, const std::string& k) {
      bool value = false;
      CAIRN_RETURN_IF_ERROR(read_bool(n, k, &value));
      load_in_4bit_ = value;
      return Status::ok_status();
    };
    h["lora_r"] = integer(&c.lora_r);
    h["lora_alpha"] = number(&c.lora_alpha);
    h["lora_dropout"] = number(&c.lora_dropout);
    h["lora_target_modules"] = [&c](const YAML::Node& n, const std::string& k) {
      return read_string_list(n, k, &c.lora_target_modules);
    };
    h["lora_target_linear"] = boolean(&c.lora_target_linear);
    // batching and length
    h["micro_batch_size"] = integer(&c.micro_batch_size);
    h["gradient_accumulation_steps"] = integer(&c.gradient_accumulation_steps);
    h["num_epochs"] = integer(&c.num_epochs);
    h["max_steps"] = integer(&c.max_steps);
    // optimization
    h["learning_rate"] = [this](const YAML::Node& n, const std::string& k) {
      has_learning_rate_ = true;
      return read_double(n, k, &config_.learning_rate);
    };
    h["lr_scheduler"] = [&c](const YAML::Node& n, const std::string& k) {
      return read_choice(n, k, kSchedulers, &c.lr_scheduler);
    };
    h["warmup_steps"] = integer(&c.warmup_steps);
    h["warmup_ratio"] = [&c](const YAML::Node& n, const std::string& k) {
      double value = 0;
      CAIRN_RETURN_IF_ERROR(read_double(n, k, &value));
      c.warmup_ratio = value;
      return Status::ok_status();
    };
    h["optimizer"] = [&c](const YAML::Node& n, const std::string& k) {
      return read_choice(n, k, kOptimizers, &c.optimizer);
    };
    h["adam_beta1"] = number(&c.adam_beta1);
    h["adam_beta2"] = number(&c.adam_beta2);
    h["adam_epsilon"] = number(&c.adam_epsilon);
    h["weight_decay"] = number(&c.weight_decay);
    h["max_grad_norm"] = number(&c.max_grad_norm);
    h["bf16"] = [&c](const YAML::Node& n, const std::string& k) { return read_choice(n, k, kBf16Modes, &c.bf16); };
    h["fp16"] = boolean(&c.fp16);
    h["gradient_checkpointing"] = boolean(&c.gradient_checkpointing);
    // logging, evaluation and stopping
    h["logging_steps"] = integer(&c.logging_steps);
    h["evals_per_epoch"] = integer(&c.evals_per_epoch);
    h["eval_steps"] = integer(&c.eval_steps);
    h["saves_per_epoch"] = integer(&c.saves_per_epoch);
    h["save_steps"] = integer(&c.save_steps);
    h["early_stopping_patience"] = integer(&c.early_stopping_patience);
    h["loss_watchdog_threshold"] = number(&c.loss_watchdog_threshold);
    h["loss_watchdog_patience"] = integer(&c.loss_watchdog_patience);
    // other
    h["seed"] = [&c](const YAML::Node& n, const std::string& k) { return read_uint(n, k, &c.seed); };
    h["output_model"] = text(&c.output_model);
    h["output_dir"] = path(&c.output_dir);
    h["experiment"] = text(&c.experiment);
    h["run_name"] = text(&c.run_name);
    h["num_workers"] = integer(&c.num_workers);
    h["nodes"] = [&c](const YAML::Node& n, const std::string& k) { return read_string_list(n, k, &c.nodes); };
    h["device"] = text(&c.device);
    return h;
  }

  Status read_architecture(const YAML::Node& node, const std::string& key) {
    if (!node.IsMap()) {
      return expected(key, "a map of model sizes (hidden_size, num_hidden_layers, ...)", describe(node));
    }
    ArchitectureSpec spec;
    std::map<std::string, Handler> h;
    auto integer = [](int64_t* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_int(n, k, field); };
    };
    auto number = [](double* field) {
      return [field](const YAML::Node& n, const std::string& k) { return read_double(n, k, field); };
    };
    h["hidden_size"] = integer(&spec.hidden_size);
    h["intermediate_size"] = integer(&spec.intermediate_size);
    h["num_hidden_layers"] = integer(&spec.num_hidden_layers);
    h["num_attention_heads"] = integer(&spec.num_attention_heads);
    h["num_key_value_heads"] = integer(&spec.num_key_value_heads);
    h["max_position_embeddings"] = integer(&spec.max_position_embeddings);
    h["rope_theta"] = number(&spec.rope_theta);
    h["rms_norm_eps"] = number(&spec.rms_norm_eps);
    h["tie_word_embeddings"] = [&spec](const YAML::Node& n, const std::string& k) {
      return read_bool(n, k, &spec.tie_word_embeddings);
    };
    h["initializer_range"] = number(&spec.initializer_range);
    h["vocab_size"] = integer(&spec.vocab_size);
    CAIRN_RETURN_IF_ERROR(read_map(node, key, h, {}));
    config_.architecture = spec;
    return Status::ok_status();
  }

  Status read_datasets(const YAML::Node& node, const std::string& key) {
    if (!node.IsSequence()) return expected(key, "a list of {path, type}", describe(node));
    std::vector<DatasetSpec> specs;
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item_key = key + "[" + std::to_string(i) + "]";
      const YAML::Node& item = node[i];
      if (!item.IsMap()) return expected(item_key, "a map {path, type}", describe(item));
      DatasetSpec spec;
      std::map<std::string, Handler> h;
      h["path"] = [&spec](const YAML::Node& n, const std::string& k) { return read_string(n, k, &spec.path); };
      h["type"] = [&spec](const YAML::Node& n, const std::string& k) { return read_string(n, k, &spec.type); };
      CAIRN_RETURN_IF_ERROR(read_map(item, item_key, h, ignored_dataset_keys()));
      if (spec.path.empty()) return invalid(item_key + ".path", "required: a JSONL file");
      if (spec.type.empty()) {
        std::vector<std::string> types(std::begin(kDatasetTypes), std::end(kDatasetTypes));
        return invalid(item_key + ".type", "required: one of " + join(types, ", "));
      }
      spec.path = resolve_path(spec.path, base_dir_);
      specs.push_back(std::move(spec));
    }
    config_.datasets = std::move(specs);
    return Status::ok_status();
  }

  // Reads a nested map through `handlers`; keys in `ignored` and unknown keys are warned about.
  Status read_map(const YAML::Node& node, const std::string& key, const std::map<std::string, Handler>& handlers,
                  const std::set<std::string, std::less<>>& ignored) {
    std::vector<std::string> known;
    for (const auto& [name, handler] : handlers) known.push_back(name);
    std::set<std::string> seen;
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) return invalid(key, "expected key names, got " + describe(entry.first));
      const std::string& name = entry.first.Scalar();
      std::string path = key + "." + name;
      auto handler = handlers.find(name);
      if (handler == handlers.end()) {
        if (ignored.count(name) > 0) {
          warn(path, path + ": ignored (Cairn reads only " + join(known, " and ") + " here)");
        } else {
          warn_unknown(path, key + ".", known);
        }
        continue;
      }
      if (!seen.insert(name).second) return invalid(path, "appears twice");
      if (entry.second.IsNull()) continue;
      CAIRN_RETURN_IF_ERROR(handler->second(entry.second, path));
    }
    return Status::ok_status();
  }

  // Rules between keys that only the parser can check (they concern how the YAML spelled things).
  Status check_spelling() {
    if (load_in_4bit_ && config_.adapter != AdapterKind::qlora) {
      return invalid("load_in_4bit", "true needs adapter: qlora (Cairn's 4-bit base is QLoRA's NF4)");
    }
    if (!config_.chat_template_jinja.empty() && !chat_template_set_) {
      config_.chat_template = ChatTemplateChoice::jinja;  // Axolotl writes both; one implies the other
    }
    return Status::ok_status();
  }

  std::string source_;
  std::string base_dir_;
  std::vector<ConfigWarning>* warnings_;
  TrainJobConfig config_;
  bool has_learning_rate_ = false;
  bool load_in_4bit_ = false;
  bool chat_template_set_ = false;
};

// ---- Checks ---------------------------------------------------------------------------------------

Status at_least(const std::string& key, int64_t value, int64_t minimum) {
  if (value < minimum) return expected(key, "a whole number >= " + std::to_string(minimum), std::to_string(value));
  return Status::ok_status();
}

Status in_unit_interval(const std::string& key, double value) {
  if (!(value >= 0 && value < 1)) return expected(key, "a number in [0, 1)", number_text(value));
  return Status::ok_status();
}

Status positive(const std::string& key, double value) {
  if (!(value > 0) || !std::isfinite(value)) return expected(key, "a positive number", number_text(value));
  return Status::ok_status();
}

Status non_negative(const std::string& key, double value) {
  if (!(value >= 0) || !std::isfinite(value)) return expected(key, "a number >= 0", number_text(value));
  return Status::ok_status();
}

Status check_device(const std::string& device) {
  bool cuda_index = device.rfind("cuda:", 0) == 0 && is_decimal(std::string_view(device).substr(5));
  if (device == "cpu" || device == "cuda" || cuda_index) return Status::ok_status();
  return expected("device", "cpu, cuda or cuda:N", quote(device));
}

int64_t derived_intermediate_size(int64_t hidden_size) {
  constexpr int64_t kMultipleOf = 256;  // Llama's multiple_of
  int64_t width = 8 * hidden_size / 3;
  return (width + kMultipleOf - 1) / kMultipleOf * kMultipleOf;
}

}  // namespace

// ---- Public ---------------------------------------------------------------------------------------

std::string_view adapter_name(AdapterKind kind) { return choice_name(kAdapters, kind); }
std::string_view lr_scheduler_name(LrScheduler scheduler) { return choice_name(kSchedulers, scheduler); }
std::string_view optimizer_name(OptimizerKind optimizer) { return choice_name(kOptimizers, optimizer); }
std::string_view bf16_mode_name(Bf16Mode mode) { return choice_name(kBf16Modes, mode); }
std::string_view chat_template_choice_name(ChatTemplateChoice choice) { return choice_name(kChatTemplates, choice); }
std::string_view long_example_policy_name(LongExamplePolicy policy) {
  return choice_name(kLongExamplePolicies, policy);
}

std::string ModelReference::to_string() const {
  switch (kind) {
    case Kind::none: return "";
    case Kind::local_dir: return path;
    case Kind::registry: return alias.empty() ? name + "/" + version : name + "@" + alias;
  }
  return "";
}

Result<ModelReference> parse_model_reference(std::string_view text, const std::string& base_dir) {
  std::string ref(text);
  if (ref.empty()) {
    return error(Code::invalid_argument, "expected a model directory, NAME@ALIAS or NAME/VERSION, got \"\"");
  }
  ModelReference out;
  size_t at = ref.rfind('@');
  size_t slash = ref.rfind('/');
  if (at != std::string::npos && (slash == std::string::npos || slash < at)) {
    out.kind = ModelReference::Kind::registry;
    out.name = ref.substr(0, at);
    out.alias = ref.substr(at + 1);
    if (out.alias.empty()) {
      return error(Code::invalid_argument, "expected NAME@ALIAS, got " + quote(ref) + " (the alias is empty)");
    }
    CAIRN_RETURN_IF_ERROR(check_model_name("model name", out.name));
    return out;
  }
  if (slash != std::string::npos && ref.find('/') == slash && slash > 0 && ref[0] != '.' &&
      is_decimal(std::string_view(ref).substr(slash + 1))) {
    out.kind = ModelReference::Kind::registry;
    out.name = ref.substr(0, slash);
    out.version = ref.substr(slash + 1);
    return out;
  }
  out.kind = ModelReference::Kind::local_dir;
  out.path = resolve_path(ref, base_dir);
  return out;
}

Result<LlamaConfig> to_llama_config(const ArchitectureSpec& spec, int64_t vocab_size, int64_t sequence_len) {
  const std::string p = "architecture.";
  const std::pair<const char*, int64_t> positives[] = {{"hidden_size", spec.hidden_size},
                                                       {"num_hidden_layers", spec.num_hidden_layers},
                                                       {"num_attention_heads", spec.num_attention_heads}};
  for (const auto& [key, value] : positives) CAIRN_RETURN_IF_ERROR(at_least(p + key, value, 1));
  const std::pair<const char*, int64_t> derivable[] = {{"intermediate_size", spec.intermediate_size},
                                                       {"num_key_value_heads", spec.num_key_value_heads},
                                                       {"max_position_embeddings", spec.max_position_embeddings},
                                                       {"vocab_size", spec.vocab_size}};
  for (const auto& [key, value] : derivable) CAIRN_RETURN_IF_ERROR(at_least(p + key, value, 0));
  if (spec.hidden_size % spec.num_attention_heads != 0) {
    return invalid(p + "num_attention_heads", std::to_string(spec.num_attention_heads) +
                                                  " does not divide hidden_size " + std::to_string(spec.hidden_size));
  }
  int64_t head_dim = spec.hidden_size / spec.num_attention_heads;
  if (head_dim % 2 != 0) {
    return invalid(p + "num_attention_heads", "hidden_size / num_attention_heads = " + std::to_string(head_dim) +
                                                  " must be even (rotary embeddings rotate pairs)");
  }
  int64_t kv_heads = spec.num_key_value_heads == 0 ? spec.num_attention_heads : spec.num_key_value_heads;
  if (spec.num_attention_heads % kv_heads != 0) {
    return invalid(p + "num_key_value_heads", std::to_string(kv_heads) + " does not divide num_attention_heads " +
                                                  std::to_string(spec.num_attention_heads));
  }
  CAIRN_RETURN_IF_ERROR(positive(p + "rope_theta", spec.rope_theta));
  CAIRN_RETURN_IF_ERROR(positive(p + "rms_norm_eps", spec.rms_norm_eps));
  CAIRN_RETURN_IF_ERROR(positive(p + "initializer_range", spec.initializer_range));
  if (spec.vocab_size != 0 && spec.vocab_size < vocab_size) {
    return invalid(p + "vocab_size", std::to_string(spec.vocab_size) + " is below the tokenizer's " +
                                         std::to_string(vocab_size) + " tokens");
  }
  if (spec.max_position_embeddings != 0 && spec.max_position_embeddings < sequence_len) {
    return invalid(p + "max_position_embeddings", std::to_string(spec.max_position_embeddings) +
                                                      " is below sequence_len " + std::to_string(sequence_len));
  }
  LlamaConfig config;
  config.vocab_size = spec.vocab_size != 0 ? spec.vocab_size : vocab_size;
  config.hidden_size = spec.hidden_size;
  config.intermediate_size =
      spec.intermediate_size != 0 ? spec.intermediate_size : derived_intermediate_size(spec.hidden_size);
  config.num_hidden_layers = spec.num_hidden_layers;
  config.num_attention_heads = spec.num_attention_heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = head_dim;
  config.max_position_embeddings = spec.max_position_embeddings != 0 ? spec.max_position_embeddings : sequence_len;
  config.rms_norm_eps = spec.rms_norm_eps;
  config.rope.theta = spec.rope_theta;
  config.tie_word_embeddings = spec.tie_word_embeddings;
  config.initializer_range = spec.initializer_range;
  config.eos_token_ids.clear();
  CAIRN_RETURN_IF_ERROR(config.validate().with_context("architecture"));
  return config;
}

Status TrainJobConfig::validate() const {
  // model and data
  bool has_base = base_model.kind != ModelReference::Kind::none;
  if (has_base == architecture.has_value()) {
    return invalid(has_base ? "architecture" : "base_model",
                   "give exactly one of base_model (a model to fine-tune) and architecture (a model to pretrain "
                   "from scratch)");
  }
  if (base_model.kind == ModelReference::Kind::registry) {
    CAIRN_RETURN_IF_ERROR(check_model_name("base_model", base_model.name));
  }
  if (architecture) {
    if (tokenizer.empty()) {
      return invalid("tokenizer", "required with architecture: a tokenizer.json or a directory holding one");
    }
    Result<LlamaConfig> llama = to_llama_config(*architecture, 1, sequence_len);
    if (!llama.ok()) return llama.status();
  }
  if (datasets.empty()) return expected("datasets", "a list of at least one {path, type}", "none");
  for (size_t i = 0; i < datasets.size(); ++i) {
    std::string key = "datasets[" + std::to_string(i) + "]";
    if (datasets[i].path.empty()) return invalid(key + ".path", "required: a JSONL file");
    if (std::find(std::begin(kDatasetTypes), std::end(kDatasetTypes), datasets[i].type) == std::end(kDatasetTypes)) {
      std::vector<std::string> types(std::begin(kDatasetTypes), std::end(kDatasetTypes));
      return expected(key + ".type", "one of " + join(types, ", "), quote(datasets[i].type));
    }
  }
  if (!(val_set_size >= 0 && (val_set_size < 1 || val_set_size == std::floor(val_set_size))) ||
      !std::isfinite(val_set_size)) {
    return expected("val_set_size", "a fraction in [0, 1) or a whole number of examples", number_text(val_set_size));
  }
  CAIRN_RETURN_IF_ERROR(at_least("sequence_len", sequence_len, 2));
  if (sequence_len > kMaxSequenceLen) {
    return expected("sequence_len", "at most " + std::to_string(kMaxSequenceLen), std::to_string(sequence_len));
  }
  if (chat_template == ChatTemplateChoice::jinja) {
    if (chat_template_jinja.empty()) {
      return invalid("chat_template_jinja", "required with chat_template: jinja: the template's Jinja source");
    }
    Result<ChatTemplate> parsed = ChatTemplate::parse(chat_template_jinja);
    if (!parsed.ok()) return parsed.status().with_context("chat_template_jinja");
  } else if (!chat_template_jinja.empty()) {
    return invalid("chat_template_jinja", "only used with chat_template: jinja, not " +
                                              std::string(chat_template_choice_name(chat_template)));
  }

  // adapters
  if (adapter != AdapterKind::none && !has_base) {
    return invalid("adapter", std::string(adapter_name(adapter)) +
                                  " needs base_model: adapters train on top of pretrained weights");
  }
  CAIRN_RETURN_IF_ERROR(at_least("lora_r", lora_r, 1));
  CAIRN_RETURN_IF_ERROR(non_negative("lora_alpha", lora_alpha));
  CAIRN_RETURN_IF_ERROR(in_unit_interval("lora_dropout", lora_dropout));
  if (adapter != AdapterKind::none && !lora_target_linear && lora_target_modules.empty()) {
    return invalid("lora_target_modules", "empty: name the modules to adapt, or set lora_target_linear: true");
  }
  for (size_t i = 0; i < lora_target_modules.size(); ++i) {
    if (lora_target_modules[i].empty()) {
      return expected("lora_target_modules[" + std::to_string(i) + "]", "a module name such as q_proj", "\"\"");
    }
  }

  // batching and length
  CAIRN_RETURN_IF_ERROR(at_least("micro_batch_size", micro_batch_size, 1));
  CAIRN_RETURN_IF_ERROR(at_least("gradient_accumulation_steps", gradient_accumulation_steps, 1));
  CAIRN_RETURN_IF_ERROR(at_least("num_epochs", num_epochs, 1));
  CAIRN_RETURN_IF_ERROR(at_least("max_steps", max_steps, 0));

  // optimization
  CAIRN_RETURN_IF_ERROR(positive("learning_rate", learning_rate));
  CAIRN_RETURN_IF_ERROR(at_least("warmup_steps", warmup_steps, 0));
  if (warmup_ratio) {
    if (warmup_steps > 0) return invalid("warmup_ratio", "give at most one of warmup_steps and warmup_ratio");
    CAIRN_RETURN_IF_ERROR(in_unit_interval("warmup_ratio", *warmup_ratio));
  }
  if (max_steps > 0 && warmup_steps >= max_steps) {
    return invalid("warmup_steps",
                   std::to_string(warmup_steps) + " is not below max_steps " + std::to_string(max_steps));
  }
  CAIRN_RETURN_IF_ERROR(in_unit_interval("adam_beta1", adam_beta1));
  CAIRN_RETURN_IF_ERROR(in_unit_interval("adam_beta2", adam_beta2));
  CAIRN_RETURN_IF_ERROR(positive("adam_epsilon", adam_epsilon));
  CAIRN_RETURN_IF_ERROR(non_negative("weight_decay", weight_decay));
  CAIRN_RETURN_IF_ERROR(non_negative("max_grad_norm", max_grad_norm));
  if (fp16 && bf16 == Bf16Mode::on) return invalid("fp16", "give at most one of bf16 and fp16");

  // logging, evaluation and stopping
  CAIRN_RETURN_IF_ERROR(at_least("logging_steps", logging_steps, 1));
  const std::pair<const char*, int64_t> counts[] = {
      {"evals_per_epoch", evals_per_epoch}, {"eval_steps", eval_steps}, {"saves_per_epoch", saves_per_epoch},
      {"save_steps", save_steps}, {"early_stopping_patience", early_stopping_patience}};
  for (const auto& [key, value] : counts) CAIRN_RETURN_IF_ERROR(at_least(key, value, 0));
  if (evals_per_epoch > 0 && eval_steps > 0) {
    return invalid("eval_steps", "give at most one of evals_per_epoch and eval_steps");
  }
  if (saves_per_epoch > 0 && save_steps > 0) {
    return invalid("save_steps", "give at most one of saves_per_epoch and save_steps");
  }
  if (early_stopping_patience > 0) {
    if (val_set_size == 0) return invalid("early_stopping_patience", "needs a validation set (val_set_size > 0)");
    if (evals_per_epoch == 0 && eval_steps == 0) {
      return invalid("early_stopping_patience", "needs evaluations during training (evals_per_epoch or eval_steps)");
    }
  }
  CAIRN_RETURN_IF_ERROR(non_negative("loss_watchdog_threshold", loss_watchdog_threshold));
  CAIRN_RETURN_IF_ERROR(at_least("loss_watchdog_patience", loss_watchdog_patience, 1));

  // other
  if (!output_model.empty()) CAIRN_RETURN_IF_ERROR(check_model_name("output_model", output_model));
  if (experiment.empty()) return expected("experiment", "a registry experiment name", "\"\"");
  CAIRN_RETURN_IF_ERROR(at_least("num_workers", num_workers, 1));
  if (num_workers > kMaxWorkers) {
    return expected("num_workers", "at most " + std::to_string(kMaxWorkers), std::to_string(num_workers));
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    std::string key = "nodes[" + std::to_string(i) + "]";
    Result<HostPort> address = parse_host_port(nodes[i]);
    if (!address.ok()) return address.status().with_context(key);
    if (address->port == 0) return expected(key, "a node's protocol address HOST:PORT with a port", quote(nodes[i]));
  }
  CAIRN_RETURN_IF_ERROR(check_device(device));
  return Status::ok_status();
}

Result<TrainJobConfig> parse_train_config(std::string_view yaml_text, const std::string& source_name,
                                          std::vector<ConfigWarning>* warnings) {
  return Parser(source_name, directory_of(source_name), warnings).parse(yaml_text);
}

Result<TrainJobConfig> load_train_config(const std::string& path, std::vector<ConfigWarning>* warnings) {
  Result<std::string> text = detail::read_file(path);
  if (!text.ok()) return text.status();
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  std::string base_dir = ec ? directory_of(path) : absolute.lexically_normal().parent_path().string();
  return Parser(path, base_dir, warnings).parse(*text);
}

namespace {

// Sets `key` ("architecture.hidden_size" walks into nested maps, creating them as needed) in
// `root` to `value`. Errors begin with `context`.
Status set_override(YAML::Node root, const std::string& key, const YAML::Node& value, const std::string& context) {
  try {
    YAML::Node node = root;
    size_t start = 0;
    for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
      std::string part = key.substr(start, dot - start);
      if (part.empty()) return error(Code::invalid_argument, context + ": empty key component");
      YAML::Node child = node[part];
      if (child.IsNull() || !child.IsDefined()) {
        node[part] = YAML::Node(YAML::NodeType::Map);
      } else if (!child.IsMap()) {
        return error(Code::invalid_argument, context + ": " + key.substr(0, dot) + " is not a map");
      }
      node.reset(node[part]);
      start = dot + 1;
    }
    std::string leaf = key.substr(start);
    if (leaf.empty()) return error(Code::invalid_argument, context + ": empty key component");
    node[leaf] = value;
  } catch (const YAML::Exception& e) {
    return error(Code::invalid_argument, context + ": " + e.msg);
  }
  return Status::ok_status();
}

}  // namespace

Result<std::string> apply_train_config_overrides(std::string_view yaml_text,
                                                 const std::vector<std::string>& overrides) {
  if (overrides.empty()) return std::string(yaml_text);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception&) {
    return std::string(yaml_text);  // parse_train_config names the file, line and column
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) return std::string(yaml_text);  // parse_train_config reports the top level
  for (const std::string& override_text : overrides) {
    size_t equals = override_text.find('=');
    std::string context = "override " + quote(override_text);
    if (equals == std::string::npos || equals == 0) {
      return error(Code::invalid_argument, context + ": expected KEY=VALUE");
    }
    YAML::Node value;
    try {
      value = YAML::Load(override_text.substr(equals + 1));
    } catch (const YAML::Exception& e) {
      return error(Code::invalid_argument, context + ": the value is not YAML: " + e.msg);
    }
    Status set = set_override(root, override_text.substr(0, equals), value, context);
    if (!set.ok()) return set;
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}


std::string to_canonical_json(const TrainJobConfig& c) {
  json base{{"kind", c.base_model.kind == ModelReference::Kind::none        ? "none"
                     : c.base_model.kind == ModelReference::Kind::local_dir ? "local_dir"
                                                                             : "registry"},
            {"path", c.base_model.path},
            {"name", c.base_model.name},
            {"alias", c.base_model.alias},
            {"version", c.base_model.version}};
  json architecture = nullptr;
  if (c.architecture) {
    const ArchitectureSpec& a = *c.architecture;
    architecture = json{{"hidden_size", a.hidden_size},
                        {"intermediate_size", a.intermediate_size},
                        {"num_hidden_layers", a.num_hidden_layers},
                        {"num_attention_heads", a.num_attention_heads},
                        {"num_key_value_heads", a.num_key_value_heads},
                        {"max_position_embeddings", a.max_position_embeddings},
                        {"rope_theta", a.rope_theta},
                        {"rms_norm_eps", a.rms_norm_eps},
                        {"tie_word_embeddings", a.tie_word_embeddings},
                        {"initializer_range", a.initializer_range},
                        {"vocab_size", a.vocab_size}};
  }
  json datasets = json::array();
  for (const auto& d : c.datasets) datasets.push_back({{"path", d.path}, {"type", d.type}});
  json out{{"base_model", base},
           {"architecture", architecture},
           {"tokenizer", c.tokenizer},
           {"datasets", datasets},
           {"val_set_size", c.val_set_size},
           {"sequence_len", c.sequence_len},
           {"sample_packing", c.sample_packing},
           {"train_on_inputs", c.train_on_inputs},
           {"shuffle_merged_datasets", c.shuffle},
           {"excess_length_strategy", long_example_policy_name(c.excess_length_strategy)},
           {"chat_template", chat_template_choice_name(c.chat_template)},
           {"chat_template_jinja", c.chat_template_jinja},
           {"adapter", adapter_name(c.adapter)},
           {"lora_r", c.lora_r},
           {"lora_alpha", c.lora_alpha},
           {"lora_dropout", c.lora_dropout},
           {"lora_target_modules", c.lora_target_modules},
           {"lora_target_linear", c.lora_target_linear},
           {"micro_batch_size", c.micro_batch_size},
           {"gradient_accumulation_steps", c.gradient_accumulation_steps},
           {"num_epochs", c.num_epochs},
           {"max_steps", c.max_steps},
           {"learning_rate", c.learning_rate},
           {"lr_scheduler", lr_scheduler_name(c.lr_scheduler)},
           {"warmup_steps", c.warmup_steps},
           {"warmup_ratio", c.warmup_ratio ? json(*c.warmup_ratio) : json(nullptr)},
           {"optimizer", optimizer_name(c.optimizer)},
           {"adam_beta1", c.adam_beta1},
           {"adam_beta2", c.adam_beta2},
           {"adam_epsilon", c.adam_epsilon},
           {"weight_decay", c.weight_decay},
           {"max_grad_norm", c.max_grad_norm},
           {"bf16", bf16_mode_name(c.bf16)},
           {"fp16", c.fp16},
           {"gradient_checkpointing", c.gradient_checkpointing},
           {"logging_steps", c.logging_steps},
           {"evals_per_epoch", c.evals_per_epoch},
           {"eval_steps", c.eval_steps},
           {"saves_per_epoch", c.saves_per_epoch},
           {"save_steps", c.save_steps},
           {"early_stopping_patience", c.early_stopping_patience},
           {"loss_watchdog_threshold", c.loss_watchdog_threshold},
           {"loss_watchdog_patience", c.loss_watchdog_patience},
           {"seed", c.seed},
           {"output_model", c.output_model},
           {"output_dir", c.output_dir},
           {"experiment", c.experiment},
           {"run_name", c.run_name},
           {"num_workers", c.num_workers},
           {"nodes", c.nodes},
           {"device", c.device}};
  return out.dump();  // nlohmann's object is a std::map: keys come out sorted
}

std::string train_config_digest(const TrainJobConfig& config) {
  detail::Fnv1a64 hash;
  hash.str(to_canonical_json(config));
  return hash.hex();
}

Result<TrainingSchedule> training_schedule(const TrainJobConfig& config, int64_t rows_per_epoch) {
  TrainingSchedule s;
  s.rows_per_step = config.micro_batch_size * config.gradient_accumulation_steps * config.num_workers;
  if (s.rows_per_step < 1) {
    return invalid("micro_batch_size", "micro_batch_size * gradient_accumulation_steps * num_workers must be >= 1");
  }
  if (rows_per_epoch < 1 && config.max_steps == 0) {
    return invalid("datasets", "the training split has no rows, so an epoch has no steps");
  }
  s.steps_per_epoch = rows_per_epoch < 1 ? 0 : (rows_per_epoch + s.rows_per_step - 1) / s.rows_per_step;
  s.total_steps = config.max_steps > 0 ? config.max_steps : s.steps_per_epoch * config.num_epochs;
  s.warmup_steps = config.warmup_ratio
                       ? static_cast<int64_t>(std::ceil(*config.warmup_ratio * static_cast<double>(s.total_steps)))
                       : config.warmup_steps;
  if (s.warmup_steps >= s.total_steps && s.warmup_steps > 0) {
    return invalid(config.warmup_ratio ? "warmup_ratio" : "warmup_steps",
                   std::to_string(s.warmup_steps) + " warmup steps are not below the " +
                       std::to_string(s.total_steps) + " optimizer steps of the job");
  }
  auto every = [&](int64_t per_epoch, int64_t steps) -> int64_t {
    if (steps > 0) return steps;
    if (per_epoch == 0) return 0;
    return std::max<int64_t>(1, s.total_steps / (per_epoch * config.num_epochs));
  };
  s.eval_every = every(config.evals_per_epoch, config.eval_steps);
  s.save_every = every(config.saves_per_epoch, config.save_steps);
  return s;
}

Result<int64_t> total_optimizer_steps(const TrainJobConfig& config, int64_t rows_per_epoch) {
  Result<TrainingSchedule> schedule = training_schedule(config, rows_per_epoch);
  if (!schedule.ok()) return schedule.status();
  return schedule->total_steps;
}

double scheduled_learning_rate(const TrainJobConfig& config, const TrainingSchedule& schedule, int64_t step) {
  const double peak = config.learning_rate;
  int64_t total = schedule.total_steps;
  int64_t warmup = schedule.warmup_steps;
  step = std::clamp<int64_t>(step, 0, std::max<int64_t>(total, 1) - 1);
  if (step < warmup) return peak * static_cast<double>(step) / static_cast<double>(warmup);
  double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  switch (config.lr_scheduler) {
    case LrScheduler::constant: return peak;
    case LrScheduler::linear: return peak * std::max(0.0, 1.0 - progress);
    case LrScheduler::cosine: return peak * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return peak;
}

DataOptions data_options(const TrainJobConfig& config) {
  DataOptions options;
  options.sequence_len = static_cast<int32_t>(config.sequence_len);
  options.train_on_inputs = config.train_on_inputs;
  options.val_set_size = config.val_set_size;
  options.seed = config.seed;
  options.long_example_policy = config.excess_length_strategy;
  switch (config.chat_template) {
    case ChatTemplateChoice::tokenizer_default: options.chat_template = ""; break;
    case ChatTemplateChoice::chatml: options.chat_template = std::string(chatml_template()); break;
    case ChatTemplateChoice::jinja: options.chat_template = config.chat_template_jinja; break;
  }
  return options;
}

StreamOptions stream_options(const TrainJobConfig& config, int32_t shard_index) {
  StreamOptions options;
  options.sample_packing = config.sample_packing;
  options.shuffle = config.shuffle;
  options.seed = config.seed;
  options.num_shards = static_cast<int32_t>(config.num_workers);
  options.shard_index = shard_index;
  options.num_epochs = config.max_steps > 0 ? 0 : config.num_epochs;
  return options;
}

}  // namespace cairn
