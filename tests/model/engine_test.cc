// The inference engine: batched output against generate() (greedy and seeded), chunked prefill,
// preemption under a tiny KV budget, prefix caching, stop strings, logprobs, cancellation,
// multi-LoRA, request validation.
#include "model/engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "model/detail/decode_attention.h"
#include "model/generate.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"
#include "model/lora.h"
#include "tests/model/model_testing.h"

namespace cairn {
namespace {

using testing::kTinyLlama;
using testing::kTinyLlamaLora;
using testing::reference_tensor;

// Everything a request heard.
struct Outcome {
  std::vector<int64_t> tokens;
  std::string text;
  std::vector<TokenEvent> events;
  TokenEvent final_event;
  int finals = 0;
};

// Submits every request, steps the engine until it is idle, and returns what each heard.
std::vector<Outcome> run_all(InferenceEngine& engine, std::vector<EngineRequest> requests) {
  std::vector<Outcome> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].on_event = [&out, i](const TokenEvent& event) {
      Outcome& o = out[i];
      o.text += event.text;
      if (event.final) {
        o.final_event = event;
        o.finals += 1;
      } else {
        o.tokens.push_back(event.token_id);
        o.events.push_back(event);
      }
    };
    auto id = engine.submit(std::move(requests[i]));
    EXPECT_TRUE(id.ok()) << id.status().to_string();
  }
  for (int steps = 0; engine.step(); ++steps) {
    if (steps > 100000) {
      ADD_FAILURE() << "the engine never went idle";
      break;
    }
  }
  for (const Outcome& o : out) EXPECT_EQ(o.finals, 1);
  return out;
}

std::vector<int64_t> generate_single(const LlamaModel& model, const EngineRequest& request) {
  GenerateOptions options;
  options.max_new_tokens = request.max_tokens;
  options.sampling = request.sampling;
  options.stop_at_eos = !request.ignore_eos;
  auto out = generate(model, request.prompt_ids, options);
  EXPECT_TRUE(out.ok()) << out.status().to_string();
  return out.ok() ? *out : std::vector<int64_t>{};
}

std::vector<int64_t> random_ids(std::mt19937_64& rng, int64_t length, int64_t vocab) {
  std::vector<int64_t> out(static_cast<size_t>(length));
  for (auto& id : out) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return out;
}

LlamaConfig random_config() {
  LlamaConfig c;
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.1;
  c.eos_token_ids = {};
  return c;
}

std::unique_ptr<LlamaModel> random_model(uint64_t seed = 7) {
  auto model = LlamaModel::random(random_config(), {}, seed);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::make_unique<LlamaModel>(std::move(*model));
}

