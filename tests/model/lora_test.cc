#include "model/lora.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/detail/files.h"
#include "model/hf_checkpoint.h"
#include "model_testing.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing::kTinyLlama;
using testing::kTinyLlamaLora;
using testing::max_abs_diff;
using testing::reference_tensor;
using testing::ScratchDir;

const std::string kLoraReference = kTinyLlamaLora + "/reference.safetensors";

at::Tensor logits_of(const LlamaModel& model, const at::Tensor& ids) {
  ForwardInput input;
  input.input_ids = ids;
  auto logits = model.forward(input);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  return logits.ok() ? *logits : at::Tensor();
}

LlamaModel base_model() {
  auto model = load_llama(kTinyLlama);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::move(*model);
}

// Layer name -> a copy of its dense base weight.
std::map<std::string, at::Tensor> base_weights(LlamaModel& model) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, linear] : model.linear_layers()) out[name] = linear->weight().clone();
  return out;
}

TEST(LoraTest, PeftAdapterMatchesTransformersLogits) {
  LlamaModel model = base_model();
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LoraConfig config, load_lora(model, kTinyLlamaLora));
  EXPECT_EQ(config.rank, 4);
  EXPECT_DOUBLE_EQ(config.alpha, 8.0);
  EXPECT_DOUBLE_EQ(config.scale(), 2.0);
  EXPECT_EQ(config.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  at::Tensor expected = reference_tensor(kLoraReference, "logits");
  at::Tensor logits = logits_of(model, ids);
  EXPECT_LT(max_abs_diff(logits, expected), 1e-4);
  // The adapter matters: without it the logits are elsewhere.
  LlamaModel base = base_model();
  EXPECT_GT(max_abs_diff(logits_of(base, ids), expected), 1e-2);
}

TEST(LoraTest, OnlyAdapterWeightsAreTrainable) {
  LlamaModel model = base_model();
  model.set_base_trainable(true);  // attaching freezes the base again
  ASSERT_TRUE(load_lora(model, kTinyLlamaLora).ok());
  std::vector<std::string> trainable;
  for (const auto& [name, tensor] : model.named_parameters()) {
    if (tensor.requires_grad()) trainable.push_back(name);
  }
  ASSERT_EQ(trainable.size(), 8u);  // 2 layers x {q, v} x {A, B}
  for (const auto& name : trainable) EXPECT_NE(name.find(".lora_"), std::string::npos) << name;
  EXPECT_EQ(model.trainable_parameters().size(), 8u);

  model.set_training(true);
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  at::Tensor loss = logits_of(model, ids).logsumexp(-1).mean();
  loss.backward();
  for (const auto& [name, tensor] : model.named_parameters()) {
    const bool adapter = name.find(".lora_") != std::string::npos;
    EXPECT_EQ(tensor.grad().defined(), adapter) << name;
  }
}

TEST(LoraTest, MergeMatchesTheUnmergedAdapterAndUnmergeRestoresTheBase) {
  LlamaModel model = base_model();
  auto before = base_weights(model);
  ASSERT_TRUE(load_lora(model, kTinyLlamaLora).ok());
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  at::Tensor unmerged = logits_of(model, ids);

  CAIRN_MODEL_ASSERT_OK(merge_lora(model));
  EXPECT_GT(max_abs_diff(model.linear_layers()[0].second->weight(), before["model.layers.0.self_attn.q_proj"]), 1e-3);
  EXPECT_LT(max_abs_diff(logits_of(model, ids), unmerged), 1e-4);
  CAIRN_MODEL_ASSERT_OK(merge_lora(model));  // idempotent: merged layers are left alone
  EXPECT_LT(max_abs_diff(logits_of(model, ids), unmerged), 1e-4);

  // Merged weights are what a plain checkpoint holds: saved and reloaded without the adapter,
  // they give the adapter's logits.
  ScratchDir dir("lora-merged");
  CAIRN_MODEL_ASSERT_OK(save_llama(model, dir.path()));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel merged_checkpoint, load_llama(dir.path()));
  EXPECT_LT(max_abs_diff(logits_of(merged_checkpoint, ids), unmerged), 1e-4);

  CAIRN_MODEL_ASSERT_OK(unmerge_lora(model));
  for (auto& [name, linear] : model.linear_layers()) {
    EXPECT_LT(max_abs_diff(linear->weight(), before[name]), 1e-6) << name;
  }
  EXPECT_LT(max_abs_diff(logits_of(model, ids), unmerged), 1e-5);

  CAIRN_MODEL_ASSERT_OK(detach_lora(model));
  LlamaModel base = base_model();
  EXPECT_LT(max_abs_diff(logits_of(model, ids), logits_of(base, ids)), 1e-5);
  EXPECT_EQ(merge_lora(model).code(), Code::invalid_argument);  // nothing attached
}

