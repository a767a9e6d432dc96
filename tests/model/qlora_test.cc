// A Llama model with an NF4-quantized base: close to the fp32 model, about a quarter of its memory.
#include <gtest/gtest.h>

#include "model/hf_checkpoint.h"
#include "model/qlora.h"
#include "tests/model/model_testing.h"

namespace cairn {
namespace {

at::Tensor logits_of(const LlamaModel& model, const at::Tensor& ids) {
  ForwardInput input;
  input.input_ids = ids;
  auto logits = model.forward(input);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  return logits.ok() ? *logits : at::Tensor();
}

TEST(Qlora, QuantizedTinyLlamaStaysCloseToFp32) {
  auto model = load_llama(testing::kTinyLlama);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  at::Tensor ids = testing::reference_tensor(testing::kTinyLlama + "/reference.safetensors", "input_ids");
  at::Tensor dense = logits_of(*model, ids);
  const uint64_t dense_bytes = model_weight_bytes(*model);

  Status s = quantize_model_nf4(*model);
  ASSERT_TRUE(s.ok()) << s.to_string();
  for (const auto& [name, layer] : model->linear_layers()) {
    EXPECT_TRUE(layer->frozen_weight() != nullptr) << name << " was not quantized";
    EXPECT_FALSE(layer->weight().defined()) << name << " still holds its dense weight";
  }
  at::Tensor quantized = logits_of(*model, ids);
  auto relative_error = [&](const at::Tensor& logits) {
    return (logits - dense).norm().item<double>() / dense.norm().item<double>();
  };
  const double nf4_error = relative_error(quantized);
  const double cosine =
      at::cosine_similarity(quantized.flatten(0, 1), dense.flatten(0, 1), 1).min().item<double>();

  // The same weights through plain 4-bit absmax rounding (int4, blocks of 64): NF4's code book is
  // built for normally distributed weights and must do better.
  auto uniform = load_llama(testing::kTinyLlama);
  ASSERT_TRUE(uniform.ok());
  {
    at::NoGradGuard no_grad;
    for (auto& [name, layer] : uniform->linear_layers()) {
      at::Tensor w = layer->mutable_weight();
      at::Tensor blocks = w.reshape({-1, 64});
      at::Tensor absmax = blocks.abs().amax(1, true).clamp_min(1e-12);
      w.copy_(((blocks / absmax * 7).round().clamp(-7, 7) / 7 * absmax).reshape(w.sizes()));
    }
  }
  const double int4_error = relative_error(logits_of(*uniform, ids));
  std::printf("tiny-llama logits relative error: NF4 %.4f (min cosine %.4f), int4 absmax %.4f; weights %.3fx of fp32\n",
              nf4_error, cosine, int4_error, static_cast<double>(model_weight_bytes(*model)) / static_cast<double>(dense_bytes));
  EXPECT_GT(nf4_error, 0.0) << "quantization must change something";
  EXPECT_LT(nf4_error, 0.35);
  EXPECT_GT(cosine, 0.9);
  EXPECT_LT(nf4_error, int4_error);
}

TEST(Qlora, QuantizedModelTakesAboutAQuarterOfFp32Memory) {
  // Big enough that the decoder's linear layers dominate, as in real models.
  LlamaConfig config;
  config.vocab_size = 1024;
  config.hidden_size = 512;
  config.intermediate_size = 1536;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 8;
  config.head_dim = 64;
  auto model = LlamaModel::random(config, {}, 11);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const uint64_t dense = model_weight_bytes(*model);
  ASSERT_TRUE(quantize_model_nf4(*model).ok());
  const uint64_t quantized = model_weight_bytes(*model);
  const double ratio = static_cast<double>(quantized) / static_cast<double>(dense);
  std::printf("NF4 model: %.2f MiB of %.2f MiB fp32 = %.3fx\n", quantized / 1048576.0, dense / 1048576.0, ratio);
  EXPECT_GT(ratio, 0.18);
  EXPECT_LT(ratio, 0.32);
  at::Tensor ids = at::randint(0, config.vocab_size, {1, 8}, at::kLong);
  EXPECT_TRUE(logits_of(*model, ids).defined());
}

}  // namespace
}  // namespace cairn