std::unique_ptr<InferenceEngine> random_engine(const EngineOptions& options, uint64_t seed = 7) {
  auto engine = InferenceEngine::create(random_model(seed), std::nullopt, options);
  EXPECT_TRUE(engine.ok()) << engine.status().to_string();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Requests of different prompt lengths and budgets.
std::vector<EngineRequest> mixed_requests(int count, uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<EngineRequest> out;
  for (int i = 0; i < count; ++i) {
    EngineRequest r;
    r.prompt_ids = random_ids(rng, 1 + static_cast<int64_t>(rng() % 60), vocab);
    r.max_tokens = 1 + static_cast<int64_t>(rng() % 24);
    r.ignore_eos = true;
    out.push_back(std::move(r));
  }
  return out;
}

// Runs `requests` through the engine and each alone through generate() on `reference`, and
// expects the same tokens.
void expect_same_as_generate(InferenceEngine& engine, const LlamaModel& reference,
                             const std::vector<EngineRequest>& requests) {
  std::vector<Outcome> outcomes = run_all(engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(outcomes[i].tokens, generate_single(reference, requests[i])) << "request " << i;
    EXPECT_EQ(outcomes[i].final_event.completion_tokens, static_cast<int64_t>(outcomes[i].tokens.size()));
    EXPECT_EQ(outcomes[i].final_event.prompt_tokens, static_cast<int64_t>(requests[i].prompt_ids.size()));
  }
}

// The decode kernel against plain ATen attention, reading a paged pool through a slot table, and
// the same bits when it reads the same keys and values from a contiguous KvCache layout (what
// makes engine and generate() decoding agree). head_dim 12 takes the plain C++ path, 24 and 64
// the AVX2 one where the CPU has it (with and without a half-width tail).
TEST(DecodeAttentionTest, MatchesATenAndIsTheSameOnBothCacheLayouts) {
  const int64_t heads = 4, kv_heads = 2, group = heads / kv_heads, total = 7, capacity = 9, pool_slots = 16;
  for (int64_t dim : {12, 24, 64}) {
    at::manual_seed(dim);
    at::Tensor q = at::randn({heads, dim});
    at::Tensor keys = at::randn({total, kv_heads, dim});
    at::Tensor values = at::randn({total, kv_heads, dim});
    const std::vector<int64_t> slots = {9, 3, 14, 0, 5, 11, 7};
    at::Tensor slot_index = at::tensor(slots, at::kLong);
    at::Tensor pool_k = at::zeros({pool_slots, kv_heads, dim}), pool_v = at::zeros({pool_slots, kv_heads, dim});
    pool_k.index_copy_(0, slot_index, keys);
    pool_v.index_copy_(0, slot_index, values);
    at::Tensor cache_k = at::zeros({kv_heads, capacity, dim}), cache_v = at::zeros({kv_heads, capacity, dim});
    cache_k.narrow(1, 0, total).copy_(keys.transpose(0, 1));
    cache_v.narrow(1, 0, total).copy_(values.transpose(0, 1));
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));

    at::Tensor paged_out = at::empty({heads, dim}), cached_out = at::empty({heads, dim});
    detail::DecodeAttentionShape shape{heads, kv_heads, dim, kv_heads * dim, dim, scale};
    detail::DecodeAttentionSequence paged;
    paged.query = q.data_ptr<float>();
    paged.out = paged_out.data_ptr<float>();
    paged.keys = pool_k.data_ptr<float>();
    paged.values = pool_v.data_ptr<float>();
    paged.slots = slots.data();
    paged.total = total;
    detail::decode_attention(shape, {paged});
    detail::DecodeAttentionShape cache_shape{heads, kv_heads, dim, dim, capacity * dim, scale};
    detail::DecodeAttentionSequence cached;
    cached.query = q.data_ptr<float>();
    cached.out = cached_out.data_ptr<float>();
    cached.keys = cache_k.data_ptr<float>();
    cached.values = cache_v.data_ptr<float>();
    cached.total = total;
    detail::decode_attention(cache_shape, {cached, cached});  // two tasks writing the same bits

    EXPECT_TRUE(at::equal(paged_out, cached_out)) << "head_dim " << dim;
    for (int64_t h = 0; h < heads; ++h) {
      at::Tensor k = keys.select(1, h / group), v = values.select(1, h / group);  // [total, dim]
      at::Tensor probs = at::softmax(at::mv(k, q[h]) * scale, 0);
      EXPECT_TRUE(at::allclose(paged_out[h], at::mv(v.t(), probs), 1e-5, 1e-5)) << "head_dim " << dim << " head " << h;
    }
  }
}

TEST(EngineOptionsTest, Validates) {
  EngineOptions options;
  EXPECT_TRUE(options.validate().ok());
  options.max_step_tokens = 0;
  EXPECT_EQ(options.validate().code(), Code::invalid_argument);
  options = {};
  options.block_size = 0;
  EXPECT_EQ(options.validate().code(), Code::invalid_argument);
}

// ---- the reference checkpoint ----

TEST(EngineTest, FixtureGreedyMatchesTransformersAndGenerate) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto engine, InferenceEngine::load(kTinyLlama, {}, {}));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel reference, load_llama(kTinyLlama));
  const std::string file = kTinyLlama + "/reference.safetensors";
  at::Tensor prompt = reference_tensor(file, "prompt_ids");
  at::Tensor greedy = reference_tensor(file, "greedy_ids");
  std::vector<int64_t> prompt_ids(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  std::vector<int64_t> expected(greedy.data_ptr<int64_t>() + prompt.numel(), greedy.data_ptr<int64_t>() + greedy.numel());

  // The reference request among 16 others of different lengths, all at once.
  std::vector<EngineRequest> requests = mixed_requests(16, 11, engine->config().vocab_size);
  EngineRequest first;
  first.prompt_ids = prompt_ids;
  first.max_tokens = static_cast<int64_t>(expected.size());
  first.ignore_eos = true;
  requests.insert(requests.begin(), first);
  std::vector<Outcome> outcomes = run_all(*engine, requests);
  EXPECT_EQ(outcomes[0].tokens, expected);
  EXPECT_EQ(outcomes[0].final_event.finish_reason, "length");
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(outcomes[i].tokens, generate_single(reference, requests[i])) << "request " << i;
  }
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->stats().running, 0);
  EXPECT_EQ(engine->stats().waiting, 0);
}

