#include "model/llama.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/detail/rope.h"
#include "model/generate.h"
#include "model/hf_checkpoint.h"
#include "model_testing.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing::kTinyLlama;
using testing::max_abs_diff;
using testing::reference_tensor;
using testing::ScratchDir;

const std::string kReference = kTinyLlama + "/reference.safetensors";

// A small config for random-weight tests.
LlamaConfig small_config(int64_t heads, int64_t kv_heads) {
  LlamaConfig c;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.2;  // large enough that attention is far from uniform
  return c;
}

at::Tensor forward_ok(const LlamaModel& model, const ForwardInput& input, KvCache* cache = nullptr) {
  auto logits = model.forward(input, cache);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  return logits.ok() ? *logits : at::Tensor();
}

at::Tensor ids_tensor(std::vector<int64_t> ids) { return at::tensor(ids, at::kLong).view({1, -1}); }

at::Tensor forward_ids(const LlamaModel& model, const at::Tensor& ids) {
  ForwardInput input;
  input.input_ids = ids;
  return forward_ok(model, input);
}

// ---- config.json ----

TEST(LlamaConfigTest, ReadsTheFixtureInTransformers5Layout) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaConfig c, read_llama_config(kTinyLlama));
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 160);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope.type, RopeType::standard);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_FALSE(c.pad_token_id.has_value());
}

TEST(LlamaConfigTest, BothRopeLayoutsMeanTheSame) {
  const std::string old_style = R"({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})";
  const std::string new_style = R"({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})";
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaConfig a, parse_llama_config(old_style, "old"));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaConfig b, parse_llama_config(new_style, "new"));
  for (const LlamaConfig* c : {&a, &b}) {
    EXPECT_EQ(c->rope.type, RopeType::llama3);
    EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
    EXPECT_DOUBLE_EQ(c->rope.factor, 8.0);
    EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, 4.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
    EXPECT_EQ(c->head_dim, 16);            // hidden / heads when absent
    EXPECT_EQ(c->num_key_value_heads, 4);  // heads when absent
  }
  // The older "type" key of rope_scaling.
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(
      LlamaConfig linear, parse_llama_config(R"({"rope_scaling": {"type": "linear", "factor": 2.0}})", "legacy"));
  EXPECT_EQ(linear.rope.type, RopeType::linear);
  EXPECT_DOUBLE_EQ(linear.rope.factor, 2.0);
}

TEST(LlamaConfigTest, ConfigJsonRoundTrips) {
  LlamaConfig c = small_config(4, 2);
  c.rope = {RopeType::llama3, 500000.0, 8.0, 1.0, 4.0, 8192};
  c.eos_token_ids = {2, 7};
  c.bos_token_id = 1;
  c.tie_word_embeddings = true;
  const std::string text = llama_config_to_json(c, "bfloat16");
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaConfig back, parse_llama_config(text, "written"));
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.num_key_value_heads, 2);
  EXPECT_EQ(back.head_dim, 8);
  EXPECT_EQ(back.rope.type, RopeType::llama3);
  EXPECT_DOUBLE_EQ(back.rope.low_freq_factor, 1.0);
  EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
  EXPECT_TRUE(back.tie_word_embeddings);
  EXPECT_EQ(back.checkpoint_dtype, "bfloat16");
  // Both layouts are written, for transformers 4 and 5.
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["rope_theta"], 500000.0);
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_parameters"]["rope_theta"], 500000.0);
}

