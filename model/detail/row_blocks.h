// Matrix products of the CPU training path split into fixed blocks that the ATen threads share.
//
// CPU BLAS runs single-threaded here (OPENBLAS_NUM_THREADS=1, the ATen threads being the
// parallelism), so a plain product uses one core. These helpers cut each product into blocks of
// rows (or of batch items) whose size depends on the shapes only, never on the thread count, and
// each block is one BLAS call: the results are the same bits whatever the number of threads.
// Compiled with -fopenmp (model/trainer.cmake): at::parallel_for only splits work in files built
// with OpenMP.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cairn::detail {

// Rows per block of mm_rows and add_mm_t_rows.
constexpr int64_t kBlockRows = 256;

// out = a @ b, split over the rows of a in kBlockRows blocks (out: contiguous [a.size(0),
// b.size(1)]). Non-CPU tensors, or a single block, take one mm.
void mm_rows(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// acc += a.t() @ b, split over the rows of acc (the columns of a) in kBlockRows blocks.
void add_mm_t_rows(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b);

// x W^T + bias as one autograd operation for x [..., in] and weight [out, in] (bias [out] or
// undefined) on the CPU: the forward product and, in backward, grad_x = grad_y W (both split over
// the rows of x) and grad_W = grad_y^T x (split over the rows of grad_W) are blocked products.
// Gradients flow to whichever of x, weight and bias require them.
at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// a @ b for a [..., m, k] and b [..., k, n] with the same leading dimensions, as one autograd
// operation whose forward and backward batched products are split over the leading dimensions'
// items (one BLAS call per item, as at::bmm makes on the CPU).
at::Tensor blocked_matmul(const at::Tensor& a, const at::Tensor& b);

// The row-wise operations below compute each row alone in one pass (forward and backward), where
// the ATen compositions they replace make several passes over the tensor; float32 CPU tensors
// only, for the training path (their bits differ from the compositions').

// Rotary embedding x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] for the halves of
// the last dimension, as one autograd operation for x [batch, length, heads, head_dim] and cos,
// sin [batch, length, 1, head_dim] (constants: no gradient).
at::Tensor rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// transformers' LlamaRMSNorm, weight * (x / sqrt(mean(x^2) + eps)), over the last dimension of x
// [..., n] with weight [n], as one autograd operation. The weight's gradient sums fixed blocks of
// rows in a fixed order, so it too is the same bits whatever the threads.
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps);

// Softmax attention as one autograd operation, computed one (batch, kv head) item at a time so
// each item's [length, length] scores stay in cache: q [batch, length, heads, head_dim], k and v
// [batch, length, kv_heads, head_dim] (float32, CPU), query head h using kv head
// h / (heads / kv_heads); scores q k^T * scale, set to the lowest float where `blocked` (bool
// [batch or 1, length, length], or undefined) is true, softmax over the keys, times v. Returns
// [batch, length, heads * head_dim]. Keeps the probabilities for backward, as at::matmul would.
at::Tensor attention_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& blocked,
                          double scale);

}  // namespace cairn::detail
