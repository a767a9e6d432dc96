#include "model/generate.h"

#include <algorithm>

#include "model/detail/torch_error.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/sampling.h"

namespace cairn {

Result<std::vector<int64_t>> generate(const LlamaModel& model, const std::vector<int64_t>& prompt_ids,
                                      const GenerateOptions& options) {
  if (prompt_ids.empty()) return error(Code::invalid_argument, "generate: the prompt is empty");
  if (options.max_new_tokens < 0) {
    return error(Code::invalid_argument,
                 "generate: max_new_tokens " + std::to_string(options.max_new_tokens) + " must be at least 0");
  }
  if (model.training()) {
    return error(Code::invalid_argument, "generate: the model is in training mode (dropout on); set_training(false)");
  }
  CAIRN_RETURN_IF_ERROR(validate_sampling_options(options.sampling));
  std::vector<int64_t> output;
  if (options.max_new_tokens == 0) return output;
  const std::vector<int64_t>& eos = model.config().eos_token_ids;
  try {
    at::InferenceMode inference;
    const int64_t prompt_length = static_cast<int64_t>(prompt_ids.size());
    // The last new token is never fed back, so it needs no slot.
    auto cache = model.new_cache(1, prompt_length + options.max_new_tokens - 1);
    if (!cache.ok()) return cache.status();
    ForwardInput input;
    input.input_ids = at::tensor(prompt_ids, at::kLong).view({1, prompt_length});
    input.last_position_only = true;
    Sampler sampler(options.sampling);
    output.reserve(static_cast<size_t>(options.max_new_tokens));
    for (int64_t step = 0; step < options.max_new_tokens; ++step) {
      auto logits = model.forward(input, &*cache);
      if (!logits.ok()) return logits.status().with_context("generate");
      auto token = sampler.sample(logits->view({-1}));
      if (!token.ok()) return token.status().with_context("generate");
      output.push_back(*token);
      if (options.on_token && !options.on_token(*token)) break;
      if (options.stop_at_eos && std::find(eos.begin(), eos.end(), *token) != eos.end()) break;
      input.input_ids = at::full({1, 1}, *token, at::kLong);
    }
  } catch (...) {
    return detail::current_exception_status("generate");
  }
  return output;
}

TextGenerator::TextGenerator(std::unique_ptr<LlamaModel> model) : model_(std::move(model)) {}
TextGenerator::TextGenerator(TextGenerator&&) noexcept = default;
TextGenerator& TextGenerator::operator=(TextGenerator&&) noexcept = default;
TextGenerator::~TextGenerator() = default;

Result<TextGenerator> TextGenerator::load(const std::string& model_dir, const ModelOptions& options,
                                          const std::string& adapter_dir) {
  auto model = load_llama(model_dir, options);
  if (!model.ok()) return model.status();
  if (!adapter_dir.empty()) {
    auto adapter = load_lora(*model, adapter_dir);
    if (!adapter.ok()) return adapter.status();
  }
  return TextGenerator(std::make_unique<LlamaModel>(std::move(*model)));
}

const LlamaConfig& TextGenerator::config() const { return model_->config(); }

Result<std::vector<int64_t>> TextGenerator::generate(const std::vector<int64_t>& prompt_ids,
                                                     const GenerateOptions& options) const {
  return cairn::generate(*model_, prompt_ids, options);
}

}  // namespace cairn