TEST(LlamaConfigTest, BadValuesNameTheKey) {
  struct Case {
    std::string json;
    std::string fragment;
  };
  const Case cases[] = {
      {R"({"hidden_size": "64"})", "\"hidden_size\""},
      {R"({"hidden_size": -64})", "\"hidden_size\""},
      {R"({"num_attention_heads": 4, "num_key_value_heads": 3, "hidden_size": 64})", "\"num_key_value_heads\" is 3"},
      {R"({"hidden_size": 60, "num_attention_heads": 8})", "\"num_attention_heads\""},
      {R"({"head_dim": 7})", "\"head_dim\" is 7"},
      {R"({"model_type": "mistral"})", "\"model_type\""},
      {R"({"hidden_act": "gelu"})", "\"hidden_act\""},
      {R"({"rope_parameters": {"rope_type": "yarn", "factor": 4}})", "\"rope_parameters.rope_type\""},
      {R"({"rope_parameters": {"rope_type": "llama3", "factor": 8}})", "\"rope_parameters.low_freq_factor\" is missing"},
      {R"({"rope_theta": 0})", "\"rope_theta\""},
      {R"({"eos_token_id": [2, "x"]})", "\"eos_token_id\""},
      {R"({"vocab_size": 10, "eos_token_id": 12})", "\"eos_token_id\" is 12"},
      {R"({"tie_word_embeddings": 1})", "\"tie_word_embeddings\""},
      {R"({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}})", "partial_rotary_factor"},
      {R"([1, 2])", "not a JSON object"},
      {R"({"vocab_size": )", "not valid JSON"},
  };
  for (const auto& c : cases) {
    auto config = parse_llama_config(c.json, "cfg.json");
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), Code::invalid_argument) << c.json;
    EXPECT_NE(config.status().message().find(c.fragment), std::string::npos)
        << c.json << " -> " << config.status().to_string();
    EXPECT_EQ(config.status().message().rfind("cfg.json", 0), 0u) << config.status().to_string();
  }
}

// ---- rotary embeddings ----

TEST(RopeTest, InverseFrequenciesFollowTransformersFormulas) {
  LlamaConfig c;
  c.head_dim = 128;
  c.rope = {RopeType::llama3, 500000.0, 8.0, 1.0, 4.0, 8192};
  at::Tensor llama3 = detail::rope_inverse_frequencies(c);
  c.rope.type = RopeType::standard;
  at::Tensor standard = detail::rope_inverse_frequencies(c);
  c.rope.type = RopeType::linear;
  at::Tensor linear = detail::rope_inverse_frequencies(c);
  ASSERT_EQ(llama3.numel(), 64);
  int low = 0, medium = 0, high = 0;
  for (int i = 0; i < 64; ++i) {
    // _compute_llama3_parameters in double precision.
    const double inv = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    const double wavelen = 2 * M_PI / inv;
    double expected = inv;
    if (wavelen > 8192.0 / 1.0) {
      expected = inv / 8.0;
      ++low;
    } else if (wavelen >= 8192.0 / 4.0) {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * inv / 8.0 + smooth * inv;
      ++medium;
    } else {
      ++high;
    }
    EXPECT_NEAR(llama3[i].item<double>() / expected, 1.0, 1e-5) << "index " << i;
    EXPECT_NEAR(standard[i].item<double>() / inv, 1.0, 1e-5) << "index " << i;
    EXPECT_NEAR(linear[i].item<double>() / (inv / 8.0), 1.0, 1e-5) << "index " << i;
  }
  // Llama 3.1's settings exercise all three bands.
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
  EXPECT_GT(high, 0);
}

// ---- the reference checkpoint ----

class TinyLlamaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(1);
    auto model = load_llama(kTinyLlama);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    model_ = new LlamaModel(std::move(*model));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << "the fixture model did not load"; }
  static LlamaModel* model_;
};
LlamaModel* TinyLlamaTest::model_ = nullptr;

TEST_F(TinyLlamaTest, LogitsMatchTransformers) {
  at::Tensor input_ids = reference_tensor(kReference, "input_ids");
  at::Tensor expected = reference_tensor(kReference, "logits");
  at::Tensor logits = forward_ids(*model_, input_ids);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  EXPECT_LT(max_abs_diff(logits, expected), 1e-4);
}

TEST_F(TinyLlamaTest, GreedyContinuationMatchesTransformersTokenForToken) {
  at::Tensor prompt = reference_tensor(kReference, "prompt_ids");
  at::Tensor greedy = reference_tensor(kReference, "greedy_ids");
  std::vector<int64_t> prompt_ids(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  std::vector<int64_t> expected(greedy.data_ptr<int64_t>() + prompt.numel(), greedy.data_ptr<int64_t>() + greedy.numel());
  ASSERT_EQ(expected.size(), 24u);
  GenerateOptions options;
  options.max_new_tokens = 24;
  options.stop_at_eos = false;
  std::vector<int64_t> streamed;
  options.on_token = [&](int64_t token) {
    streamed.push_back(token);
    return true;
  };
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto output, generate(*model_, prompt_ids, options));
  EXPECT_EQ(output, expected);
  EXPECT_EQ(streamed, expected);
}

