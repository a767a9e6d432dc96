// The trainer on tiny models: determinism, data-parallel equivalence (2 rank threads vs 1),
// learning (pretraining from scratch, LoRA and QLoRA on the tiny-llama fixture), bitwise resume
// from a checkpoint, gradient checkpointing, export, and the options it refuses.
#include "model/trainer.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cluster/collective.h"
#include "model/detail/row_blocks.h"
#include "model/hf_checkpoint.h"
#include "model/lora.h"
#include "model/tokenizer.h"
#include "model/trainer_torch.h"
#include "model_testing.h"
#include "runtime/collective.h"

namespace cairn {
namespace {

using testing::kTinyLlama;
using testing::ScratchDir;

constexpr int64_t kSequence = 64;

// A small corpus with plenty of structure to learn: sentences from a fixed grammar, picked by a
// linear congruential generator.
std::vector<int32_t> corpus_tokens() {
  static const std::vector<int32_t> tokens = [] {
    auto tokenizer = Tokenizer::load(kTinyLlama + "/tokenizer.json");
    EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
    const char* subjects[] = {"the cat", "a dog", "the old man", "my friend", "the bird"};
    const char* verbs[] = {"sat on", "looked at", "ran to", "sang to", "slept by"};
    const char* objects[] = {"the mat.", "a tree.", "the river.", "the house.", "a stone."};
    std::string text;
    uint64_t state = 12345;
    auto pick = [&](int n) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<int>((state >> 33) % static_cast<uint64_t>(n));
    };
    for (int i = 0; i < 600; ++i) {
      text += std::string(subjects[pick(5)]) + " " + verbs[pick(5)] + " " + objects[pick(5)] + " ";
    }
    return tokenizer->encode(text);
  }();
  return tokens;
}

// Row `index` of the corpus: kSequence tokens; odd rows hold two packed documents (40 + 24).
PackedRow corpus_row(int64_t index) {
  const std::vector<int32_t>& tokens = corpus_tokens();
  const int64_t rows = static_cast<int64_t>(tokens.size()) / kSequence;
  const int64_t start = (index % rows) * kSequence;
  PackedRow row;
  row.input_ids.assign(tokens.begin() + start, tokens.begin() + start + kSequence);
  row.labels = row.input_ids;
  row.index = index;
  if (index % 2 == 0) {
    row.doc_lens = {static_cast<int32_t>(kSequence)};
    for (int32_t i = 0; i < kSequence; ++i) row.position_ids.push_back(i);
    row.labels[0] = kIgnoreLabel;
  } else {
    row.doc_lens = {40, 24};
    for (int32_t i = 0; i < kSequence; ++i) row.position_ids.push_back(i < 40 ? i : i - 40);
    row.labels[0] = kIgnoreLabel;
    row.labels[40] = kIgnoreLabel;
  }
  return row;
}

std::vector<PackedRow> corpus_rows(int64_t first, int64_t count, int64_t stride = 1, int64_t offset = 0) {
  std::vector<PackedRow> rows;
  for (int64_t i = 0; i < count; ++i) rows.push_back(corpus_row(first + offset + i * stride));
  return rows;
}

TrainJobConfig scratch_config() {
  TrainJobConfig config;
  ArchitectureSpec arch;
  arch.hidden_size = 64;
  arch.intermediate_size = 128;
  arch.num_hidden_layers = 2;
  arch.num_attention_heads = 4;
  config.architecture = arch;
  config.sequence_len = kSequence;
  config.learning_rate = 3e-3;
  config.lr_scheduler = LrScheduler::constant;
  config.micro_batch_size = 4;
  config.weight_decay = 0.01;
  config.max_grad_norm = 1.0;
  config.seed = 7;
  return config;
}

TrainerInit scratch_init(int64_t total_steps) {
  TrainerInit init;
  init.tokenizer_path = kTinyLlama + "/tokenizer.json";
  init.schedule.total_steps = total_steps;
  return init;
}

TrainJobConfig adapter_config(AdapterKind kind) {
  TrainJobConfig config;
  config.adapter = kind;
  config.lora_r = 4;
  config.lora_alpha = 8;
  config.lora_target_linear = true;
  config.sequence_len = kSequence;
  config.learning_rate = 1e-2;
  config.lr_scheduler = LrScheduler::cosine;
  config.warmup_steps = 2;
  config.micro_batch_size = 4;
  config.seed = 11;
  return config;
}

TrainerInit tiny_llama_init(int64_t total_steps) {
  TrainerInit init = scratch_init(total_steps);
  init.base_model_dir = kTinyLlama;
  init.schedule.warmup_steps = 2;
  return init;
}

std::unique_ptr<Trainer> make_trainer(const TrainJobConfig& config, const TrainerInit& init,
                                      const TrainerOptions& options = {}) {
  auto trainer = Trainer::create(config, init, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status().to_string();
  return trainer.ok() ? std::move(*trainer) : nullptr;
}

// Runs steps [first, first + count): each step takes micro_batch rows `accumulation` times, row
// indices continuing from step * micro_batch * accumulation.
std::vector<StepStats> train(Trainer& trainer, int64_t first, int64_t count, int64_t micro_batch,
                             int64_t accumulation = 1) {
  std::vector<StepStats> out;
  for (int64_t step = first; step < first + count; ++step) {
    for (int64_t a = 0; a < accumulation; ++a) {
      const Status status = trainer.accumulate(corpus_rows((step * accumulation + a) * micro_batch, micro_batch));
      EXPECT_TRUE(status.ok()) << status.to_string();
    }
    auto stats = trainer.step();
    EXPECT_TRUE(stats.ok()) << stats.status().to_string();
    if (stats.ok()) out.push_back(*stats);
  }
  return out;
}

double eval_loss(Trainer& trainer, int64_t first_row, int64_t rows) {
  auto stats = trainer.evaluate({corpus_rows(first_row, rows)});
  EXPECT_TRUE(stats.ok()) << stats.status().to_string();
  return stats.ok() ? stats->loss : 0.0;
}

// |a - b| / |a| over every trainable parameter together.
double relative_difference(const Trainer& a, const Trainer& b) {
  auto pa = TrainerTorchAccess::trainable_parameters(a);
  auto pb = TrainerTorchAccess::trainable_parameters(b);
  EXPECT_EQ(pa.size(), pb.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < pa.size() && i < pb.size(); ++i) {
    EXPECT_EQ(pa[i].first, pb[i].first);
    diff += (pa[i].second - pb[i].second).to(at::kDouble).pow(2).sum().item<double>();
    norm += pa[i].second.to(at::kDouble).pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}

// The chunked, fused loss and its gradients against the plain computation: full logits, shifted
// cross-entropy with ignore_index, autograd. `chunk_tokens` as TrainerOptions::loss_chunk_tokens.
void check_loss_matches_plain_cross_entropy(int64_t chunk_tokens, int64_t n) {
  TrainerOptions options;
  options.loss_chunk_tokens = chunk_tokens;
  auto trainer = make_trainer(scratch_config(), scratch_init(2), options);
  ASSERT_TRUE(trainer);
  const std::vector<PackedRow> rows = corpus_rows(0, n);
  CAIRN_MODEL_ASSERT_OK(trainer->accumulate(rows));
  const at::Tensor fused_grads = TrainerTorchAccess::accumulated_gradients(*trainer);

  std::vector<int64_t> ids, labels, positions, docs;
  for (const PackedRow& row : rows) {
    ids.insert(ids.end(), row.input_ids.begin(), row.input_ids.end());
    labels.insert(labels.end(), row.labels.begin(), row.labels.end());
    positions.insert(positions.end(), row.position_ids.begin(), row.position_ids.end());
    int64_t doc = 1;
    for (int32_t len : row.doc_lens) docs.insert(docs.end(), len, doc++);
  }
  ForwardInput input;
  input.input_ids = at::tensor(ids, at::kLong).view({n, kSequence});
  input.position_ids = at::tensor(positions, at::kLong).view({n, kSequence});
  input.attention_mask = at::tensor(docs, at::kLong).view({n, kSequence});
  auto logits = trainer->model().forward(input);
  ASSERT_TRUE(logits.ok()) << logits.status().to_string();
  at::Tensor targets = at::tensor(labels, at::kLong).view({n, kSequence}).narrow(1, 1, kSequence - 1);
  at::Tensor shifted = logits->narrow(1, 0, kSequence - 1);
  at::Tensor loss = at::cross_entropy_loss(shifted.reshape({-1, shifted.size(-1)}), targets.reshape({-1}), {},
                                           at::Reduction::Sum, kIgnoreLabel);
  std::vector<at::Tensor> params;
  for (const auto& [name, tensor] : TrainerTorchAccess::trainable_parameters(*trainer)) params.push_back(tensor);
  std::reverse(params.begin(), params.end());  // the flat buffer's order
  std::vector<at::Tensor> grads = torch::autograd::grad({loss}, params);
  std::vector<at::Tensor> flat;
  for (const at::Tensor& g : grads) flat.push_back(g.reshape({-1}));
  const at::Tensor plain_grads = at::cat(flat);
  const double scale = plain_grads.abs().max().item<double>();
  EXPECT_LT(testing::max_abs_diff(fused_grads, plain_grads), 1e-5 * scale);

  const int64_t trained = (targets != kIgnoreLabel).sum().item<int64_t>();
  auto eval = trainer->evaluate({rows});
  ASSERT_TRUE(eval.ok()) << eval.status().to_string();
  EXPECT_EQ(eval->tokens, trained);
  EXPECT_NEAR(eval->loss, loss.item<double>() / static_cast<double>(trained), 1e-5);
  EXPECT_NEAR(eval->perplexity, std::exp(eval->loss), 1e-9 * eval->perplexity);
}

TEST(Trainer, LossAndGradientsMatchPlainCrossEntropy) {
  check_loss_matches_plain_cross_entropy(50, 3);  // several chunks, the last one partial
}

// One chunk of more than kBlockRows (256) tokens: the products split into row blocks across threads.
TEST(Trainer, LossAndGradientsMatchPlainCrossEntropyInRowBlocks) {
  check_loss_matches_plain_cross_entropy(4096, 6);
}

TEST(Trainer, SameSeedSameLossCurveBitwise) {
  std::vector<std::vector<StepStats>> curves;
  std::vector<std::string> digests;
  TrainJobConfig config = scratch_config();
  config.gradient_accumulation_steps = 2;
  for (int run = 0; run < 2; ++run) {
    auto trainer = make_trainer(config, scratch_init(5));
    ASSERT_TRUE(trainer);
    curves.push_back(train(*trainer, 0, 5, 4, 2));
    digests.push_back(trainer->parameters_digest());
  }
  ASSERT_EQ(curves[0].size(), 5u);
  ASSERT_EQ(curves[1].size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(curves[0][i].loss, curves[1][i].loss) << "step " << i;
    EXPECT_EQ(curves[0][i].grad_norm, curves[1][i].grad_norm) << "step " << i;
    EXPECT_EQ(curves[0][i].step, static_cast<int64_t>(i + 1));
    EXPECT_GT(curves[0][i].tokens, 0);
  }
  EXPECT_EQ(digests[0], digests[1]);
}

// Training with 1 and 2 ATen threads gives the same bits: the blocked products of the CPU training
// path (model/detail/row_blocks.h) split by shape, never by thread count. 6 rows of 64 tokens are
// 384 positions, more than one 256-row block.
TEST(Trainer, SameBitsWithOneAndTwoThreads) {
  const int saved_threads = at::get_num_threads();
  TrainJobConfig config = scratch_config();
  config.micro_batch_size = 6;
  std::vector<double> losses;
  std::vector<std::string> digests;
  for (int threads : {1, 2}) {
    TrainerOptions options;
    options.num_threads = threads;
    auto trainer = make_trainer(config, scratch_init(2), options);
    ASSERT_TRUE(trainer);
    const std::vector<StepStats> curve = train(*trainer, 0, 2, 6);
    ASSERT_EQ(curve.size(), 2u);
    losses.push_back(curve.back().loss);
    digests.push_back(trainer->parameters_digest());
  }
  at::set_num_threads(saved_threads);
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(digests[0], digests[1]);
}

// The blocked products and row-wise kernels of the CPU training path, and their gradients,
// against the ATen compositions they replace, and the same bits with 1 and 2 threads. 600 rows of
// x are 3 row blocks; 130 weight rows are 3 grad_W blocks; 140 positions and 150 norm rows are 3
// row-wise blocks each; the attention has 8 query-head items and 4 kv-head items.
TEST(Trainer, BlockedProductsMatchPlainOnes) {
  const int saved_threads = at::get_num_threads();
  at::manual_seed(3);
  const std::vector<at::Tensor> inputs = {at::randn({3, 200, 48}), at::randn({130, 48}), at::randn({130}),
                                          at::randn({2, 3, 40, 16}), at::randn({2, 3, 16, 24}),
                                          at::randn({2, 70, 3, 8}), at::randn({3, 50, 32}), at::randn({32})};
  const at::Tensor angles = at::randn({2, 70, 1, 8});
  // Attention: batch 2, length 40, 4 query heads on 2 kv heads, causal plus a per-row document mask.
  const std::vector<at::Tensor> qkv = {at::randn({2, 40, 4, 8}), at::randn({2, 40, 2, 8}), at::randn({2, 40, 2, 8})};
  const at::Tensor positions = at::arange(40);
  at::Tensor mask = (positions.unsqueeze(0) > positions.unsqueeze(1)).unsqueeze(0).repeat({2, 1, 1});
  mask[1].narrow(1, 0, 10).narrow(0, 10, 30).fill_(true);  // row 1: a second document from position 10
  const at::Tensor cos = angles.cos(), sin = angles.sin();
  auto run = [&](bool blocked) {
    std::vector<at::Tensor> in;
    for (const at::Tensor& t : inputs) in.push_back(t.clone().requires_grad_());
    for (const at::Tensor& t : qkv) in.push_back(t.clone().requires_grad_());
    std::vector<at::Tensor> outs;
    outs.push_back(blocked ? detail::blocked_linear(in[0], in[1], in[2]) : at::linear(in[0], in[1], in[2]));
    outs.push_back(blocked ? detail::blocked_matmul(in[3], in[4]) : at::matmul(in[3], in[4]));
    if (blocked) {
      outs.push_back(detail::rope_rows(in[5], cos, sin));
      outs.push_back(detail::rms_norm_rows(in[6], in[7], 1e-5));
      outs.push_back(detail::attention_rows(in[8], in[9], in[10], mask, 0.25));
    } else {
      const at::Tensor& x = in[5];
      outs.push_back(x * cos + at::cat({x.narrow(-1, 4, 4).neg(), x.narrow(-1, 0, 4)}, -1) * sin);
      outs.push_back(in[7] * (in[6] * at::rsqrt(in[6].pow(2).mean(-1, /*keepdim=*/true) + 1e-5)));
      // Query heads 2j and 2j + 1 share kv head j.
      at::Tensor q = in[8].transpose(1, 2), k = in[9].repeat_interleave(2, 2).transpose(1, 2);
      at::Tensor v = in[10].repeat_interleave(2, 2).transpose(1, 2);
      at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul(0.25).masked_fill(mask.unsqueeze(1), -3.4e38);
      outs.push_back(at::matmul(at::softmax(scores, -1), v).transpose(1, 2).reshape({2, 40, 32}));
    }
    at::Tensor loss = at::zeros({});
    at::manual_seed(5);  // the same output weights for both
    for (const at::Tensor& out : outs) loss = loss + (out * at::randn(out.sizes())).sum();
    std::vector<at::Tensor> results = torch::autograd::grad({loss}, in);
    for (const at::Tensor& out : outs) results.push_back(out.detach());
    return results;
  };
  at::set_num_threads(2);
  const std::vector<at::Tensor> plain = run(false), two = run(true);
  at::set_num_threads(1);
  const std::vector<at::Tensor> one = run(true);
  at::set_num_threads(saved_threads);
  ASSERT_EQ(plain.size(), 16u);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_LT(testing::max_abs_diff(two[i], plain[i]), 1e-5 * plain[i].abs().max().item<double>()) << "tensor " << i;
    EXPECT_TRUE(at::equal(one[i], two[i])) << "tensor " << i;
  }
}

// 2 ranks on 2 threads, micro-batch b, against 1 rank with micro-batch 2b; the ranks take every
// other row of each global micro-batch, as BatchStream shards rows.
void check_equivalence(bool overlap) {
  constexpr int64_t kSteps = 5, kHalf = 2, kAccumulation = 2;
  TrainJobConfig config = scratch_config();
  config.gradient_accumulation_steps = kAccumulation;
  auto single = make_trainer(config, scratch_init(kSteps));
  ASSERT_TRUE(single);
  train(*single, 0, kSteps, 2 * kHalf, kAccumulation);

  auto group = InProcessGroup::create(2);
  std::vector<std::unique_ptr<Trainer>> replicas(2);
  std::vector<std::vector<StepStats>> curves(2);
  std::vector<double> evals(2, 0.0);
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<Collective>> members;
  for (int rank = 0; rank < 2; ++rank) members.push_back(group->member(rank));
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      TrainerOptions options;
      options.rank = rank;
      options.world_size = 2;
      options.collective = members[rank].get();
      options.bucket_bytes = 16 << 10;  // several buckets
      options.overlap_communication = overlap;
      auto trainer = Trainer::create(config, scratch_init(kSteps), options);
      if (!trainer.ok()) {
        ADD_FAILURE() << trainer.status().to_string();
        members[rank]->abort();
        return;
      }
      for (int64_t step = 0; step < kSteps; ++step) {
        for (int64_t a = 0; a < kAccumulation; ++a) {
          const int64_t first = (step * kAccumulation + a) * 2 * kHalf;
          EXPECT_TRUE((*trainer)->accumulate(corpus_rows(first, kHalf, 2, rank)).ok());
        }
        auto stats = (*trainer)->step();
        EXPECT_TRUE(stats.ok()) << stats.status().to_string();
        if (stats.ok()) curves[rank].push_back(*stats);
      }
      // Each rank evaluates its half of the validation rows; the reduced loss covers all of them.
      auto eval = (*trainer)->evaluate({corpus_rows(10000, 4, 2, rank)});
      EXPECT_TRUE(eval.ok()) << eval.status().to_string();
      if (eval.ok()) evals[rank] = eval->loss;
      replicas[rank] = std::move(*trainer);
    });
  }
  for (auto& thread : threads) thread.join();
  ASSERT_TRUE(replicas[0] && replicas[1]);
  EXPECT_EQ(replicas[0]->parameters_digest(), replicas[1]->parameters_digest());
  EXPECT_LT(relative_difference(*single, *replicas[0]), 1e-5);
  ASSERT_EQ(curves[0].size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(curves[0].back().loss, curves[1].back().loss);
  EXPECT_EQ(curves[0].back().tokens, curves[1].back().tokens);
  EXPECT_EQ(evals[0], evals[1]);
  EXPECT_NEAR(evals[0], eval_loss(*single, 10000, 8), 1e-4 * evals[0]);
}

