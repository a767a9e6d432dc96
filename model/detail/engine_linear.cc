#include "model/detail/engine_linear.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "model/detail/dot_linear.h"

namespace cairn::detail {
namespace {

// kDot splits the output features in units of kDotColumnUnit (a multiple of the kernel's 3-column
// tiles and of 8 floats), at least kDotMinUnitsPerTask units per thread.
constexpr int64_t kDotColumnUnit = 24;
constexpr int64_t kDotMinUnitsPerTask = 4;

}  // namespace

at::Tensor column_blocked_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             ProjectionKernel kernel) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "linear: input has ", x.size(-1),
              " features, the weight ", weight.size(-1));
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "linear: expected float32");
  const int64_t out_features = weight.size(0), depth = weight.size(1), rows = x.size(0);
  at::Tensor input = x.contiguous();
  at::Tensor w_contiguous = weight.contiguous();
  at::Tensor b_contiguous = bias.defined() ? bias.contiguous() : bias;
  at::Tensor y = at::empty({rows, out_features}, x.options());
  const bool inference = c10::InferenceMode::is_enabled();  // per thread; the workers' is off
  if (kernel == ProjectionKernel::kDot) {
    // No element depends on the columns a thread gets, so the features are split evenly over the
    // threads (in units of kDotColumnUnit) rather than in fixed blocks.
    const int64_t units = (out_features + kDotColumnUnit - 1) / kDotColumnUnit;
    const float* x_data = input.data_ptr<float>();
    const float* w_data = w_contiguous.data_ptr<float>();
    const float* b_data = b_contiguous.defined() ? b_contiguous.data_ptr<float>() : nullptr;
    float* y_data = y.data_ptr<float>();
    at::parallel_for(0, units, kDotMinUnitsPerTask, [&](int64_t first, int64_t last) {
      const int64_t begin = first * kDotColumnUnit, end = std::min(out_features, last * kDotColumnUnit);
      DotLinearArgs args;
      args.x = x_data;
      args.x_stride = depth;
      args.w = w_data + begin * depth;
      args.w_stride = depth;
      args.bias = b_data != nullptr ? b_data + begin : nullptr;
      args.y = y_data + begin;
      args.y_stride = out_features;
      args.rows = rows;
      args.cols = end - begin;
      args.depth = depth;
      dot_linear(args);
    });
    return y;
  }
  const int64_t blocks = (out_features + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    c10::InferenceMode mode(inference);
    for (int64_t i = first; i < last; ++i) {
      const int64_t begin = i * kColumnBlock, len = std::min(kColumnBlock, out_features - begin);
      at::Tensor columns = y.narrow(1, begin, len);
      at::Tensor w = w_contiguous.narrow(0, begin, len).t();
      if (b_contiguous.defined()) {
        at::addmm_out(columns, b_contiguous.narrow(0, begin, len), input, w);
      } else {
        at::mm_out(columns, input, w);
      }
    }
  });
  return y;
}

at::Tensor column_blocked_linear(const Linear& linear, const at::Tensor& x) {
  const at::Tensor& weight = linear.weight();
  const bool dense = !linear.frozen_weight() && weight.defined() && (!linear.lora() || linear.lora()->merged);
  if (!dense || x.dim() != 2 || !x.device().is_cpu() || !weight.device().is_cpu() ||
      x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat ||
      (linear.bias().defined() && linear.bias().scalar_type() != at::kFloat)) {
    return linear.forward(x);
  }
  TORCH_CHECK(x.size(1) == weight.size(1), "linear: input has ", x.size(1), " features, the weight ", weight.size(1));
  return column_blocked_mm(x, weight, linear.bias());
}

}  // namespace cairn::detail