TEST_F(TinyLlamaTest, IncrementalDecodingWithTheCacheEqualsTheFullSequence) {
  at::Tensor ids = reference_tensor(kReference, "input_ids");
  at::Tensor full = forward_ids(*model_, ids);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(KvCache cache, model_->new_cache(2, 19));
  // Chunks of several sizes: a prefill, single steps, and a multi-token step after a cache.
  int64_t start = 0;
  for (int64_t chunk : {5, 1, 1, 4, 1, 7}) {
    ForwardInput input;
    input.input_ids = ids.narrow(1, start, chunk);
    at::Tensor logits = forward_ok(*model_, input, &cache);
    ASSERT_TRUE(logits.defined());
    EXPECT_LT(max_abs_diff(logits, full.narrow(1, start, chunk)), 1e-5) << "chunk at " << start;
    start += chunk;
    EXPECT_EQ(cache.length(), start);
  }
  // The cache is full: one more position does not fit, and the cache is left as it was.
  ForwardInput more;
  more.input_ids = ids.narrow(1, 0, 1);
  auto overflow = model_->forward(more, &cache);
  ASSERT_FALSE(overflow.ok());
  EXPECT_EQ(overflow.status().code(), Code::invalid_argument);
  EXPECT_EQ(cache.length(), 19);
  // Truncating rolls back: recomputing the last two positions gives the same logits.
  cache.truncate(17);
  ForwardInput tail;
  tail.input_ids = ids.narrow(1, 17, 2);
  tail.last_position_only = true;
  at::Tensor last = forward_ok(*model_, tail, &cache);
  EXPECT_LT(max_abs_diff(last, full.narrow(1, 18, 1)), 1e-5);
}

TEST_F(TinyLlamaTest, PackedDocumentsAttendOnlyWithinThemselves) {
  at::Tensor ids = reference_tensor(kReference, "input_ids");
  at::Tensor doc_a = ids[0].narrow(0, 0, 7);
  at::Tensor doc_b = ids[1].narrow(0, 0, 12);
  at::Tensor alone_a = forward_ids(*model_, doc_a.unsqueeze(0));
  at::Tensor alone_b = forward_ids(*model_, doc_b.unsqueeze(0));
  // One row: a, b, then 3 padding tokens; positions restart per document.
  ForwardInput packed;
  packed.input_ids = at::cat({doc_a, doc_b, at::zeros({3}, at::kLong)}).unsqueeze(0);
  packed.position_ids = at::cat({at::arange(7), at::arange(12), at::zeros({3}, at::kLong)}).unsqueeze(0);
  packed.attention_mask =
      at::cat({at::full({7}, 1, at::kLong), at::full({12}, 2, at::kLong), at::zeros({3}, at::kLong)}).unsqueeze(0);
  at::Tensor logits = forward_ok(*model_, packed);
  ASSERT_TRUE(logits.defined());
  EXPECT_LT(max_abs_diff(logits.narrow(1, 0, 7), alone_a), 1e-5);
  EXPECT_LT(max_abs_diff(logits.narrow(1, 7, 12), alone_b), 1e-5);
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  // Without the mask the second document sees the first: the test above can fail.
  ForwardInput unmasked = packed;
  unmasked.attention_mask = at::Tensor();
  EXPECT_GT(max_abs_diff(forward_ok(*model_, unmasked).narrow(1, 7, 12), alone_b), 1e-3);
}

TEST_F(TinyLlamaTest, LeftPaddedBatchMatchesUnpaddedRows) {
  at::Tensor ids = reference_tensor(kReference, "input_ids");
  at::Tensor short_row = ids[1].narrow(0, 0, 15);
  at::Tensor alone = forward_ids(*model_, short_row.unsqueeze(0));
  ForwardInput batch;
  batch.input_ids = at::stack({ids[0], at::cat({at::zeros({4}, at::kLong), short_row})});
  batch.attention_mask = at::stack({at::ones({19}, at::kLong), at::cat({at::zeros({4}, at::kLong), at::ones({15}, at::kLong)})});
  batch.position_ids = at::stack({at::arange(19), at::cat({at::zeros({4}, at::kLong), at::arange(15)})});
  at::Tensor logits = forward_ok(*model_, batch);
  ASSERT_TRUE(logits.defined());
  EXPECT_LT(max_abs_diff(logits[1].narrow(0, 4, 15), alone[0]), 1e-5);
  EXPECT_LT(max_abs_diff(logits[0], forward_ids(*model_, ids[0].unsqueeze(0))[0]), 1e-5);
}

