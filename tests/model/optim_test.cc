// AdamW and clipping over flat buffers against torch.optim.AdamW and clip_grad_norm_ (torch 1.13;
// reference numbers printed by /usr/bin/python3 as float.hex), and the LR schedules against
// transformers' formulas.
#include "model/optim.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/train_config.h"

namespace cairn {
namespace {

at::Tensor floats(const std::vector<float>& values) { return at::tensor(values, at::kFloat); }

void expect_bitwise(const at::Tensor& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(actual[static_cast<int64_t>(i)].item<float>(), expected[i]) << "element " << i;
  }
}

TEST(AdamW, MatchesTorchBitwise) {
  // p = [0.5, -1, 2, 0, 1e-3, 3, -0.25, 0.75]; AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8,
  // weight_decay=0.1); three steps with these gradients.
  at::Tensor params = floats({0.5f, -1.0f, 2.0f, 0.0f, 1e-3f, 3.0f, -0.25f, 0.75f});
  const std::vector<std::vector<float>> grads = {{0.1f, -0.2f, 0.3f, 0.0f, 1.0f, -5.0f, 0.01f, 2.0f},
                                                 {-0.1f, 0.4f, 0.2f, 1e-4f, -1.0f, 5.0f, 0.02f, 1.5f},
                                                 {0.3f, 0.0f, -0.3f, -1e-4f, 0.5f, 1.0f, -0.01f, 0.25f}};
  at::Tensor exp_avg = at::zeros_like(params), exp_avg_sq = at::zeros_like(params);
  AdamWOptions options;
  options.lr = 0.01;
  options.weight_decay = 0.1;
  for (size_t step = 0; step < grads.size(); ++step) {
    adamw_step(params, floats(grads[step]), exp_avg, exp_avg_sq, static_cast<int64_t>(step + 1), options,
               {{0, params.numel()}});
  }
  expect_bitwise(params, {0x1.ef0b5p-2f, -0x1.fcad66p-1f, 0x1.f9p+0f, -0x1.c98392p-8f, -0x1.4e615p-7f, 0x1.7fe4a6p+1f,
                          -0x1.17a0a6p-2f, 0x1.7084bap-1f});
  expect_bitwise(exp_avg, {0x1.dcc642p-6f, 0x1.446738p-6f, 0x1.930bep-7f, -0x1.0c6f82p-20f, 0x1.4fdf3ap-5f,
                           0x1.28f5c4p-3f, 0x1.a60d42p-10f, 0x1.49ba5ep-2f});
  expect_bitwise(exp_avg_sq, {0x1.cd3f68p-14f, 0x1.a2ed5cp-13f, 0x1.cce98cp-13f, 0x1.5faaf4p-36f, 0x1.2684d8p-9f,
                              0x1.a12d86p-5f, 0x1.41cceep-21f, 0x1.9d0648p-8f});
}

TEST(AdamW, WeightDecayOnlyOnDecayedRanges) {
  at::Tensor params = floats({1.0f, 1.0f, 1.0f, 1.0f});
  at::Tensor exp_avg = at::zeros_like(params), exp_avg_sq = at::zeros_like(params);
  AdamWOptions options;
  options.lr = 0.1;
  options.weight_decay = 0.5;
  adamw_step(params, at::zeros_like(params), exp_avg, exp_avg_sq, 1, options, {{1, 3}});
  // Zero gradients: only the decay moves a parameter, by the factor 1 - 0.1 * 0.5.
  expect_bitwise(params, {1.0f, 0.95f, 0.95f, 1.0f});
}

TEST(ClipGradNorm, MatchesTorch) {
  // clip_grad_norm_([x, y], 1.0) with x.grad = [3, 4], y.grad = [12]: norm 13.
  at::Tensor grads = floats({3.0f, 4.0f, 12.0f});
  EXPECT_DOUBLE_EQ(clip_grad_norm(grads, 1.0), 13.0);
  expect_bitwise(grads, {0x1.d89d88p-3f, 0x1.3b13bp-2f, 0x1.d89d88p-1f});
  at::Tensor small = floats({0.3f, 0.4f});
  EXPECT_NEAR(clip_grad_norm(small, 1.0), 0.5, 1e-7);
  expect_bitwise(small, {0.3f, 0.4f});  // under the limit: untouched
  at::Tensor unclipped = floats({30.0f, 40.0f});
  EXPECT_NEAR(clip_grad_norm(unclipped, 0.0), 50.0, 1e-5);  // max_norm 0: no clipping
  expect_bitwise(unclipped, {30.0f, 40.0f});
}

// transformers.get_{cosine,linear,constant}_schedule_with_warmup, as LambdaLR applies them: the
// lr of optimizer step k (0-based) is base * lambda(k).
double hf_lambda(LrScheduler scheduler, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return static_cast<double>(step) / std::max<int64_t>(1, warmup);
  const double progress = static_cast<double>(step - warmup) / std::max<int64_t>(1, total - warmup);
  switch (scheduler) {
    case LrScheduler::cosine: return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
    case LrScheduler::linear:
      return std::max(0.0, static_cast<double>(total - step) / std::max<int64_t>(1, total - warmup));
    case LrScheduler::constant: return 1.0;
  }
  return 0.0;
}

TEST(LrSchedule, MatchesTransformers) {
  for (LrScheduler scheduler : {LrScheduler::cosine, LrScheduler::linear, LrScheduler::constant}) {
    TrainJobConfig config;
    config.learning_rate = 3e-4;
    config.lr_scheduler = scheduler;
    TrainingSchedule schedule;
    schedule.total_steps = 20;
    schedule.warmup_steps = 4;
    for (int64_t step = 0; step < 20; ++step) {
      EXPECT_NEAR(scheduled_learning_rate(config, schedule, step), 3e-4 * hf_lambda(scheduler, step, 4, 20), 1e-15)
          << lr_scheduler_name(scheduler) << " step " << step;
    }
  }
}

}  // namespace
}  // namespace cairn
