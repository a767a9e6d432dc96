#include "model/detail/engine_linear.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace cairn::detail {

at::Tensor column_blocked_linear(const Linear& linear, const at::Tensor& x) {
  const at::Tensor& weight = linear.weight();
  const bool dense = !linear.frozen_weight() && weight.defined() && (!linear.lora() || linear.lora()->merged);
  const int64_t out_features = dense ? weight.size(0) : 0;
  if (!dense || out_features <= kColumnBlock || x.dim() != 2 || !x.device().is_cpu() ||
      x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat) {
    return linear.forward(x);
  }
  TORCH_CHECK(x.size(1) == weight.size(1), "linear: input has ", x.size(1), " features, the weight ", weight.size(1));
  const at::Tensor& bias = linear.bias();
  at::Tensor input = x.contiguous();
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  const int64_t blocks = (out_features + kColumnBlock - 1) / kColumnBlock;
  const bool inference = c10::InferenceMode::is_enabled();  // per thread; the workers' is off
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    c10::InferenceMode mode(inference);
    for (int64_t i = first; i < last; ++i) {
      const int64_t begin = i * kColumnBlock, len = std::min(kColumnBlock, out_features - begin);
      at::Tensor columns = y.narrow(1, begin, len);
      at::Tensor w = weight.narrow(0, begin, len).t();
      if (bias.defined()) {
        at::addmm_out(columns, bias.narrow(0, begin, len), input, w);
      } else {
        at::mm_out(columns, input, w);
      }
    }
  });
  return y;
}

}  // namespace cairn::detail
