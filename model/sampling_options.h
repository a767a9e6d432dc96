// How the next token is chosen from a model's logits. Torch-free, so request and config types
// can carry it; the sampler itself is model/sampling.h.
#pragma once

#include <cstdint>

#include "runtime/status.h"

namespace cairn {

// Applied in transformers' order: temperature, then top-k, then top-p.
struct SamplingOptions {
  // 0 (default): greedy, the token with the highest logit (the lowest id among equals). Otherwise
  // logits are divided by it before sampling: below 1 sharpens, above 1 flattens.
  double temperature = 0.0;
  // Sample among the k most likely tokens only; 0 (default) keeps them all.
  int64_t top_k = 0;
  // Sample among the smallest set of most likely tokens whose probabilities sum to at least
  // top_p (nucleus sampling); 1 (default) keeps them all. In (0, 1].
  double top_p = 1.0;
  // Seeds the request's own generator: the same seed, options and logits give the same tokens on
  // every run and platform. Unused when greedy.
  uint64_t seed = 0;
};

// invalid_argument naming the field and what is allowed: a negative or non-finite temperature,
// a negative top_k, a top_p outside (0, 1].
Status validate_sampling_options(const SamplingOptions& options);

}  // namespace cairn