TEST(Trainer, TwoRanksEqualOneRankWithTwiceTheBatch) { check_equivalence(/*overlap=*/true); }
TEST(Trainer, TwoRanksEqualOneRankWithoutOverlap) { check_equivalence(/*overlap=*/false); }

// A rank whose shard ran out steps with nothing accumulated; it contributes no gradient, and the
// buckets still meet in the same order on both ranks.
TEST(Trainer, RankWithNothingAccumulatedStillSteps) {
  constexpr int64_t kSteps = 3;
  TrainJobConfig config = scratch_config();
  config.gradient_accumulation_steps = 2;
  auto single = make_trainer(config, scratch_init(kSteps));
  ASSERT_TRUE(single);
  for (int64_t step = 0; step < kSteps; ++step) {
    CAIRN_MODEL_ASSERT_OK(single->accumulate(corpus_rows(step * 4, 2)));
    ASSERT_TRUE(single->step().ok());
  }
  auto group = InProcessGroup::create(2);
  std::vector<std::unique_ptr<Collective>> members;
  for (int rank = 0; rank < 2; ++rank) members.push_back(group->member(rank));
  std::vector<std::unique_ptr<Trainer>> replicas(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      TrainerOptions options;
      options.rank = rank;
      options.world_size = 2;
      options.collective = members[rank].get();
      options.bucket_bytes = 16 << 10;
      auto trainer = Trainer::create(config, scratch_init(kSteps), options);
      if (!trainer.ok()) {
        ADD_FAILURE() << trainer.status().to_string();
        members[rank]->abort();
        return;
      }
      for (int64_t step = 0; step < kSteps; ++step) {
        // Step 1: rank 0 takes both micro-batches (overlapping the second); otherwise rank 0 one
        // micro-batch and rank 1 none.
        if (rank == 0) {
          EXPECT_TRUE((*trainer)->accumulate(corpus_rows(step * 4, step == 1 ? 1 : 2)).ok());
          if (step == 1) EXPECT_TRUE((*trainer)->accumulate(corpus_rows(step * 4 + 1, 1)).ok());
        }
        auto stats = (*trainer)->step();
        EXPECT_TRUE(stats.ok()) << stats.status().to_string();
      }
      replicas[rank] = std::move(*trainer);
    });
  }
  for (auto& thread : threads) thread.join();
  ASSERT_TRUE(replicas[0] && replicas[1]);
  EXPECT_EQ(replicas[0]->parameters_digest(), replicas[1]->parameters_digest());
  EXPECT_LT(relative_difference(*single, *replicas[0]), 1e-5);
}