TEST(EngineTest, StopsAtEosUnlessIgnored) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto engine, InferenceEngine::load(kTinyLlama, {}, {}));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel reference, load_llama(kTinyLlama));
  std::vector<EngineRequest> requests = mixed_requests(16, 5, engine->config().vocab_size);
  for (auto& r : requests) {
    r.ignore_eos = false;
    r.max_tokens = 64;
  }
  std::vector<Outcome> outcomes = run_all(*engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(outcomes[i].tokens, generate_single(reference, requests[i])) << "request " << i;
    const bool eos = !outcomes[i].tokens.empty() && outcomes[i].tokens.back() == 2;
    EXPECT_EQ(outcomes[i].final_event.finish_reason, eos ? "stop" : "length");
  }
}

// ---- a random model ----

TEST(EngineTest, BatchedGreedyEqualsSingleRequestGreedy) {
  auto engine = random_engine({});
  auto reference = random_model();
  expect_same_as_generate(*engine, *reference, mixed_requests(24, 1, 256));
}

TEST(EngineTest, ChunkedPrefillGivesTheSameOutputs) {
  EngineOptions options;
  options.max_step_tokens = 7;
  options.block_size = 4;
  auto engine = random_engine(options);
  auto reference = random_model();
  expect_same_as_generate(*engine, *reference, mixed_requests(16, 2, 256));
}

TEST(EngineTest, PreemptionUnderATinyBudgetGivesTheSameOutputs) {
  EngineOptions options;
  options.block_size = 4;
  // 2 (k, v) * 2 layers * 2 kv heads * 16 head_dim * 4 tokens * 4 bytes = 2 KiB a block: 24 blocks,
  // far fewer than 16 requests of up to 84 positions need at once.
  options.kv_cache_bytes = 24 * 2048;
  auto engine = random_engine(options);
  auto reference = random_model();
  expect_same_as_generate(*engine, *reference, mixed_requests(16, 3, 256));
  EngineStats stats = engine->stats();
  EXPECT_EQ(stats.kv_blocks_total, 24);
  EXPECT_GT(stats.preempted_total, 0u);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST(EngineTest, PrefixCacheHitsOnASharedPromptWithTheSameOutputs) {
  EngineOptions options;
  options.block_size = 8;
  auto engine = random_engine(options);
  auto reference = random_model();
  std::mt19937_64 rng(4);
  const std::vector<int64_t> shared = random_ids(rng, 40, 256);
  auto request = [&](int64_t suffix) {
    EngineRequest r;
    r.prompt_ids = shared;
    std::vector<int64_t> tail = random_ids(rng, suffix, 256);
    r.prompt_ids.insert(r.prompt_ids.end(), tail.begin(), tail.end());
    r.max_tokens = 12;
    return r;
  };
  // The first request fills the cache; the next ones start with its 5 full blocks of 8.
  expect_same_as_generate(*engine, *reference, {request(3)});
  EXPECT_EQ(engine->stats().prefix_cache_hit_tokens, 0u);
  EXPECT_GT(engine->stats().kv_blocks_cached, 0);
  std::vector<EngineRequest> next;
  for (int64_t suffix : {1, 5, 9, 17}) next.push_back(request(suffix));
  std::vector<Outcome> outcomes = run_all(*engine, next);
  for (size_t i = 0; i < next.size(); ++i) {
    EXPECT_EQ(outcomes[i].tokens, generate_single(*reference, next[i])) << "request " << i;
    EXPECT_EQ(outcomes[i].final_event.cached_prompt_tokens, 40) << "request " << i;
  }
  EXPECT_EQ(engine->stats().prefix_cache_hit_tokens, 4u * 40u);
  // The same prompt again: all its full blocks but the one holding its last token.
  EngineRequest again = next[3];
  std::vector<Outcome> repeat = run_all(*engine, {again});
  EXPECT_EQ(repeat[0].tokens, outcomes[3].tokens);
  EXPECT_EQ(repeat[0].final_event.cached_prompt_tokens, 56);
}

TEST(EngineTest, SeededSamplingIsReproducibleAndEqualsGenerate) {
  auto engine = random_engine({});
  auto reference = random_model();
  std::vector<EngineRequest> requests = mixed_requests(12, 6, 256);
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].sampling.temperature = 0.7 + 0.1 * static_cast<double>(i % 3);
    requests[i].sampling.top_k = i % 2 == 0 ? 40 : 0;
    requests[i].sampling.top_p = i % 3 == 0 ? 0.9 : 1.0;
    requests[i].sampling.seed = 1000 + i;
    requests[i].max_tokens = 16;
  }
  std::vector<Outcome> first = run_all(*engine, requests);
  std::vector<Outcome> second = run_all(*engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(first[i].tokens, second[i].tokens) << "request " << i;
    EXPECT_EQ(first[i].tokens, generate_single(*reference, requests[i])) << "request " << i;
  }
}

