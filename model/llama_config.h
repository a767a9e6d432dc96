// The configuration of a Llama-family model, as a Hugging Face config.json describes it, and the
// options a model is built with. Torch-free: the CLI, the registry and the actors read configs
// without libtorch's headers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn {

// How rotary position embeddings (RoPE) scale their frequencies, as transformers names it in
// rope_parameters.rope_type (or the older rope_scaling.type).
enum class RopeType : uint8_t {
  standard,  // "default": inv_freq[i] = theta^(-2i/head_dim)
  linear,    // "linear": inv_freq / factor (positions interpolated)
  llama3,    // "llama3": Llama 3.1's band-wise scaling (transformers' _compute_llama3_parameters)
};

struct RopeParameters {
  RopeType type = RopeType::standard;
  // Base of the frequencies ("rope_theta").
  double theta = 10000.0;
  // linear and llama3: how much longer the context is than the one trained on ("factor").
  double factor = 1.0;
  // llama3: wavelengths longer than original_max_position_embeddings / low_freq_factor are divided
  // by factor; those shorter than original_max_position_embeddings / high_freq_factor are kept;
  // the band between is interpolated.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// A LlamaForCausalLM's architecture. Defaults are those transformers' LlamaConfig uses for a key a
// config.json leaves out (Llama 2 7B), so a config read from a file means what it means there.
struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;  // the SwiGLU MLP's inner width
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  // Grouped-query attention when fewer than num_attention_heads (which it must divide); 1 is
  // multi-query attention. A file without the key gets num_attention_heads.
  int64_t num_key_value_heads = 32;
  // A file without the key gets hidden_size / num_attention_heads.
  int64_t head_dim = 128;
  // Longest context the model was trained for. Informative: positions past it are computed, not
  // refused.
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  RopeParameters rope;
  // The output head shares the embedding matrix.
  bool tie_word_embeddings = false;
  // q/k/v/o projections carry a bias ("attention_bias"); gate/up/down do ("mlp_bias").
  bool attention_bias = false;
  bool mlp_bias = false;
  // Dropout on attention probabilities, in training mode only.
  double attention_dropout = 0.0;
  // Standard deviation of the normal initialisation of a model with random weights.
  double initializer_range = 0.02;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  // Generation stops at any of these; from generation_config.json when it has them, else from
  // config.json. Empty: never stops early.
  std::vector<int64_t> eos_token_ids;
  // The dtype the checkpoint was saved in ("dtype" or "torch_dtype"), e.g. "bfloat16"; informative.
  std::string checkpoint_dtype = "float32";

  // Checks that the sizes are positive and consistent (heads divide, head_dim even, ...). Errors
  // (invalid_argument) name the key, its value and what is allowed.
  Status validate() const;
};

// Parses a config.json's text. Both layouts are accepted: transformers 5 ("rope_parameters":
// {"rope_type", "rope_theta", ...}) and earlier ("rope_theta" at the top level, "rope_scaling").
// `source` names the file in errors. Errors (invalid_argument): not JSON; a key with the wrong
// type or a bad value (naming key, value, and what is allowed); model_type other than "llama";
// hidden_act other than "silu"; a rope type other than default, linear and llama3; a partial
// rotary factor; and whatever validate() rejects.
Result<LlamaConfig> parse_llama_config(std::string_view json_text, const std::string& source);

// Reads DIR/config.json and, when present, DIR/generation_config.json (whose eos_token_id, when
// set, replaces config.json's). Errors: not_found / io_error for an unreadable config.json, and
// those of parse_llama_config, each naming the file.
Result<LlamaConfig> read_llama_config(const std::string& dir);

// config.json text for `config`, loadable by transformers 4 and 5: rope_theta and rope_scaling at
// the top level and the same as rope_parameters. `dtype` is the saved weights' dtype name
// ("float32", "bfloat16", "float16").
std::string llama_config_to_json(const LlamaConfig& config, std::string_view dtype);
// generation_config.json text: bos, eos and pad token ids.
std::string generation_config_to_json(const LlamaConfig& config);

// The dtype a model computes and keeps its weights in.
enum class Precision : uint8_t { float32, bfloat16, float16 };
// "float32", "bfloat16", "float16".
std::string_view precision_name(Precision precision);
// Also accepts the short forms "fp32", "bf16", "fp16"; nullopt for anything else.
std::optional<Precision> precision_from_name(std::string_view name);

// How a model is built or loaded.
struct ModelOptions {
  // Weights and activations. Default float32. bfloat16 and float16 halve the memory; softmax and
  // RMSNorm still compute in float32, as transformers does.
  Precision dtype = Precision::float32;
  // A libtorch device string: "cpu" (default), "cuda", "cuda:1".
  std::string device = "cpu";
};

}  // namespace cairn