TEST_F(TinyLlamaTest, BadInputsAreInvalidArguments) {
  auto expect_invalid = [&](const ForwardInput& input, const std::string& fragment, KvCache* cache = nullptr) {
    auto logits = model_->forward(input, cache);
    ASSERT_FALSE(logits.ok()) << fragment;
    EXPECT_EQ(logits.status().code(), Code::invalid_argument);
    EXPECT_NE(logits.status().message().find(fragment), std::string::npos) << logits.status().to_string();
  };
  ForwardInput input;
  input.input_ids = ids_tensor({1, 300});
  expect_invalid(input, "token id 300");
  input.input_ids = ids_tensor({-1, 3});
  expect_invalid(input, "token id -1");
  input.input_ids = at::ones({3}, at::kLong);
  expect_invalid(input, "2-D integer tensor");
  input.input_ids = at::ones({1, 3}, at::kFloat);
  expect_invalid(input, "2-D integer tensor");
  input.input_ids = at::ones({1, 3}, at::kLong);
  input.attention_mask = at::ones({1, 4}, at::kLong);
  expect_invalid(input, "attention_mask");
  input.attention_mask = at::Tensor();
  input.position_ids = at::zeros({1, 2}, at::kLong);
  expect_invalid(input, "position_ids");
  input.position_ids = at::Tensor();
  auto cache = model_->new_cache(2, 8);
  ASSERT_TRUE(cache.ok());
  expect_invalid(input, "batch 2", &*cache);
}

TEST_F(TinyLlamaTest, HalfPrecisionsRunCloseToFloat32) {
  at::Tensor input_ids = reference_tensor(kReference, "input_ids");
  at::Tensor expected = reference_tensor(kReference, "logits");
  for (Precision precision : {Precision::bfloat16, Precision::float16}) {
    if (precision == Precision::float16) {
      // libtorch before 2.x has no CPU fp16 matmul; fp16 is then a GPU-only precision.
      try {
        (void)at::matmul(at::ones({2, 2}, at::kHalf), at::ones({2, 2}, at::kHalf));
      } catch (const std::exception&) {
        continue;
      }
    }
    ModelOptions options;
    options.dtype = precision;
    CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, load_llama(kTinyLlama, options));
    EXPECT_EQ(model.dtype(), precision == Precision::bfloat16 ? at::kBFloat16 : at::kHalf);
    at::Tensor logits = forward_ids(model, input_ids);
    ASSERT_EQ(logits.scalar_type(), model.dtype());
    ASSERT_TRUE(at::isfinite(logits).all().item<bool>());
    // bf16 keeps 8 bits of mantissa: a loose bound that still catches a broken path.
    const double scale = expected.abs().max().item<double>();
    EXPECT_LT(max_abs_diff(logits, expected), 0.05 * scale) << precision_name(precision);
    const double agree = (logits.argmax(-1) == expected.argmax(-1)).to(at::kFloat).mean().item<double>();
    EXPECT_GT(agree, 0.9) << precision_name(precision);
    // The cache works in reduced precision too.
    GenerateOptions greedy;
    greedy.max_new_tokens = 8;
    greedy.stop_at_eos = false;
    auto out = generate(model, {1, 5, 9}, greedy);
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->size(), 8u);
  }
}

// ---- saving ----