TEST(EngineTest, PenaltiesAndMinPChangeWhatIsSampled) {
  auto engine = random_engine({});
  std::mt19937_64 rng(8);
  EngineRequest plain;
  plain.prompt_ids = random_ids(rng, 8, 256);
  plain.max_tokens = 24;
  EngineRequest penalized = plain;
  penalized.sampling.frequency_penalty = 2.0;
  penalized.sampling.presence_penalty = 2.0;
  penalized.sampling.repetition_penalty = 5.0;
  std::vector<Outcome> out = run_all(*engine, {plain, penalized});
  std::map<int64_t, int> counts;
  for (int64_t t : out[1].tokens) counts[t] += 1;
  int repeats = 0;
  for (auto& [t, n] : counts) repeats += n - 1;
  std::map<int64_t, int> plain_counts;
  for (int64_t t : out[0].tokens) plain_counts[t] += 1;
  int plain_repeats = 0;
  for (auto& [t, n] : plain_counts) plain_repeats += n - 1;
  EXPECT_LE(repeats, plain_repeats);
  EXPECT_NE(out[0].tokens, out[1].tokens);

  // min_p 1 keeps only the most likely token: sampling becomes greedy.
  EngineRequest sampled = plain;
  sampled.sampling.temperature = 1.5;
  sampled.sampling.min_p = 1.0;
  std::vector<Outcome> greedy_like = run_all(*engine, {sampled});
  EXPECT_EQ(greedy_like[0].tokens, out[0].tokens);
}

TEST(EngineTest, LogprobsAreTheLogSoftmaxOfTheRawLogits) {
  auto engine = random_engine({});
  std::mt19937_64 rng(9);
  EngineRequest r;
  r.prompt_ids = random_ids(rng, 10, 256);
  r.max_tokens = 8;
  r.logprobs = 5;
  EngineRequest none = r;
  none.logprobs = 0;
  std::vector<Outcome> out = run_all(*engine, {r, none});
  ASSERT_EQ(out[0].events.size(), 8u);
  for (const TokenEvent& e : out[0].events) {
    ASSERT_EQ(e.top_logprobs.size(), 5u);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(e.top_logprobs[0].token_id, e.token_id);
    EXPECT_DOUBLE_EQ(e.top_logprobs[0].logprob, e.logprob);
    double mass = 0;
    for (size_t k = 0; k < e.top_logprobs.size(); ++k) {
      EXPECT_LE(e.top_logprobs[k].logprob, 0.0);
      if (k > 0) EXPECT_LE(e.top_logprobs[k].logprob, e.top_logprobs[k - 1].logprob);
      mass += std::exp(e.top_logprobs[k].logprob);
    }
    EXPECT_GT(mass, 0.0);
    EXPECT_LE(mass, 1.0 + 1e-6);
  }
  for (const TokenEvent& e : out[1].events) {
    EXPECT_TRUE(std::isnan(e.logprob));
    EXPECT_TRUE(e.top_logprobs.empty());
  }
  EXPECT_EQ(out[0].tokens, out[1].tokens);
}

