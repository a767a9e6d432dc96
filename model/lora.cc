#include "model/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "model/detail/files.h"
#include "model/detail/torch_error.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"

namespace cairn {
namespace {

using nlohmann::json;

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
// PEFT saves a LlamaForCausalLM adapter under PeftModel.base_model (LoraModel).model.
constexpr const char* kPeftPrefix = "base_model.model.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool all_linear(const LoraConfig& config) {
  return config.target_modules_regex.empty() && config.target_modules.size() == 1 &&
         config.target_modules[0] == "all-linear";
}

using Layers = std::vector<std::pair<std::string, Linear*>>;

// The layers `config` targets, after checking that each listed name matches one and that none is
// adapted already.
Result<Layers> select_layers(LlamaModel& model, const LoraConfig& config) {
  CAIRN_RETURN_IF_ERROR(config.validate());
  Layers selected;
  std::set<std::string> matched;
  std::regex pattern;
  if (!config.target_modules_regex.empty()) pattern = std::regex(config.target_modules_regex);
  for (auto& [name, linear] : model.linear_layers()) {
    bool hit = false;
    if (!config.target_modules_regex.empty()) {
      hit = std::regex_match(name, pattern);
    } else if (all_linear(config)) {
      hit = name != "lm_head";
    } else {
      for (const auto& target : config.target_modules) {
        if (name == target || ends_with(name, "." + target)) {
          hit = true;
          matched.insert(target);
        }
      }
    }
    if (hit) selected.emplace_back(name, linear);
  }
  if (config.target_modules_regex.empty() && !all_linear(config)) {
    for (const auto& target : config.target_modules) {
      if (matched.count(target) == 0) {
        return error(Code::invalid_argument, "target_modules: \"" + target +
                                                 "\" matches no linear layer (q_proj, k_proj, v_proj, o_proj, "
                                                 "gate_proj, up_proj, down_proj, lm_head)");
      }
    }
  }
  if (selected.empty()) {
    return error(Code::invalid_argument, "target_modules: \"" + config.target_modules_regex + "\" matches no linear layer");
  }
  for (const auto& [name, linear] : selected) {
    if (linear->lora()) return error(Code::invalid_argument, name + " already has a LoRA adapter");
    if (name == "lm_head" && model.config().tie_word_embeddings) {
      return error(Code::invalid_argument, "target_modules: lm_head is tied to the embeddings; LoRA on it is not supported");
    }
  }
  return selected;
}

Layers adapted_layers(LlamaModel& model) {
  Layers out;
  for (auto& [name, linear] : model.linear_layers()) {
    if (linear->lora()) out.emplace_back(name, linear);
  }
  return out;
}

// Adds (merge) or subtracts scale * B A to the base weight of every adapted layer not yet in that state.
Status set_merged(LlamaModel& model, bool merge) {
  Layers layers = adapted_layers(model);
  if (layers.empty()) return error(Code::invalid_argument, "no LoRA adapter is attached");
  for (const auto& [name, linear] : layers) {
    if (linear->frozen_weight() && linear->lora()->merged != merge) {
      return error(Code::invalid_argument,
                   name + ": its base weight is computed (quantized) and cannot absorb the adapter");
    }
  }
  try {
    at::NoGradGuard no_grad;
    for (const auto& [name, linear] : layers) {
      LoraWeights& lora = *linear->mutable_lora();
      if (lora.merged == merge) continue;
      at::Tensor& weight = linear->mutable_weight();
      at::Tensor delta = at::matmul(lora.b.to(at::kFloat), lora.a.to(at::kFloat)).mul_(lora.scale);
      at::Tensor updated = merge ? weight.to(at::kFloat) + delta : weight.to(at::kFloat) - delta;
      weight.copy_(updated);
      lora.merged = merge;
    }
  } catch (...) {
    return detail::current_exception_status(merge ? "merge_lora" : "unmerge_lora");
  }
  return Status::ok_status();
}

Status unsupported(const std::string& key, const json& value, const std::string& why) {
  return error(Code::invalid_argument, "\"" + key + "\" is " + value.dump() + ": " + why);
}

bool is_unset(const json& value) {
  return value.is_null() || (value.is_boolean() && !value.get<bool>()) ||
         ((value.is_object() || value.is_array()) && value.empty());
}

Status parse_lora_object(const json& j, LoraConfig* out) {
  if (!j.is_object()) return error(Code::invalid_argument, "not a JSON object");
  LoraConfig c;
  auto get = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  if (const json* v = get("peft_type"); v != nullptr && *v != "LORA") {
    return unsupported("peft_type", *v, "only \"LORA\" adapters are supported");
  }
  if (const json* v = get("r"); v != nullptr) {
    if (!v->is_number_integer() || v->get<int64_t>() < 1) return unsupported("r", *v, "must be a positive integer");
    c.rank = v->get<int64_t>();
  }
  if (const json* v = get("lora_alpha"); v != nullptr) {
    if (!v->is_number()) return unsupported("lora_alpha", *v, "must be a number");
    c.alpha = v->get<double>();
  }
  if (const json* v = get("lora_dropout"); v != nullptr) {
    if (!v->is_number()) return unsupported("lora_dropout", *v, "must be a number in [0, 1)");
    c.dropout = v->get<double>();
  }
  if (const json* v = get("use_rslora"); v != nullptr) {
    if (!v->is_boolean()) return unsupported("use_rslora", *v, "must be true or false");
    c.use_rslora = v->get<bool>();
  }
  if (const json* v = get("target_modules"); v != nullptr) {
    if (v->is_string()) {
      const std::string text = v->get<std::string>();
      if (text == "all-linear") {
        c.target_modules = {"all-linear"};
      } else {
        c.target_modules.clear();
        c.target_modules_regex = text;
      }
    } else if (v->is_array()) {
      c.target_modules.clear();
      for (const auto& name : *v) {
        if (!name.is_string()) return unsupported("target_modules", *v, "must be a list of module names or a regex");
        c.target_modules.push_back(name.get<std::string>());
      }
    } else {
      return unsupported("target_modules", *v, "must be a list of module names or a regex");
    }
  }
  if (const json* v = get("base_model_name_or_path"); v != nullptr && v->is_string()) {
    c.base_model_name_or_path = v->get<std::string>();
  }
  if (const json* v = get("bias"); v != nullptr && *v != "none") {
    return unsupported("bias", *v, "only \"none\" is supported (no trainable biases)");
  }
  // Features of PEFT that change the computation and are not implemented here: refuse them rather
  // than compute something else.
  const std::pair<const char*, const char*> refused[] = {
      {"use_dora", "DoRA is not supported"},
      {"rank_pattern", "per-layer ranks are not supported"},
      {"alpha_pattern", "per-layer alphas are not supported"},
      {"layers_to_transform", "adapting a subset of layers is not supported"},
      {"modules_to_save", "fully trained extra modules are not supported"},
      {"fan_in_fan_out", "transposed (Conv1D) weights are not supported"},
      {"lora_bias", "LoRA biases are not supported"},
      {"exclude_modules", "excluded modules are not supported"},
      {"target_parameters", "LoRA on parameters is not supported"},
      {"trainable_token_indices", "trainable tokens are not supported"},
      {"use_qalora", "QA-LoRA is not supported"},
  };
  for (const auto& [key, why] : refused) {
    if (const json* v = get(key); v != nullptr && !is_unset(*v)) return unsupported(key, *v, why);
  }
  CAIRN_RETURN_IF_ERROR(c.validate());
  *out = std::move(c);
  return Status::ok_status();
}

}  // namespace

