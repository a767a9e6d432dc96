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
  // Keep only tokens whose probability (after temperature) is at least min_p times the most
  // likely token's; 0 (default) keeps them all. In [0, 1].
  double min_p = 0.0;
  // Penalties over tokens already seen, as vLLM applies them to the raw logits before temperature:
  // repetition divides a positive logit (multiplies a negative one) of every token in the prompt or
  // the output by it (1, the default, is off; > 0); presence subtracts it once from every token in
  // the output, frequency subtracts it times the token's count there (0, the default, is off; each
  // in [-2, 2]). min_p and the penalties are applied by the inference engine (model/engine.h);
  // generate() and Sampler ignore them.
  double repetition_penalty = 1.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  // Seeds the request's own generator: the same seed, options and logits give the same tokens on
  // every run and platform. Unused when greedy.
  uint64_t seed = 0;
};

// invalid_argument naming the field and what is allowed: a negative or non-finite temperature,
// a negative top_k, a top_p outside (0, 1], a min_p outside [0, 1], a repetition_penalty not
// above 0, presence or frequency penalties outside [-2, 2].
Status validate_sampling_options(const SamplingOptions& options);

}  // namespace cairn