TEST(EngineTest, StopStringsEndTheTextBeforeThemEvenAcrossTokens) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto engine, InferenceEngine::load(kTinyLlama, {}, {}));
  ASSERT_NE(engine->tokenizer(), nullptr);
  const Tokenizer& tokenizer = *engine->tokenizer();
  std::vector<int32_t> encoded = tokenizer.encode("Hello world, this is a test");
  EngineRequest base;
  base.prompt_ids.assign(encoded.begin(), encoded.end());
  base.max_tokens = 40;
  base.ignore_eos = true;
  std::vector<Outcome> plain = run_all(*engine, {base});
  const std::string full = plain[0].text;
  std::vector<int32_t> out_ids(plain[0].tokens.begin(), plain[0].tokens.end());
  ASSERT_EQ(full, tokenizer.decode(out_ids));
  // A stop string made of the last character of one token's text and the first of the next
  // one's, whose first occurrence in the text is at that boundary.
  std::string stop;
  size_t cut = 0;
  size_t offset = 0;  // bytes of the text before token i
  for (size_t i = 0; i + 1 < out_ids.size() && stop.empty(); ++i) {
    const std::string a = tokenizer.decode({out_ids[i]}), b = tokenizer.decode({out_ids[i + 1]});
    offset += a.size();
    if (i < 3 || a.empty() || b.empty()) continue;
    if (static_cast<unsigned char>(a.back()) >= 0x80 || static_cast<unsigned char>(b.front()) >= 0x80) continue;
    const std::string candidate = std::string(1, a.back()) + b.front();
    if (full.find(candidate) == offset - 1) {
      stop = candidate;
      cut = offset - 1;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no token boundary to put a stop string across in: " << full;
  EngineRequest stopped = base;
  stopped.stop = {"never-appears-in-this-text", stop};
  std::vector<Outcome> out = run_all(*engine, {stopped});
  EXPECT_EQ(out[0].text, full.substr(0, cut));
  EXPECT_EQ(out[0].text.find(stop), std::string::npos);
  EXPECT_EQ(out[0].final_event.finish_reason, "stop");
  EXPECT_LT(out[0].tokens.size(), plain[0].tokens.size());
  for (const TokenEvent& e : out[0].events) EXPECT_EQ(e.text.find(stop), std::string::npos);
}

TEST(EngineTest, StopTokenIdsStopWithoutText) {
  auto engine = random_engine({});
  std::mt19937_64 rng(10);
  EngineRequest r;
  r.prompt_ids = random_ids(rng, 6, 256);
  r.max_tokens = 16;
  std::vector<Outcome> plain = run_all(*engine, {r});
  ASSERT_GE(plain[0].tokens.size(), 4u);
  EngineRequest stopped = r;
  stopped.stop_token_ids = {plain[0].tokens[3]};
  std::vector<Outcome> out = run_all(*engine, {stopped});
  const auto first = std::find(plain[0].tokens.begin(), plain[0].tokens.end(), plain[0].tokens[3]);
  EXPECT_EQ(out[0].tokens, std::vector<int64_t>(plain[0].tokens.begin(), first + 1));
  EXPECT_EQ(out[0].final_event.finish_reason, "stop");
}

TEST(EngineTest, CancelEndsTheRequestAndFreesItsBlocks) {
  auto engine = random_engine({});
  std::mt19937_64 rng(12);
  EngineRequest r;
  r.prompt_ids = random_ids(rng, 30, 256);
  r.max_tokens = 400;
  std::vector<TokenEvent> finals;
  int tokens = 0;
  r.on_event = [&](const TokenEvent& e) {
    if (e.final) finals.push_back(e);
    else ++tokens;
  };
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(uint64_t id, engine->submit(std::move(r)));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(engine->step());
  EXPECT_EQ(tokens, 5);
  EXPECT_GT(engine->stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->stats().running, 1);
  engine->cancel(id);
  EXPECT_FALSE(engine->step());
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0].finish_reason, "cancelled");
  EXPECT_EQ(finals[0].completion_tokens, 5);
  EngineStats stats = engine->stats();
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.generation_tokens_total, 5u);
}

TEST(EngineTest, DeadlineAndAbortEndRequestsWithErrors) {
  auto engine = random_engine({});
  EngineRequest r;
  r.prompt_ids = {1, 2, 3};
  r.max_tokens = 100;
  r.deadline = std::chrono::steady_clock::now();
  std::vector<Outcome> out = run_all(*engine, {r});
  EXPECT_EQ(out[0].final_event.finish_reason, "error");
  EXPECT_EQ(out[0].final_event.status.code(), Code::timeout);

  EngineRequest slow = r;
  slow.deadline.reset();
  std::vector<TokenEvent> finals;
  slow.on_event = [&](const TokenEvent& e) {
    if (e.final) finals.push_back(e);
  };
  ASSERT_TRUE(engine->submit(std::move(slow)).ok());
  ASSERT_TRUE(engine->step());
  engine->abort_all(error(Code::shutting_down, "model unloaded"));
  EXPECT_FALSE(engine->step());
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0].status.code(), Code::shutting_down);
}

