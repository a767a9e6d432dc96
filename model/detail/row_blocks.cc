#include "model/detail/row_blocks.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
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

// Rows per block of the row-wise operations (a block's rows are computed one by one, so any
// split gives the same bits; the size only bounds the scheduling overhead). Also the block of the
// RMSNorm weight gradient's partial sums, whose split must stay fixed.
constexpr int64_t kRowwiseBlock = 64;

struct RopeRows : torch::autograd::Function<RopeRows> {
  // out[i] = x[i] c[i] - x[i + half] s[i] (i < half), x[i] c[i] + x[i - half] s[i] (i >= half).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    at::Tensor out = at::empty(x.sizes(), x.options());
    rotate(out, x.contiguous(), cos, sin, /*transpose=*/false);
    ctx->save_for_backward({cos, sin});
    return out;
  }

  // The transpose: grad[i] = g[i] c[i] + g[i + half] s[i + half] (i < half),
  // g[i] c[i] - g[i - half] s[i - half] (i >= half).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    at::Tensor grad = grad_outputs[0].contiguous();
    at::Tensor grad_x = at::empty(grad.sizes(), grad.options());
    rotate(grad_x, grad, saved[0], saved[1], /*transpose=*/true);
    return {grad_x, at::Tensor(), at::Tensor()};
  }

  static void rotate(at::Tensor& out, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     bool transpose) {
    const int64_t positions = x.size(0) * x.size(1), heads = x.size(2), dim = x.size(3), half = dim / 2;
    const float* xs = x.data_ptr<float>();
    const float* cs = cos.data_ptr<float>();
    const float* ss = sin.data_ptr<float>();
    float* os = out.data_ptr<float>();
    for_each_block(positions, kRowwiseBlock, [&](int64_t begin, int64_t len) {
      for (int64_t p = begin; p < begin + len; ++p) {
        const float* c = cs + p * dim;
        const float* s = ss + p * dim;
        for (int64_t h = 0; h < heads; ++h) {
          const float* in = xs + (p * heads + h) * dim;
          float* o = os + (p * heads + h) * dim;
          if (transpose) {
            for (int64_t i = 0; i < half; ++i) o[i] = in[i] * c[i] + in[i + half] * s[i + half];
            for (int64_t i = half; i < dim; ++i) o[i] = in[i] * c[i] - in[i - half] * s[i - half];
          } else {
            for (int64_t i = 0; i < half; ++i) o[i] = in[i] * c[i] - in[i + half] * s[i];
            for (int64_t i = half; i < dim; ++i) o[i] = in[i] * c[i] + in[i - half] * s[i];
          }
        }
      }
    });
  }
};