TEST_F(TinyLlamaTest, SaveThenLoadGivesIdenticalLogits) {
  ScratchDir dir("llama-save");
  CAIRN_MODEL_ASSERT_OK(save_llama(*model_, dir.path()));
  EXPECT_TRUE(fs::exists(dir.file("model.safetensors")));
  EXPECT_TRUE(fs::exists(dir.file("config.json")));
  EXPECT_TRUE(fs::exists(dir.file("generation_config.json")));
  auto reader = safetensors::Reader::open(dir.file("model.safetensors"));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->metadata().at("format"), "pt");
  EXPECT_NE(reader->find("model.layers.1.mlp.down_proj.weight"), nullptr);
  EXPECT_NE(reader->find("lm_head.weight"), nullptr);
  EXPECT_EQ(reader->tensors().size(), 1u + 2u * 9u + 1u + 1u);

  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel again, load_llama(dir.path()));
  at::Tensor ids = reference_tensor(kReference, "input_ids");
  EXPECT_TRUE(at::equal(forward_ids(again, ids), forward_ids(*model_, ids)));
  EXPECT_EQ(again.config().eos_token_ids, std::vector<int64_t>{2});
}

TEST_F(TinyLlamaTest, ShardedSaveWritesAnIndexAndLoadsBack) {
  ScratchDir dir("llama-shards");
  CAIRN_MODEL_ASSERT_OK(save_llama(*model_, dir.path()));  // first a single file...
  SaveOptions options;
  options.max_shard_bytes = 60'000;  // the embeddings alone are 76,800 bytes
  CAIRN_MODEL_ASSERT_OK(save_llama(*model_, dir.path(), options));
  EXPECT_FALSE(fs::exists(dir.file("model.safetensors")));  // ...which the sharded save replaces
  std::ifstream in(dir.file("model.safetensors.index.json"));
  auto index = nlohmann::json::parse(in);
  std::set<std::string> files;
  for (auto& [name, file] : index["weight_map"].items()) files.insert(file.get<std::string>());
  EXPECT_GT(files.size(), 2u);
  EXPECT_EQ(files.count("model-00001-of-" + std::string(5 - std::to_string(files.size()).size(), '0') +
                        std::to_string(files.size()) + ".safetensors"),
            1u);
  EXPECT_EQ(index["weight_map"].size(), 21u);
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), 4 * (2 * 300 * 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 160 + 2 * 64) + 64));

  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel again, load_llama(dir.path()));
  at::Tensor ids = reference_tensor(kReference, "input_ids");
  EXPECT_TRUE(at::equal(forward_ids(again, ids), forward_ids(*model_, ids)));
}

TEST(HfCheckpointTest, ErrorsNameTheFileAndTheProblem) {
  ScratchDir dir("llama-bad");
  auto missing_dir = load_llama(dir.file("absent"));
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_EQ(missing_dir.status().code(), Code::not_found);

  auto no_config = load_llama(dir.path());
  ASSERT_FALSE(no_config.ok());
  EXPECT_EQ(no_config.status().code(), Code::not_found);
  EXPECT_NE(no_config.status().message().find("config.json"), std::string::npos);

  fs::copy_file(kTinyLlama + "/config.json", dir.file("config.json"));
  auto no_weights = load_llama(dir.path());
  ASSERT_FALSE(no_weights.ok());
  EXPECT_EQ(no_weights.status().code(), Code::not_found);
  EXPECT_NE(no_weights.status().message().find("model.safetensors"), std::string::npos);

  // Weights that do not fit the config: name the tensor.
  LlamaConfig other = small_config(4, 2);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel small, LlamaModel::random(other, {}, 1));
  auto weights = small.checkpoint_weights();
  ASSERT_TRUE(weights.ok());
  CAIRN_MODEL_ASSERT_OK(safetensors::write_tensors(dir.file("model.safetensors"), *weights));
  auto mismatch = load_llama(dir.path());
  ASSERT_FALSE(mismatch.ok());
  EXPECT_EQ(mismatch.status().code(), Code::invalid_argument);
  EXPECT_NE(mismatch.status().message().find("model.safetensors"), std::string::npos);
  EXPECT_NE(mismatch.status().message().find("model.embed_tokens.weight"), std::string::npos)
      << mismatch.status().to_string();

  // A truncated weights file is data loss.
  {
    std::ifstream src(kTinyLlama + "/model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
    std::ofstream(dir.file("model.safetensors"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  auto truncated = load_llama(dir.path());
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), Code::data_loss) << truncated.status().to_string();

  // An index that points outside the directory.
  fs::remove(dir.file("model.safetensors"));
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})";
  auto escape = load_llama(dir.path());
  ASSERT_FALSE(escape.ok());
  EXPECT_EQ(escape.status().code(), Code::data_loss);
  EXPECT_NE(escape.status().message().find("model.safetensors.index.json"), std::string::npos);

  // A bad config value names config.json and the key.
  std::ofstream(dir.file("config.json")) << R"({"num_attention_heads": 0})";
  auto bad_config = load_llama(dir.path());
  ASSERT_FALSE(bad_config.ok());
  EXPECT_NE(bad_config.status().message().find("config.json"), std::string::npos);
  EXPECT_NE(bad_config.status().message().find("num_attention_heads"), std::string::npos);
}