double LoraConfig::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

Status LoraConfig::validate() const {
  if (rank < 1) return error(Code::invalid_argument, "\"r\" is " + std::to_string(rank) + ": must be at least 1");
  if (!(alpha >= 0)) return error(Code::invalid_argument, "\"lora_alpha\" must be at least 0");
  if (!(dropout >= 0 && dropout < 1)) {
    return error(Code::invalid_argument, "\"lora_dropout\" is " + std::to_string(dropout) + ": must be in [0, 1)");
  }
  if (target_modules_regex.empty() && target_modules.empty()) {
    return error(Code::invalid_argument, "\"target_modules\" is empty: name at least one module");
  }
  if (!target_modules_regex.empty()) {
    try {
      std::regex check(target_modules_regex);
    } catch (const std::regex_error& e) {
      return error(Code::invalid_argument,
                   "\"target_modules\" regex \"" + target_modules_regex + "\" does not compile: " + e.what());
    }
  }
  return Status::ok_status();
}

Result<LoraConfig> parse_lora_config(std::string_view json_text, const std::string& source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return error(Code::invalid_argument, source + ": not valid JSON");
  LoraConfig config;
  Status status = parse_lora_object(j, &config);
  if (!status.ok()) return status.with_context(source);
  return config;
}

std::string lora_config_to_json(const LoraConfig& c) {
  json targets = c.target_modules_regex.empty() ? json(c.target_modules) : json(c.target_modules_regex);
  if (all_linear(c)) targets = "all-linear";
  json out = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path)},
      {"r", c.rank},
      {"lora_alpha", c.alpha},
      {"lora_dropout", c.dropout},
      {"target_modules", targets},
      {"use_rslora", c.use_rslora},
      {"use_dora", false},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
      {"revision", nullptr},
  };
  return out.dump(2) + "\n";
}

Status attach_lora(LlamaModel& model, const LoraConfig& config, uint64_t seed) {
  auto layers = select_layers(model, config);
  if (!layers.ok()) return layers.status();
  try {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    const auto target = at::TensorOptions().dtype(model.dtype()).device(model.device());
    std::vector<LoraWeights> adapters;
    for (const auto& [name, linear] : *layers) {
      // PEFT: kaiming_uniform_(lora_A, a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); lora_B zeros.
      const double bound = 1.0 / std::sqrt(static_cast<double>(linear->in_features()));
      at::Tensor a = at::rand({config.rank, linear->in_features()}, generator).mul_(2 * bound).sub_(bound);
      LoraWeights lora;
      lora.a = a.to(target).requires_grad_(true);
      lora.b = at::zeros({linear->out_features(), config.rank}, target).requires_grad_(true);
      lora.scale = config.scale();
      lora.dropout = config.dropout;
      adapters.push_back(std::move(lora));
    }
    for (size_t i = 0; i < layers->size(); ++i) (*layers)[i].second->mutable_lora() = std::move(adapters[i]);
  } catch (...) {
    return detail::current_exception_status("attach_lora");
  }
  model.set_base_trainable(false);
  return Status::ok_status();
}

