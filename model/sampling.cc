#include "model/sampling.h"

#include <cmath>
#include <string>

#include "model/detail/torch_error.h"

namespace cairn {

Sampler::Sampler(const SamplingOptions& options) : options_(options), generator_(options.seed) {}

double Sampler::next_uniform() { return static_cast<double>(generator_() >> 11) * 0x1.0p-53; }

Result<int64_t> Sampler::sample(const at::Tensor& logits) {
  CAIRN_RETURN_IF_ERROR(validate_sampling_options(options_));
  if (!logits.defined() || logits.dim() != 1 || logits.numel() == 0 || !at::isFloatingType(logits.scalar_type())) {
    return error(Code::invalid_argument, "sample: logits must be a non-empty 1-D floating tensor [vocab]");
  }
  try {
    if (options_.temperature == 0) return logits.argmax().item<int64_t>();
    const double u = next_uniform();
    const int64_t vocab = logits.numel();
    at::Tensor scaled = logits.to(at::kFloat) / options_.temperature;
    // Candidates, most likely first when filtered; `ids` maps a candidate back to its token.
    at::Tensor values, ids;
    if (options_.top_k > 0 && options_.top_k < vocab) {
      std::tie(values, ids) = at::topk(scaled, options_.top_k);
    } else if (options_.top_p < 1) {
      std::tie(values, ids) = at::sort(scaled, /*dim=*/0, /*descending=*/true);
    } else {
      values = scaled;
    }
    at::Tensor probs = at::softmax(values, 0, at::kDouble);
    if (options_.top_p < 1) {
      // Keep token i while the tokens before it hold less than top_p; the first always stays.
      at::Tensor before = at::cumsum(probs, 0) - probs;
      const int64_t keep = std::max<int64_t>(1, (before < options_.top_p).sum().item<int64_t>());
      probs = probs.narrow(0, 0, keep);
    }
    at::Tensor cdf = at::cumsum(probs, 0);
    // Inverse CDF: the first candidate whose cumulative probability exceeds u * total.
    at::Tensor target = cdf.narrow(0, cdf.numel() - 1, 1) * u;
    int64_t pick = at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).item<int64_t>();
    pick = std::min<int64_t>(pick, cdf.numel() - 1);
    return ids.defined() ? ids[pick].item<int64_t>() : pick;
  } catch (...) {
    return detail::current_exception_status("sample");
  }
}

}  // namespace cairn