TEST(Trainer, PretrainingLowersValidationLoss) {
  constexpr int64_t kSteps = 60;
  auto trainer = make_trainer(scratch_config(), scratch_init(kSteps));
  ASSERT_TRUE(trainer);
  // Validation rows: far past the rows training reads.
  const double before = eval_loss(*trainer, 10000, 8);
  auto curve = train(*trainer, 0, kSteps, 8);
  const double after = eval_loss(*trainer, 10000, 8);
  EXPECT_LT(after, 0.7 * before) << "before " << before << ", after " << after;
  ASSERT_FALSE(curve.empty());
  EXPECT_LT(curve.back().loss, curve.front().loss);
}

void check_adapter_learns(AdapterKind kind) {
  constexpr int64_t kSteps = 25;
  auto trainer = make_trainer(adapter_config(kind), tiny_llama_init(kSteps));
  ASSERT_TRUE(trainer);
  const std::string base = trainer->base_weights_digest();
  const double before = eval_loss(*trainer, 0, 8);
  train(*trainer, 0, kSteps, 4);
  const double after = eval_loss(*trainer, 0, 8);
  EXPECT_LT(after, 0.9 * before) << "before " << before << ", after " << after;
  EXPECT_EQ(trainer->base_weights_digest(), base);
  // Only the adapter trains.
  for (const auto& [name, tensor] : TrainerTorchAccess::trainable_parameters(*trainer)) {
    EXPECT_NE(name.find(".lora_"), std::string::npos) << name;
  }
}