// ---- architecture variants with random weights ----

TEST(LlamaArchitectureTest, GroupedQueryAttentionEqualsRepeatedKeyValueHeads) {
  for (int64_t kv_heads : {1, 2}) {
    LlamaConfig gqa = small_config(4, kv_heads);
    CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, LlamaModel::random(gqa, {}, 7));
    // The multi-head reference: each query head h gets kv head h / (heads / kv_heads).
    CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto gqa_weights, model.checkpoint_weights());
    std::map<std::string, at::Tensor> weights;
    for (auto& [name, tensor] : gqa_weights) {
      const bool kv = name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
      weights[name] = kv ? tensor.view({kv_heads, 1, 8, 32}).expand({kv_heads, 4 / kv_heads, 8, 32}).reshape({32, 32})
                         : tensor;
    }
    LlamaConfig mha = gqa;
    mha.num_key_value_heads = 4;
    CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel reference, LlamaModel::from_weights(mha, weights, {}));
    at::Tensor ids = at::randint(0, 50, {2, 11}, at::kLong);
    at::Tensor logits = forward_ids(model, ids);
    EXPECT_LT(max_abs_diff(logits, forward_ids(reference, ids)), 1e-5) << "kv_heads " << kv_heads;

    // And through the cache, one token at a time.
    CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(KvCache cache, model.new_cache(2, 11));
    for (int64_t t = 0; t < 11; ++t) {
      ForwardInput step;
      step.input_ids = ids.narrow(1, t, 1);
      EXPECT_LT(max_abs_diff(forward_ok(model, step, &cache), logits.narrow(1, t, 1)), 1e-5) << t;
    }
  }
}

TEST(LlamaArchitectureTest, TiedEmbeddingsShareTheMatrixAndSaveWithoutLmHead) {
  LlamaConfig config = small_config(4, 2);
  config.tie_word_embeddings = true;
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, LlamaModel::random(config, {}, 3));
  for (const auto& [name, tensor] : model.named_parameters()) EXPECT_NE(name, "lm_head.weight");
  // Changing the embedding changes the head: they are one tensor.
  at::Tensor ids = at::randint(0, 50, {1, 6}, at::kLong);
  at::Tensor before = forward_ids(model, ids);
  {
    at::NoGradGuard no_grad;
    model.named_parameters()[0].second[0].add_(1.0);  // token 0's embedding row
  }
  at::Tensor after = forward_ids(model, ids);
  EXPECT_GT(max_abs_diff(before.select(2, 0), after.select(2, 0)), 1e-3);

  ScratchDir dir("llama-tied");
  CAIRN_MODEL_ASSERT_OK(save_llama(model, dir.path()));
  auto reader = safetensors::Reader::open(dir.file("model.safetensors"));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->find("lm_head.weight"), nullptr);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel again, load_llama(dir.path()));
  EXPECT_TRUE(again.config().tie_word_embeddings);
  EXPECT_TRUE(at::equal(forward_ids(again, ids), after));
}

