#include "model/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace cairn {
namespace {

at::Tensor logits_from_probs(std::vector<double> probs) {
  return at::log(at::tensor(probs, at::kDouble)).to(at::kFloat);
}

// Token -> how often it was drawn in `n` draws.
std::map<int64_t, int> histogram(Sampler& sampler, const at::Tensor& logits, int n) {
  std::map<int64_t, int> counts;
  for (int i = 0; i < n; ++i) {
    auto token = sampler.sample(logits);
    EXPECT_TRUE(token.ok()) << token.status().to_string();
    if (token.ok()) ++counts[*token];
  }
  return counts;
}

TEST(SamplerTest, TemperatureZeroIsGreedyWithTiesToTheLowestId) {
  Sampler greedy(SamplingOptions{});
  EXPECT_EQ(*greedy.sample(at::tensor(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f})), 1);
  EXPECT_EQ(*greedy.sample(at::tensor(std::vector<float>{5.0f, 1.0f}).to(at::kBFloat16)), 0);
}

TEST(SamplerTest, TopKOfOneIsGreedyAtAnyTemperature) {
  SamplingOptions options;
  options.temperature = 5.0;
  options.top_k = 1;
  Sampler sampler(options);
  at::Tensor logits = at::randn({100});
  const int64_t best = logits.argmax().item<int64_t>();
  for (int i = 0; i < 50; ++i) EXPECT_EQ(*sampler.sample(logits), best);
}

TEST(SamplerTest, DrawsFollowTheDistribution) {
  SamplingOptions options;
  options.temperature = 1.0;
  options.seed = 7;
  Sampler sampler(options);
  auto counts = histogram(sampler, logits_from_probs({0.5, 0.3, 0.2}), 10000);
  EXPECT_NEAR(counts[0] / 10000.0, 0.5, 0.02);
  EXPECT_NEAR(counts[1] / 10000.0, 0.3, 0.02);
  EXPECT_NEAR(counts[2] / 10000.0, 0.2, 0.02);
}

TEST(SamplerTest, TemperatureSharpensAndFlattens) {
  at::Tensor logits = logits_from_probs({0.6, 0.4});
  SamplingOptions cold;
  cold.temperature = 0.25;  // p ~ 0.6^4 : 0.4^4 = 0.835 : 0.165
  Sampler cold_sampler(cold);
  EXPECT_NEAR(histogram(cold_sampler, logits, 10000)[0] / 10000.0, 0.835, 0.02);
  SamplingOptions hot;
  hot.temperature = 100;  // nearly uniform
  Sampler hot_sampler(hot);
  EXPECT_NEAR(histogram(hot_sampler, logits, 10000)[0] / 10000.0, 0.5, 0.02);
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_k = 2;
  Sampler sampler(options);
  auto counts = histogram(sampler, logits_from_probs({0.2, 0.5, 0.3}), 10000);
  EXPECT_EQ(counts.count(0), 0u);
  EXPECT_NEAR(counts[1] / 10000.0, 0.625, 0.02);  // renormalised: 0.5 / 0.8
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleusReachingP) {
  at::Tensor logits = logits_from_probs({0.3, 0.5, 0.2});
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_p = 0.6;  // 0.5 < 0.6, so token 0 joins; 0.8 >= 0.6, so token 2 does not
  Sampler sampler(options);
  auto counts = histogram(sampler, logits, 10000);
  EXPECT_EQ(counts.count(2), 0u);
  EXPECT_NEAR(counts[1] / 10000.0, 0.625, 0.02);
  options.top_p = 0.5;  // the top token alone reaches it
  Sampler only_top(options);
  auto top = histogram(only_top, logits, 200);
  EXPECT_EQ(top[1], 200);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  at::Tensor logits = at::zeros({1000});
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_p = 0.9;
  options.seed = 1234;
  Sampler a(options), b(options);
  options.seed = 1235;
  Sampler c(options);
  std::vector<int64_t> ta, tb, tc;
  for (int i = 0; i < 32; ++i) {
    ta.push_back(*a.sample(logits));
    tb.push_back(*b.sample(logits));
    tc.push_back(*c.sample(logits));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, BadOptionsAndLogitsAreInvalidArguments) {
  auto invalid = [](SamplingOptions o, const std::string& field) {
    Status status = validate_sampling_options(o);
    EXPECT_EQ(status.code(), Code::invalid_argument) << field;
    EXPECT_NE(status.message().find(field), std::string::npos) << status.to_string();
  };
  SamplingOptions o;
  o.temperature = -1;
  invalid(o, "temperature");
  o = {};
  o.temperature = std::nan("");
  invalid(o, "temperature");
  o = {};
  o.top_k = -2;
  invalid(o, "top_k");
  o = {};
  o.top_p = 0;
  invalid(o, "top_p");
  o.top_p = 1.5;
  invalid(o, "top_p");
  EXPECT_TRUE(validate_sampling_options({}).ok());

  Sampler sampler(SamplingOptions{});
  EXPECT_EQ(sampler.sample(at::zeros({2, 3})).status().code(), Code::invalid_argument);
  EXPECT_EQ(sampler.sample(at::zeros({0})).status().code(), Code::invalid_argument);
  EXPECT_EQ(sampler.sample(at::zeros({3}, at::kLong)).status().code(), Code::invalid_argument);
}

}  // namespace
}  // namespace cairn