TEST(Trainer, LoraLowersLossAndLeavesTheBaseBitIdentical) { check_adapter_learns(AdapterKind::lora); }
TEST(Trainer, QloraLowersLossAndLeavesTheBaseBitIdentical) { check_adapter_learns(AdapterKind::qlora); }

// Save at step 3, resume in a fresh trainer, continue to step 6: bitwise the uninterrupted run.
void check_resume(const TrainJobConfig& config, const TrainerInit& init) {
  ScratchDir dir("trainer-resume");
  auto uninterrupted = make_trainer(config, init);
  ASSERT_TRUE(uninterrupted);
  auto full_curve = train(*uninterrupted, 0, 6, 4);

  auto first = make_trainer(config, init);
  ASSERT_TRUE(first);
  train(*first, 0, 3, 4);
  CAIRN_MODEL_ASSERT_OK(first->save_checkpoint(dir.path()));
  first.reset();

  auto resumed = make_trainer(config, init);
  ASSERT_TRUE(resumed);
  CAIRN_MODEL_ASSERT_OK(resumed->load_checkpoint(dir.path()));
  EXPECT_EQ(resumed->completed_steps(), 3);
  auto rest = train(*resumed, 3, 3, 4);
  ASSERT_EQ(rest.size(), 3u);
  ASSERT_EQ(full_curve.size(), 6u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(rest[i].loss, full_curve[3 + i].loss) << "step " << 4 + i;
    EXPECT_EQ(rest[i].lr, full_curve[3 + i].lr) << "step " << 4 + i;
  }
  EXPECT_EQ(resumed->parameters_digest(), uninterrupted->parameters_digest());
}

