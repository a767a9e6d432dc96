// Single-request text generation: the reference path that batched serving must match token for
// token. Torch-free, so the CLI and actors that only drive generation skip libtorch's headers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/llama_config.h"
#include "model/sampling_options.h"
#include "runtime/status.h"

namespace cairn {

class LlamaModel;

struct GenerateOptions {
  // New tokens at most. Default 128; 0 returns nothing.
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  // Stop after a token in the config's eos_token_ids (which is then the last one returned).
  // false keeps going to max_new_tokens (`--ignore-eos`).
  bool stop_at_eos = true;
  // Called with each new token as soon as it is chosen, on the generating thread; returning false
  // stops generation after that token. May be empty.
  std::function<bool(int64_t)> on_token;
};

// Continues `prompt_ids` by prefilling them into a KV cache sized for prompt + max_new_tokens and
// then decoding one token per step, under inference mode. Returns the new tokens only.
// Errors: invalid_argument for an empty prompt, an id outside the vocabulary, bad sampling
// options, a negative max_new_tokens or a model in training mode; internal for libtorch failures.
Result<std::vector<int64_t>> generate(const LlamaModel& model, const std::vector<int64_t>& prompt_ids,
                                      const GenerateOptions& options);

// A model loaded for generation behind a torch-free interface. Movable, not copyable; generate()
// may run on several threads at once.
class TextGenerator {
 public:
  // Loads the Hugging Face directory `model_dir` (model/hf_checkpoint.h) and, when `adapter_dir`
  // is not empty, attaches the PEFT LoRA adapter in it (model/lora.h). Errors are theirs.
  static Result<TextGenerator> load(const std::string& model_dir, const ModelOptions& options,
                                    const std::string& adapter_dir = "");

  TextGenerator(TextGenerator&&) noexcept;
  TextGenerator& operator=(TextGenerator&&) noexcept;
  TextGenerator(const TextGenerator&) = delete;
  TextGenerator& operator=(const TextGenerator&) = delete;
  ~TextGenerator();

  const LlamaConfig& config() const;
  Result<std::vector<int64_t>> generate(const std::vector<int64_t>& prompt_ids, const GenerateOptions& options) const;

 private:
  explicit TextGenerator(std::unique_ptr<LlamaModel> model);
  std::unique_ptr<LlamaModel> model_;
};

}  // namespace cairn
