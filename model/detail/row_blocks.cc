#include "model/detail/row_blocks.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace cairn::detail {
namespace {

// Rows of grad_W per block in blocked_linear's backward: a weight has few rows (256 to 768 in
// the small models), so smaller blocks than kBlockRows keep both threads busy.
constexpr int64_t kWeightGradRows = 64;

// f(begin, len) for the consecutive blocks of `block` items covering [0, size), the blocks
// shared by the ATen threads.
template <class F>
void for_each_block(int64_t size, int64_t block, const F& f) {
  const int64_t blocks = (size + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    at::NoGradGuard no_grad;  // grad mode is per thread; the worker threads' is on
    for (int64_t i = first; i < last; ++i) {
      const int64_t begin = i * block;
      f(begin, std::min(block, size - begin));
    }
  });
}

// out = a.t() @ b, split over the rows of out (the columns of a) in `block`-row blocks.
void mm_t_rows(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t block) {
  for_each_block(out.size(0), block, [&](int64_t begin, int64_t len) {
    at::Tensor rows = out.narrow(0, begin, len);
    at::mm_out(rows, a.narrow(1, begin, len).t(), b);
  });
}

// out[i] = a[i] @ b[i] for the items i of a [items, m, k] and b [items, k, n], one bmm per item.
void bmm_items(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  for_each_block(out.size(0), 1, [&](int64_t begin, int64_t len) {
    at::Tensor items = out.narrow(0, begin, len);
    at::bmm_out(items, a.narrow(0, begin, len), b.narrow(0, begin, len));
  });
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BlockedLinear : torch::autograd::Function<BlockedLinear> {
  // bias is optional: an undefined tensor argument would count as an autograd input.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
    const int64_t in = weight.size(1), out = weight.size(0);
    TORCH_CHECK(x.size(-1) == in, "linear: input has ", x.size(-1), " features, the weight ", in);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = out;
    // The output is the tensor made here, not a view of it, so callers may modify it in place.
    at::Tensor y = at::empty(shape, x.options());
    at::Tensor rows = y.view({-1, out});
    mm_rows(rows, x.reshape({-1, in}), weight.t());
    if (bias) rows.add_(*bias);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["bias"] = bias.has_value();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const int64_t in = weight.size(1), out = weight.size(0);
    at::Tensor grad = grad_outputs[0].reshape({-1, out}).contiguous();
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_x = at::empty(x.sizes(), grad.options());
      at::Tensor rows = grad_x.view({-1, in});
      mm_rows(rows, grad, weight);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = at::empty({out, in}, grad.options());
      mm_t_rows(grad_weight, grad, x.reshape({-1, in}), kWeightGradRows);
    }
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) grad_bias = grad.sum(0);
    return {grad_x, grad_weight, grad_bias};
  }
};

struct BlockedMatmul : torch::autograd::Function<BlockedMatmul> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
    std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end());
    shape.back() = n;
    at::Tensor out = at::empty(shape, a.options());  // returned whole, not as a view
    at::Tensor items = out.view({-1, m, n});
    bmm_items(items, a.reshape({-1, m, k}), b.reshape({-1, k, n}));
    ctx->save_for_backward({a, b});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& a = saved[0];
    const at::Tensor& b = saved[1];
    const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
    at::Tensor grad = grad_outputs[0].reshape({-1, m, n});
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) {  // grad @ b^T
      grad_a = at::empty(a.sizes(), grad.options());
      at::Tensor items = grad_a.view({-1, m, k});
      bmm_items(items, grad, b.reshape({-1, k, n}).transpose(1, 2));
    }
    if (ctx->needs_input_grad(1)) {  // a^T @ grad
      grad_b = at::empty(b.sizes(), grad.options());
      at::Tensor items = grad_b.view({-1, k, n});
      bmm_items(items, a.reshape({-1, m, k}).transpose(1, 2), grad);
    }
    return {grad_a, grad_b};
  }
};

}  // namespace

void mm_rows(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!a.device().is_cpu() || a.size(0) <= kBlockRows) {
    at::mm_out(out, a, b);
    return;
  }
  for_each_block(a.size(0), kBlockRows, [&](int64_t begin, int64_t len) {
    at::Tensor rows = out.narrow(0, begin, len);
    at::mm_out(rows, a.narrow(0, begin, len), b);
  });
}

void add_mm_t_rows(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (!acc.device().is_cpu() || acc.size(0) <= kBlockRows) {
    acc.addmm_(a.t(), b);
    return;
  }
  for_each_block(acc.size(0), kBlockRows, [&](int64_t begin, int64_t len) {
    acc.narrow(0, begin, len).addmm_(a.narrow(1, begin, len).t(), b);
  });
}

at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return BlockedLinear::apply(x, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
}

at::Tensor blocked_matmul(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() >= 3 && a.dim() == b.dim() && a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) &&
                  a.size(-1) == b.size(-2),
              "blocked_matmul: shapes do not match");
  return BlockedMatmul::apply(a, b);
}

}  // namespace cairn::detail