TEST(Trainer, ResumeFromCheckpointIsBitwiseFullFineTune) { check_resume(scratch_config(), scratch_init(6)); }

TEST(Trainer, ResumeFromCheckpointIsBitwiseLoraWithDropout) {
  TrainJobConfig config = adapter_config(AdapterKind::lora);
  config.lora_dropout = 0.1;  // the dropout generator's state must resume too
  check_resume(config, tiny_llama_init(6));
}

TEST(Trainer, CheckpointHoldsPeftAdapterOptimizerAndState) {
  ScratchDir dir("trainer-files");
  auto trainer = make_trainer(adapter_config(AdapterKind::lora), tiny_llama_init(4));
  ASSERT_TRUE(trainer);
  train(*trainer, 0, 1, 4);
  CAIRN_MODEL_ASSERT_OK(trainer->save_checkpoint(dir.path()));
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                           "trainer_state.json"}) {
    EXPECT_TRUE(std::filesystem::exists(dir.file(file))) << file;
  }
  auto reader = safetensors::Reader::open(dir.file("optimizer.safetensors"));
  ASSERT_TRUE(reader.ok());
  EXPECT_NE(reader->find("model.layers.0.self_attn.q_proj.lora_A.weight.exp_avg"), nullptr);
  EXPECT_NE(reader->find("model.layers.0.self_attn.q_proj.lora_A.weight.exp_avg_sq"), nullptr);
}

