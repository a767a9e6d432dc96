// The token sampler: one per request, so a batched server samples each row of its logits with
// that request's options and generator, and gets what a single-request run would.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>

#include "model/sampling_options.h"
#include "runtime/status.h"

namespace cairn {

// Holds a request's options and random generator. Not thread-safe: one request, one thread at a
// time. Copying copies the generator's state.
class Sampler {
 public:
  // Precondition: validate_sampling_options(options) is ok (sample() otherwise fails).
  explicit Sampler(const SamplingOptions& options);

  // The next token id for `logits` [vocab] (any floating dtype, any device; one host sync).
  // Each non-greedy call draws one number from the generator, so the sequence of draws depends
  // only on the seed and the number of calls.
  // Errors: invalid_argument for logits that are not a non-empty 1-D floating tensor or options
  // that do not validate; internal for a libtorch failure.
  Result<int64_t> sample(const at::Tensor& logits);

  const SamplingOptions& options() const { return options_; }

 private:
  // A double in [0, 1) from the top 53 bits of one draw (std::uniform_real_distribution's output
  // differs between standard libraries; this does not).
  double next_uniform();

  SamplingOptions options_;
  std::mt19937_64 generator_;
};

}  // namespace cairn