TEST(EngineTest, SubmitRejectsBadRequestsNamingTheNumbers) {
  EngineOptions options;
  options.block_size = 4;
  options.kv_cache_bytes = 8 * 2048;  // 8 blocks of 4: 32 positions
  auto engine = random_engine(options);
  EngineRequest r;
  EXPECT_EQ(engine->submit(r).status().code(), Code::invalid_argument);  // empty prompt
  r.prompt_ids = {1, 256};
  auto bad_id = engine->submit(r);
  EXPECT_EQ(bad_id.status().code(), Code::invalid_argument);
  EXPECT_NE(bad_id.status().message().find("256"), std::string::npos);
  r.prompt_ids = std::vector<int64_t>(500, 3);
  r.max_tokens = 20;
  auto too_long = engine->submit(r);
  EXPECT_EQ(too_long.status().code(), Code::invalid_argument);
  EXPECT_NE(too_long.status().message().find("500"), std::string::npos) << too_long.status().message();
  EXPECT_NE(too_long.status().message().find("512"), std::string::npos) << too_long.status().message();
  r.prompt_ids = std::vector<int64_t>(30, 3);
  r.max_tokens = 10;
  auto no_room = engine->submit(r);
  EXPECT_EQ(no_room.status().code(), Code::invalid_argument);
  EXPECT_NE(no_room.status().message().find("KV blocks"), std::string::npos) << no_room.status().message();
  r.prompt_ids = {1};
  r.max_tokens = 0;
  EXPECT_EQ(engine->submit(r).status().code(), Code::invalid_argument);
  r.max_tokens = 1;
  r.adapter = "nope";
  EXPECT_EQ(engine->submit(r).status().code(), Code::not_found);
  r.adapter.clear();
  r.stop = {"x"};
  EXPECT_EQ(engine->submit(r).status().code(), Code::invalid_argument);  // no tokenizer
  EXPECT_EQ(engine->stats().waiting, 0);
}

// ---- multi-LoRA ----

TEST(EngineTest, OneBatchMixesAdaptersAndEachMatchesGenerateWithThatAdapter) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto engine, InferenceEngine::load(kTinyLlama, {}, {}));
  CAIRN_MODEL_ASSERT_OK(engine->load_adapter("tiny", kTinyLlamaLora));
  EXPECT_EQ(engine->load_adapter("tiny", kTinyLlamaLora).code(), Code::already_exists);
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel base, load_llama(kTinyLlama));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(LlamaModel adapted, load_llama(kTinyLlama));
  ASSERT_TRUE(load_lora(adapted, kTinyLlamaLora).ok());
  std::vector<EngineRequest> requests = mixed_requests(16, 13, engine->config().vocab_size);
  for (size_t i = 0; i < requests.size(); ++i) {
    if (i % 2 == 1) requests[i].adapter = "tiny";
  }
  std::vector<Outcome> outcomes = run_all(*engine, requests);
  int differ = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const LlamaModel& reference = requests[i].adapter.empty() ? base : adapted;
    EXPECT_EQ(outcomes[i].tokens, generate_single(reference, requests[i])) << "request " << i;
    if (i % 2 == 1 && outcomes[i].tokens != generate_single(base, requests[i])) ++differ;
  }
  EXPECT_GT(differ, 0) << "the adapter changed no output";

  // Unloading ends the requests still using it; the base keeps serving.
  EngineRequest r = requests[1];
  r.max_tokens = 100;
  std::vector<TokenEvent> finals;
  r.on_event = [&](const TokenEvent& e) {
    if (e.final) finals.push_back(e);
  };
  ASSERT_TRUE(engine->submit(std::move(r)).ok());
  ASSERT_TRUE(engine->step());
  CAIRN_MODEL_ASSERT_OK(engine->unload_adapter("tiny"));
  EXPECT_FALSE(engine->step());
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0].status.code(), Code::not_found);
  EXPECT_EQ(engine->unload_adapter("tiny").code(), Code::not_found);
}

TEST(EngineTest, RendersTheChatTemplate) {
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(auto engine, InferenceEngine::load(kTinyLlama, {}, {}));
  CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(std::string text, engine->render_chat({{"user", "hi"}}, true));
  EXPECT_NE(text.find("hi"), std::string::npos);
}

}  // namespace
}  // namespace cairn