// Gradients of one micro-batch with and without gradient checkpointing.
void check_gradient_checkpointing(TrainJobConfig config, const TrainerInit& init) {
  std::vector<at::Tensor> grads;
  for (bool checkpointing : {false, true}) {
    config.gradient_checkpointing = checkpointing;
    auto trainer = make_trainer(config, init);
    ASSERT_TRUE(trainer);
    CAIRN_MODEL_ASSERT_OK(trainer->accumulate(corpus_rows(0, 4)));
    grads.push_back(TrainerTorchAccess::accumulated_gradients(*trainer));
  }
  const double scale = std::max(1.0, grads[0].abs().max().item<double>());
  EXPECT_GT(grads[0].abs().max().item<double>(), 0.0);
  EXPECT_LT(testing::max_abs_diff(grads[0], grads[1]), 1e-6 * scale);
}

TEST(Trainer, GradientCheckpointingGivesTheSameGradients) {
  check_gradient_checkpointing(scratch_config(), scratch_init(4));
}

TEST(Trainer, GradientCheckpointingWithLoraDropoutGivesTheSameGradients) {
  TrainJobConfig config = adapter_config(AdapterKind::lora);
  config.lora_dropout = 0.2;
  check_gradient_checkpointing(config, tiny_llama_init(4));
}