TEST(LoraTest, SaveThenLoadRoundTripsThroughPeftFiles) {
  LlamaModel model = base_model();
  LoraConfig config;
  config.rank = 3;
  config.alpha = 6;
  config.target_modules = {"k_proj", "mlp.down_proj"};
  CAIRN_MODEL_ASSERT_OK(attach_lora(model, config, /*seed=*/42));
  {
    at::NoGradGuard no_grad;  // a trained adapter: B is no longer zero
    for (auto& [name, tensor] : model.named_parameters()) {
      if (name.find("lora_B") != std::string::npos) tensor.normal_(0, 0.1);
    }
  }
  ScratchDir dir("lora-save");
  CAIRN_MODEL_ASSERT_OK(save_lora(model, config, dir.path()));

  auto reader = safetensors::Reader::open(dir.file("adapter_model.safetensors"));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->tensors().size(), 8u);
  EXPECT_NE(reader->find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), nullptr);
  EXPECT_NE(reader->find("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"), nullptr);
  auto text = detail::read_file(dir.file("adapter_config.json"));
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["r"], 3);
  EXPECT_EQ(j["target_modules"], (nlohmann::json{"k_proj", "mlp.down_proj"}));

  LlamaModel fresh = base_model();
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LoraConfig loaded, load_lora(fresh, dir.path()));
  EXPECT_EQ(loaded.rank, 3);
  EXPECT_DOUBLE_EQ(loaded.scale(), 2.0);
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  EXPECT_TRUE(at::equal(logits_of(fresh, ids), logits_of(model, ids)));
}

TEST(LoraTest, FreshAdapterStartsAsTheIdentity) {
  LlamaModel model = base_model();
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  at::Tensor base = logits_of(model, ids);
  LoraConfig config;
  config.target_modules = {"all-linear"};
  CAIRN_MODEL_ASSERT_OK(attach_lora(model, config, 1));
  int adapted = 0;
  for (auto& [name, linear] : model.linear_layers()) {
    if (!linear->lora()) continue;
    ++adapted;
    EXPECT_NE(name, "lm_head");
    EXPECT_GT(linear->lora()->a.abs().sum().item<double>(), 0.0);
    EXPECT_LE(linear->lora()->a.abs().max().item<double>(), 1.0 / std::sqrt(linear->in_features()) + 1e-7);
  }
  EXPECT_EQ(adapted, 14);
  EXPECT_TRUE(at::equal(logits_of(model, ids), base));
}

TEST(LoraTest, DropoutActsInTrainingModeOnly) {
  LlamaModel model = base_model();
  LoraConfig config;
  config.dropout = 0.5;
  CAIRN_MODEL_ASSERT_OK(attach_lora(model, config, 1));
  {
    at::NoGradGuard no_grad;
    for (auto& [name, tensor] : model.named_parameters()) {
      if (name.find("lora_B") != std::string::npos) tensor.fill_(0.1);
    }
  }
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  at::Tensor eval_a = logits_of(model, ids), eval_b = logits_of(model, ids);
  EXPECT_TRUE(at::equal(eval_a, eval_b));
  model.set_training(true);
  EXPECT_GT(max_abs_diff(logits_of(model, ids), eval_a), 1e-4);
}

TEST(LoraTest, TargetsMatchAsPeftDoesAndBadOnesAreRefused) {
  {
    LlamaModel model = base_model();
    LoraConfig regex;
    regex.target_modules_regex = R"(.*layers\.1\.self_attn\.(q|o)_proj)";
    CAIRN_MODEL_ASSERT_OK(attach_lora(model, regex, 1));
    std::vector<std::string> adapted;
    for (auto& [name, linear] : model.linear_layers()) {
      if (linear->lora()) adapted.push_back(name);
    }
    EXPECT_EQ(adapted, (std::vector<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.o_proj"}));
    // Attaching twice is refused, and leaves the model as it was.
    Status again = attach_lora(model, regex, 2);
    EXPECT_EQ(again.code(), Code::invalid_argument);
    EXPECT_NE(again.message().find("already has"), std::string::npos);
  }
  LlamaModel model = base_model();
  LoraConfig typo;
  typo.target_modules = {"q_proj", "qproj"};
  Status status = attach_lora(model, typo, 1);
  EXPECT_EQ(status.code(), Code::invalid_argument);
  EXPECT_NE(status.message().find("\"qproj\""), std::string::npos) << status.to_string();
  for (auto& [name, linear] : model.linear_layers()) EXPECT_FALSE(linear->lora()) << name;

  LoraConfig bad_rank;
  bad_rank.rank = 0;
  EXPECT_EQ(attach_lora(model, bad_rank, 1).code(), Code::invalid_argument);
}

TEST(LoraTest, ConfigsWithUnsupportedFeaturesAreRefusedByKey) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"peft_type": "IA3"})", "peft_type"},
      {R"({"use_dora": true})", "use_dora"},
      {R"({"rank_pattern": {"q_proj": 8}})", "rank_pattern"},
      {R"({"layers_to_transform": [0]})", "layers_to_transform"},
      {R"({"modules_to_save": ["lm_head"]})", "modules_to_save"},
      {R"({"bias": "all"})", "bias"},
      {R"({"r": 0})", "\"r\""},
      {R"({"lora_dropout": 1.5})", "lora_dropout"},
      {R"({"target_modules": "([unclosed"})", "target_modules"},
      {R"({"target_modules": 3})", "target_modules"},
  };
  for (const auto& [text, key] : cases) {
    auto config = parse_lora_config(text, "adapter_config.json");
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), Code::invalid_argument) << text;
    EXPECT_NE(config.status().message().find(key), std::string::npos) << text << " -> " << config.status().to_string();
  }
  // The fixture's full PEFT 0.21 config, with every field it writes, is accepted.
  auto text = detail::read_file(kTinyLlamaLora + "/adapter_config.json");
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(parse_lora_config(*text, "fixture").ok());
}

