// LoRA adapters (Hu et al. 2021) on a LlamaModel's linear layers, in PEFT's formats: a directory
// with adapter_config.json and adapter_model.safetensors (tensors named
// "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight"), so adapters trained with PEFT
// load here and adapters trained here load in PEFT.
//
// An attached adapter adds scale * B A dropout(x) to its layer's output, with the base weights
// frozen and only lora_A / lora_B trainable. Merging adds scale * B A into the dense base weights
// (for serving at base-model speed); unmerging subtracts it again.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/llama.h"
#include "runtime/status.h"

namespace cairn {

// PEFT's LoraConfig, the fields Cairn supports.
struct LoraConfig {
  // "r": the adapter's rank. Higher ranks fit more and cost rank * (in + out) parameters per layer.
  int64_t rank = 8;
  // "lora_alpha": the adapter's output is scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA).
  double alpha = 8.0;
  // "lora_dropout": dropout on the adapter's input, in training mode only. In [0, 1).
  double dropout = 0.0;
  // "target_modules": module names as PEFT matches them: a name matches every layer whose module
  // name is it or ends with "." + it ("q_proj", "mlp.down_proj", "lm_head"). "all-linear" (the
  // list's only entry) targets every projection but not lm_head. Every name must match some layer.
  // PEFT's default for Llama: q_proj and v_proj.
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  // "target_modules" given as a single string: a regular expression every targeted module name
  // matches in full (PEFT's re.fullmatch; ECMAScript syntax here). Used instead of
  // target_modules when not empty.
  std::string target_modules_regex;
  // "use_rslora": scale by alpha / sqrt(rank) (rank-stabilised LoRA).
  bool use_rslora = false;
  // "base_model_name_or_path": informative, written to adapter_config.json.
  std::string base_model_name_or_path;

  double scale() const;
  // invalid_argument naming the key for a rank below 1, a negative alpha, dropout outside [0, 1),
  // no targets, or a regex that does not compile.
  Status validate() const;
};

// Parses adapter_config.json's text; `source` names it in errors. invalid_argument for a
// peft_type other than LORA and for features Cairn does not implement (DoRA, rank or alpha
// patterns, layers_to_transform, modules_to_save, trainable biases, fan_in_fan_out), naming the
// key; and for what validate() rejects.
Result<LoraConfig> parse_lora_config(std::string_view json_text, const std::string& source);
// adapter_config.json text that PEFT loads.
std::string lora_config_to_json(const LoraConfig& config);

// Attaches a fresh adapter to every targeted layer, initialised as PEFT does (lora_A
// kaiming-uniform, lora_B zeros, so the model's output is unchanged until trained), reproducibly
// from `seed`. Freezes every base parameter; the adapter's weights require grad.
// Errors (invalid_argument; the model is then unchanged): a bad config, a target matching no
// layer, a layer that already has an adapter, lm_head targeted while tied to the embeddings.
Status attach_lora(LlamaModel& model, const LoraConfig& config, uint64_t seed);

// Reads DIR/adapter_config.json and DIR/adapter_model.safetensors and attaches the adapter
// (base frozen, adapter trainable), converting its weights to the model's dtype and device.
// Returns its config. Errors name the file: not_found, data_loss (corrupt safetensors),
// invalid_argument (unsupported config, a missing, misshapen or unexpected tensor, or the errors
// of attach_lora); the model is then unchanged.
Result<LoraConfig> load_lora(LlamaModel& model, const std::string& dir);

// Writes the attached adapters to DIR (created if missing) as PEFT does, each file atomically.
// Errors: invalid_argument when no adapter is attached or the attached ranks differ from
// config.rank; io_error naming the file.
Status save_lora(const LlamaModel& model, const LoraConfig& config, const std::string& dir);

// Adds scale * B A into every adapted layer's dense base weight (computed in float32) and marks
// the adapters merged, so forward skips them. Layers already merged are left alone.
// Errors (invalid_argument, nothing changed): no adapter attached, or an adapted layer whose base
// is a FrozenWeight (a quantized base cannot absorb the adapter).
Status merge_lora(LlamaModel& model);
// Subtracts what merge_lora added (exact up to rounding in the weight's dtype). Errors as merge_lora.
Status unmerge_lora(LlamaModel& model);
// Removes every adapter (unmerging merged ones first). The base stays frozen.
Status detach_lora(LlamaModel& model);

}  // namespace cairn