TEST(Trainer, ExportsLoadableModelAndAdapter) {
  ScratchDir dir("trainer-export");
  auto full = make_trainer(scratch_config(), scratch_init(2));
  ASSERT_TRUE(full);
  train(*full, 0, 1, 4);
  CAIRN_MODEL_ASSERT_OK(full->export_model(dir.file("full")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("full/tokenizer.json")));
  auto loaded = load_llama(dir.file("full"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->config().hidden_size, 64);

  TrainerInit init = tiny_llama_init(2);
  init.base_model_reference = "tiny@prod";
  auto adapter = make_trainer(adapter_config(AdapterKind::lora), init);
  ASSERT_TRUE(adapter);
  train(*adapter, 0, 1, 4);
  CAIRN_MODEL_ASSERT_OK(adapter->export_model(dir.file("adapter")));
  auto base = load_llama(kTinyLlama);
  ASSERT_TRUE(base.ok());
  auto lora = load_lora(*base, dir.file("adapter"));
  ASSERT_TRUE(lora.ok()) << lora.status().to_string();
  EXPECT_EQ(lora->base_model_name_or_path, "tiny@prod");
  EXPECT_EQ(lora->rank, 4);
}

TEST(Trainer, RefusesWhatItCannotHonour) {
  TrainJobConfig config = scratch_config();
  config.bf16 = Bf16Mode::on;
  auto bf16 = Trainer::create(config, scratch_init(2), {});
  ASSERT_FALSE(bf16.ok());
  EXPECT_EQ(bf16.status().code(), Code::invalid_argument);
  EXPECT_NE(bf16.status().message().find("bf16"), std::string::npos);

  auto no_steps = Trainer::create(scratch_config(), scratch_init(0), {});
  ASSERT_FALSE(no_steps.ok());
  EXPECT_NE(no_steps.status().message().find("total_steps"), std::string::npos);

  TrainerOptions two;
  two.world_size = 2;
  auto no_collective = Trainer::create(scratch_config(), scratch_init(2), two);
  ASSERT_FALSE(no_collective.ok());
  EXPECT_NE(no_collective.status().message().find("collective"), std::string::npos);

  auto trainer = make_trainer(scratch_config(), scratch_init(2));
  ASSERT_TRUE(trainer);
  EXPECT_FALSE(trainer->step().ok());  // nothing accumulated
  EXPECT_FALSE(trainer->accumulate({}).ok());
  CAIRN_MODEL_ASSERT_OK(trainer->accumulate(corpus_rows(0, 2)));
  EXPECT_FALSE(trainer->accumulate(corpus_rows(2, 2)).ok());  // gradient_accumulation_steps is 1
  EXPECT_TRUE(trainer->step().ok());
}

}  // namespace
}  // namespace cairn
