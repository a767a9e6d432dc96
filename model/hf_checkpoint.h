// Hugging Face LlamaForCausalLM directories in and out: config.json, generation_config.json, and
// the weights as model.safetensors or as shards listed by model.safetensors.index.json. A
// checkpoint saved here loads in transformers (4 and 5) and back here unchanged.
#pragma once

#include <cstdint>
#include <string>

#include "model/llama.h"
#include "model/llama_config.h"
#include "runtime/status.h"

namespace cairn {

struct SaveOptions {
  // Tensor bytes per weights file. Above it the weights are split into
  // model-00001-of-0000N.safetensors with model.safetensors.index.json, as save_pretrained does (a
  // tensor larger than the limit gets a shard of its own). Default 5 GB, transformers' default:
  // smaller shards load in less peak memory elsewhere, more of them cost more files.
  uint64_t max_shard_bytes = 5'000'000'000;
};

// Loads the model in DIR. Weights come from DIR/model.safetensors if present, else from the shards
// DIR/model.safetensors.index.json names. Weights already in the options' dtype on CPU are used
// straight from the memory-mapped files (copy-on-write; the model keeps the mappings alive).
// Errors name the file and the problem: not_found (no config.json, no weights), invalid_argument
// (a bad config value, weights that do not match the config, pytorch_model.bin-only checkpoints),
// data_loss (a corrupt safetensors file or index).
Result<LlamaModel> load_llama(const std::string& dir, const ModelOptions& options = {});

// Saves the model to DIR (created if missing) in its dtype: config.json, generation_config.json
// and the weights (adapters merged into them are included; attached, unmerged adapters are not:
// model/lora.h saves those). Each file is written atomically; weights files of another layout
// left from an earlier save (model.safetensors vs shards) are removed afterwards.
// Errors: io_error naming the file; internal for a libtorch failure.
Status save_llama(const LlamaModel& model, const std::string& dir, const SaveOptions& options = {});

}  // namespace cairn