struct RmsNormRows : torch::autograd::Function<RmsNormRows> {
  // y = w * (x * r), r = 1 / sqrt(sum(x^2) / n + eps) per row.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight, double eps) {
    at::Tensor x = x_in.contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    at::Tensor out = at::empty(x.sizes(), x.options());
    at::Tensor inv = at::empty({rows}, x.options());  // r per row, for backward
    const float* xs = x.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    float* ys = out.data_ptr<float>();
    float* rs = inv.data_ptr<float>();
    for_each_block(rows, kRowwiseBlock, [&](int64_t begin, int64_t len) {
      for (int64_t row = begin; row < begin + len; ++row) {
        const float* xr = xs + row * n;
        float* yr = ys + row * n;
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(xr[j]) * xr[j];
        const float r = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(n) + eps));
        rs[row] = r;
        for (int64_t j = 0; j < n; ++j) yr[j] = w[j] * (xr[j] * r);
      }
    });
    ctx->save_for_backward({x, weight, inv});
    return out;
  }

  // grad_x = r (g w) - x r^3 sum(g w x) / n; grad_w = sum over rows of g x r.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& inv = saved[2];
    at::Tensor grad = grad_outputs[0].contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    const bool x_grad = ctx->needs_input_grad(0), weight_grad = ctx->needs_input_grad(1);
    at::Tensor grad_x = x_grad ? at::empty(x.sizes(), x.options()) : at::Tensor();
    const int64_t blocks = (rows + kRowwiseBlock - 1) / kRowwiseBlock;
    // One partial sum of the weight gradient per block of rows, summed in block order below.
    at::Tensor partial = weight_grad ? at::empty({blocks, n}, at::TensorOptions().dtype(at::kDouble)) : at::Tensor();
    const float* xs = x.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* rs = inv.data_ptr<float>();
    const float* gs = grad.data_ptr<float>();
    float* dx = x_grad ? grad_x.data_ptr<float>() : nullptr;
    double* parts = weight_grad ? partial.data_ptr<double>() : nullptr;
    for_each_block(rows, kRowwiseBlock, [&](int64_t begin, int64_t len) {
      double* part = parts ? parts + (begin / kRowwiseBlock) * n : nullptr;
      if (part) std::fill(part, part + n, 0.0);
      for (int64_t row = begin; row < begin + len; ++row) {
        const float* xr = xs + row * n;
        const float* gr = gs + row * n;
        const float r = rs[row];
        if (part) {
          for (int64_t j = 0; j < n; ++j) part[j] += static_cast<double>(gr[j]) * (xr[j] * r);
        }
        if (dx) {
          double dot = 0;
          for (int64_t j = 0; j < n; ++j) dot += static_cast<double>(gr[j]) * w[j] * xr[j];
          const float k = static_cast<float>(static_cast<double>(r) * r * r * dot / static_cast<double>(n));
          float* out = dx + row * n;
          for (int64_t j = 0; j < n; ++j) out[j] = r * (gr[j] * w[j]) - xr[j] * k;
        }
      }
    });
    at::Tensor grad_weight;
    if (weight_grad) {
      at::Tensor total = at::zeros({n}, at::TensorOptions().dtype(at::kDouble));
      double* t = total.data_ptr<double>();
      for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t j = 0; j < n; ++j) t[j] += parts[b * n + j];
      }
      grad_weight = total.to(weight.scalar_type());
    }
    return {grad_x, grad_weight, at::Tensor()};
  }
};