Result<LoraConfig> load_lora(LlamaModel& model, const std::string& dir) {
  const std::string config_path = dir + "/" + kConfigFile;
  const std::string weights_path = dir + "/" + kWeightsFile;
  auto text = detail::read_file(config_path);
  if (!text.ok()) return text.status();
  auto config = parse_lora_config(*text, config_path);
  if (!config.ok()) return config.status();
  auto layers = select_layers(model, *config);
  if (!layers.ok()) return layers.status().with_context(config_path);
  auto reader = safetensors::Reader::open(weights_path);
  if (!reader.ok()) return reader.status();

  std::vector<LoraWeights> adapters;
  std::set<std::string> used;
  try {
    const auto target = at::TensorOptions().dtype(model.dtype()).device(model.device());
    for (const auto& [name, linear] : *layers) {
      LoraWeights lora;
      lora.scale = config->scale();
      lora.dropout = config->dropout;
      const std::pair<const char*, std::vector<int64_t>> parts[] = {
          {".lora_A.weight", {config->rank, linear->in_features()}},
          {".lora_B.weight", {linear->out_features(), config->rank}}};
      for (const auto& [suffix, shape] : parts) {
        const std::string tensor_name = kPeftPrefix + name + suffix;
        auto tensor = safetensors::read_tensor(*reader, tensor_name);
        if (!tensor.ok()) {
          return error(tensor.status().code() == Code::not_found ? Code::invalid_argument : tensor.status().code(),
                       tensor.status().message() + " (the config targets " + name + ")");
        }
        if (tensor->sizes() != at::IntArrayRef(shape)) {
          return error(Code::invalid_argument, weights_path + ": tensor \"" + tensor_name + "\" has shape " +
                                                   c10::str(tensor->sizes()) + " but rank " +
                                                   std::to_string(config->rank) + " and the layer need " +
                                                   c10::str(at::IntArrayRef(shape)));
        }
        at::Tensor value = tensor->to(target).detach().requires_grad_(true);
        (std::string(suffix) == ".lora_A.weight" ? lora.a : lora.b) = value;
        used.insert(tensor_name);
      }
      adapters.push_back(std::move(lora));
    }
  } catch (...) {
    return detail::current_exception_status(weights_path);
  }
  for (const auto& info : reader->tensors()) {
    if (used.count(info.name) == 0) {
      return error(Code::invalid_argument, weights_path + ": tensor \"" + info.name +
                                               "\" is not an adapter weight of a layer the config targets");
    }
  }
  for (size_t i = 0; i < layers->size(); ++i) (*layers)[i].second->mutable_lora() = std::move(adapters[i]);
  model.set_base_trainable(false);
  return config;
}

Status save_lora(const LlamaModel& model, const LoraConfig& config, const std::string& dir) {
  CAIRN_RETURN_IF_ERROR(config.validate());
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, linear] : model.linear_layers()) {
    if (!linear->lora()) continue;
    const LoraWeights& lora = *linear->lora();
    if (lora.a.size(0) != config.rank) {
      return error(Code::invalid_argument, name + ": attached adapter has rank " + std::to_string(lora.a.size(0)) +
                                               " but the config says " + std::to_string(config.rank));
    }
    tensors.emplace_back(kPeftPrefix + name + ".lora_A.weight", lora.a);
    tensors.emplace_back(kPeftPrefix + name + ".lora_B.weight", lora.b);
  }
  if (tensors.empty()) return error(Code::invalid_argument, "save_lora: no LoRA adapter is attached");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return error(Code::io_error, dir + ": cannot create: " + ec.message());
  CAIRN_RETURN_IF_ERROR(safetensors::write_tensors(dir + "/" + kWeightsFile, tensors, {{"format", "pt"}}));
  return detail::write_file_atomically(dir + "/" + kConfigFile, lora_config_to_json(config));
}

Status merge_lora(LlamaModel& model) { return set_merged(model, true); }

Status unmerge_lora(LlamaModel& model) { return set_merged(model, false); }

Status detach_lora(LlamaModel& model) {
  Layers layers = adapted_layers(model);
  if (layers.empty()) return Status::ok_status();
  for (const auto& [name, linear] : layers) {
    if (linear->lora()->merged) {
      CAIRN_RETURN_IF_ERROR(unmerge_lora(model));
      break;
    }
  }
  for (const auto& [name, linear] : layers) linear->mutable_lora().reset();
  return Status::ok_status();
}

}  // namespace cairn