TEST(LlamaArchitectureTest, BiasesAndRopeScalingRoundTrip) {
  LlamaConfig config = small_config(4, 1);
  config.attention_bias = true;
  config.mlp_bias = true;
  config.rope = {RopeType::llama3, 500000.0, 8.0, 1.0, 4.0, 16};
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, LlamaModel::random(config, {}, 5));
  bool has_bias = false;
  for (const auto& [name, tensor] : model.named_parameters()) has_bias |= name == "model.layers.1.mlp.up_proj.bias";
  EXPECT_TRUE(has_bias);
  {
    at::NoGradGuard no_grad;  // random init zeroes biases: make them matter
    for (auto& [name, tensor] : model.named_parameters()) {
      if (name.find(".bias") != std::string::npos) tensor.normal_(0, 0.5);
    }
  }
  ScratchDir dir("llama-bias");
  CAIRN_MODEL_ASSERT_OK(save_llama(model, dir.path()));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel again, load_llama(dir.path()));
  EXPECT_EQ(again.config().rope.type, RopeType::llama3);
  at::Tensor ids = at::randint(0, 50, {1, 40}, at::kLong);  // past original_max_position_embeddings
  EXPECT_TRUE(at::equal(forward_ids(again, ids), forward_ids(model, ids)));
  // The scaling changes the result (positions reach the scaled band).
  LlamaConfig plain = config;
  plain.rope.type = RopeType::standard;
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto checkpoint, model.checkpoint_weights());
  std::map<std::string, at::Tensor> weights(checkpoint.begin(), checkpoint.end());
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel unscaled, LlamaModel::from_weights(plain, weights, {}));
  EXPECT_GT(max_abs_diff(forward_ids(unscaled, ids), forward_ids(model, ids)), 1e-4);
}

TEST(LlamaArchitectureTest, FromWeightsRejectsMissingMisshapenAndUnexpectedTensors) {
  LlamaConfig config = small_config(4, 2);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, LlamaModel::random(config, {}, 1));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto checkpoint, model.checkpoint_weights());
  std::map<std::string, at::Tensor> weights(checkpoint.begin(), checkpoint.end());
  weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({4});  // ignored, as transformers does
  EXPECT_TRUE(LlamaModel::from_weights(config, weights, {}).ok());

  auto expect_error = [&](const std::map<std::string, at::Tensor>& w, const std::string& fragment) {
    auto result = LlamaModel::from_weights(config, w, {});
    ASSERT_FALSE(result.ok()) << fragment;
    EXPECT_EQ(result.status().code(), Code::invalid_argument);
    EXPECT_NE(result.status().message().find(fragment), std::string::npos) << result.status().to_string();
  };
  auto missing = weights;
  missing.erase("model.layers.1.mlp.gate_proj.weight");
  expect_error(missing, "\"model.layers.1.mlp.gate_proj.weight\" is missing");
  auto misshapen = weights;
  misshapen["model.norm.weight"] = at::ones({31});
  expect_error(misshapen, "\"model.norm.weight\" has shape [31]");
  auto extra = weights;
  extra["model.layers.2.self_attn.q_proj.weight"] = at::ones({32, 32});
  expect_error(extra, "\"model.layers.2.self_attn.q_proj.weight\" is not part");

  ModelOptions bad_device;
  bad_device.device = "tpu:7";
  auto device = LlamaModel::from_weights(config, weights, bad_device);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), Code::invalid_argument);
}

TEST(LlamaArchitectureTest, FullFineTuningGradientsReachEveryParameter) {
  LlamaConfig config = small_config(4, 2);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel model, LlamaModel::random(config, {}, 11));
  EXPECT_TRUE(model.trainable_parameters().empty());  // frozen until asked
  model.set_base_trainable(true);
  model.set_training(true);
  const auto params = model.trainable_parameters();
  EXPECT_EQ(params.size(), model.named_parameters().size());
  ForwardInput input;
  input.input_ids = at::randint(0, 50, {2, 9}, at::kLong);
  // Two packed documents per row: gradients flow through the masked attention too.
  input.attention_mask = at::cat({at::ones({2, 4}, at::kLong), at::full({2, 5}, 2, at::kLong)}, 1);
  at::Tensor logits = forward_ok(model, input);
  ASSERT_TRUE(logits.defined());
  at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, 50}), at::randint(0, 50, {18}, at::kLong));
  loss.backward();
  for (const auto& [name, tensor] : model.named_parameters()) {
    ASSERT_TRUE(tensor.grad().defined()) << name;
    EXPECT_GT(tensor.grad().abs().sum().item<double>(), 0.0) << name;
  }
}

}  // namespace
}  // namespace cairn