struct AttentionRows : torch::autograd::Function<AttentionRows> {
  // The [length, head_dim] matrix of head h at batch b of x [batch, length, heads, head_dim]
  // (rows strided by heads * head_dim; BLAS takes the leading dimension, so nothing is copied).
  static at::Tensor head(const at::Tensor& x, int64_t b, int64_t h) { return x.select(0, b).select(1, h); }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in, const c10::optional<at::Tensor>& blocked, double scale) {
    at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), head_dim = q.size(3);
    const int64_t kv_heads = k.size(2), group = heads / kv_heads;
    at::Tensor probs = at::empty({batch, heads, length, length}, q.options());
    at::Tensor out = at::empty({batch, length, heads * head_dim}, q.options());
    at::Tensor out_heads = out.view({batch, length, heads, head_dim});
    const float lowest = std::numeric_limits<float>::lowest();
    for_each_block(batch * heads, 1, [&](int64_t item, int64_t) {
      const int64_t b = item / heads, h = item % heads;
      at::Tensor scores = at::mm(head(q, b, h), head(k, b, h / group).t());
      scores.mul_(scale);
      if (blocked) scores.masked_fill_(blocked->select(0, blocked->size(0) == 1 ? 0 : b), lowest);
      at::Tensor p = probs.select(0, b).select(0, h);
      at::_softmax_out(p, scores, -1, false);
      at::Tensor o = head(out_heads, b, h);
      at::mm_out(o, p, head(v, b, h / group));
    });
    ctx->save_for_backward({q, k, v, probs});
    if (blocked) ctx->saved_data["blocked"] = *blocked;
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& q = saved[0];
    const at::Tensor& k = saved[1];
    const at::Tensor& v = saved[2];
    const at::Tensor& probs = saved[3];
    const bool masked = ctx->saved_data.count("blocked") != 0;
    const at::Tensor blocked = masked ? ctx->saved_data["blocked"].toTensor() : at::Tensor();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), head_dim = q.size(3);
    const int64_t kv_heads = k.size(2), group = heads / kv_heads;
    at::Tensor grad = grad_outputs[0].contiguous().view({batch, length, heads, head_dim});
    at::Tensor grad_q = at::empty(q.sizes(), q.options());
    at::Tensor grad_k = at::empty(k.sizes(), k.options());
    at::Tensor grad_v = at::empty(v.sizes(), v.options());
    // One item per (batch, kv head): its query heads add into the kv head's gradients in order.
    for_each_block(batch * kv_heads, 1, [&](int64_t item, int64_t) {
      const int64_t b = item / kv_heads, kv = item % kv_heads;
      at::Tensor k_bh = head(k, b, kv), v_bh = head(v, b, kv);
      at::Tensor grad_k_bh = head(grad_k, b, kv), grad_v_bh = head(grad_v, b, kv);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        at::Tensor g = head(grad, b, h), p = probs.select(0, b).select(0, h);
        at::Tensor grad_scores = at::_softmax_backward_data(at::mm(g, v_bh.t()), p, -1, at::kFloat);
        if (masked) grad_scores.masked_fill_(blocked.select(0, blocked.size(0) == 1 ? 0 : b), 0.0);
        grad_scores.mul_(scale);
        at::Tensor grad_q_bh = head(grad_q, b, h);
        at::mm_out(grad_q_bh, grad_scores, k_bh);
        if (h == kv * group) {
          at::mm_out(grad_k_bh, grad_scores.t(), head(q, b, h));
          at::mm_out(grad_v_bh, p.t(), g);
        } else {
          grad_k_bh.addmm_(grad_scores.t(), head(q, b, h));
          grad_v_bh.addmm_(p.t(), g);
        }
      }
    });
    return {grad_q, grad_k, grad_v, at::Tensor(), at::Tensor()};
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

at::Tensor rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.size(3) % 2 == 0,
              "rope_rows: x must be a float32 CPU [batch, length, heads, head_dim] tensor");
  const std::vector<int64_t> table = {x.size(0), x.size(1), 1, x.size(3)};
  TORCH_CHECK(cos.sizes() == at::IntArrayRef(table) && sin.sizes() == at::IntArrayRef(table) &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "rope_rows: cos and sin must be float32 [batch, length, 1, head_dim]");
  return RopeRows::apply(x, cos.contiguous(), sin.contiguous());
}

at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.device().is_cpu() &&
                  weight.dim() == 1 && x.size(-1) == weight.size(0),
              "rms_norm_rows: x must be float32 on the CPU with a float32 weight of its last dimension");
  return RmsNormRows::apply(x, weight.contiguous(), eps);
}

at::Tensor attention_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& blocked,
                          double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.scalar_type() == at::kFloat &&
                  k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && q.device().is_cpu() &&
                  k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  q.size(2) % k.size(2) == 0,
              "attention_rows: q [batch, length, heads, head_dim] and k, v [batch, length, kv_heads, head_dim] "
              "float32 CPU tensors expected");
  if (!blocked.defined()) return AttentionRows::apply(q, k, v, c10::nullopt, scale);
  TORCH_CHECK(blocked.dim() == 3 && (blocked.size(0) == 1 || blocked.size(0) == q.size(0)) &&
                  blocked.size(1) == q.size(1) && blocked.size(2) == q.size(1) && blocked.scalar_type() == at::kBool,
              "attention_rows: blocked must be bool [batch or 1, length, length]");
  return AttentionRows::apply(q, k, v, c10::optional<at::Tensor>(blocked), scale);
}

}  // namespace cairn::detail