TEST(LoraTest, AdapterFilesThatDoNotFitAreRefused) {
  ScratchDir dir("lora-bad");
  fs::copy_file(kTinyLlamaLora + "/adapter_config.json", dir.file("adapter_config.json"));
  auto fixture = safetensors::Reader::open(kTinyLlamaLora + "/adapter_model.safetensors");
  ASSERT_TRUE(fixture.ok());
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : fixture->tensors()) tensors.emplace_back(info.name, *safetensors::read_tensor(*fixture, info));

  auto expect_refused = [&](const std::vector<std::pair<std::string, at::Tensor>>& t, const std::string& fragment) {
    CAIRN_MODEL_ASSERT_OK(safetensors::write_tensors(dir.file("adapter_model.safetensors"), t));
    LlamaModel model = base_model();
    auto loaded = load_lora(model, dir.path());
    ASSERT_FALSE(loaded.ok()) << fragment;
    EXPECT_EQ(loaded.status().code(), Code::invalid_argument);
    EXPECT_NE(loaded.status().message().find(fragment), std::string::npos) << loaded.status().to_string();
    for (auto& [name, linear] : model.linear_layers()) EXPECT_FALSE(linear->lora()) << "left attached: " << name;
  };
  auto missing = tensors;
  missing.pop_back();
  expect_refused(missing, "lora_B");
  auto misshapen = tensors;
  misshapen[0].second = at::zeros({5, 64});
  expect_refused(misshapen, "has shape [5, 64]");
  auto extra = tensors;
  extra.emplace_back("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", at::zeros({4, 64}));
  expect_refused(extra, "up_proj.lora_A.weight");
}

// A FrozenWeight standing in for a quantized base: it computes x W^T from a weight it owns.
class FakeFrozenWeight : public FrozenWeight {
 public:
  explicit FakeFrozenWeight(at::Tensor weight) : weight_(std::move(weight)) {}
  int64_t out_features() const override { return weight_.size(0); }
  int64_t in_features() const override { return weight_.size(1); }
  at::Tensor linear(const at::Tensor& x, const at::Tensor& bias) const override {
    ++calls;
    return bias.defined() ? at::linear(x, weight_.to(x.scalar_type()), bias) : at::linear(x, weight_.to(x.scalar_type()));
  }
  at::Tensor dense(at::ScalarType dtype) const override { return weight_.to(dtype); }
  mutable int calls = 0;

 private:
  at::Tensor weight_;
};

TEST(LoraTest, FrozenComputedBaseServesLoraButCannotMerge) {
  LlamaModel model = base_model();
  at::Tensor ids = reference_tensor(kLoraReference, "input_ids");
  ASSERT_TRUE(load_lora(model, kTinyLlamaLora).ok());
  at::Tensor dense_logits = logits_of(model, ids);

  std::vector<std::shared_ptr<FakeFrozenWeight>> frozen;
  for (auto& [name, linear] : model.linear_layers()) {
    if (name == "lm_head") continue;
    auto replacement = std::make_shared<FakeFrozenWeight>(linear->weight().clone());
    ASSERT_TRUE(linear->set_frozen_weight(replacement)) << name;
    EXPECT_FALSE(linear->weight().defined());
    frozen.push_back(replacement);
  }
  EXPECT_FALSE(model.linear_layers()[0].second->set_frozen_weight(
      std::make_shared<FakeFrozenWeight>(at::zeros({3, 3}))));  // wrong shape
  EXPECT_LT(max_abs_diff(logits_of(model, ids), dense_logits), 1e-5);
  EXPECT_GT(frozen[0]->calls, 0);

  // The computed weights are not parameters, but a checkpoint still holds them.
  for (const auto& [name, tensor] : model.named_parameters()) {
    EXPECT_TRUE(name.find("_proj.weight") == std::string::npos) << name;
  }
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto checkpoint, model.checkpoint_weights());
  EXPECT_EQ(checkpoint.size(), 21u);
  Status merge = merge_lora(model);
  EXPECT_EQ(merge.code(), Code::invalid_argument);
  EXPECT_NE(merge.message().find("q_proj"), std::string::npos) << merge.to_string();
}

}  // namespace
}  // namespace cairn
