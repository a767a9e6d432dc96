// The engine's projections (and generate()'s cached path) split over the ATen threads by output
// features, computed by our own kernel (detail/dot_linear.h) rather than BLAS: OpenBLAS packs the
// weight on every call, which a decode step of a few dozen rows cannot amortise.
// Internal to model/ (libtorch); compiled with -fopenmp (model/engine.cmake) so at::parallel_for
// splits the work.
#pragma once

#include <ATen/ATen.h>

#include "model/linear.h"

namespace cairn::detail {

// Output features per block of column_blocked_mm with ProjectionKernel::kBlas.
constexpr int64_t kColumnBlock = 256;

// What computes each block of column_blocked_mm.
enum class ProjectionKernel {
  kDot,   // detail/dot_linear.h: reads the weight in place, rows independent of the row count
  kBlas,  // at::addmm / at::mm (OpenBLAS packs the weight slice on every call); the reference
};

// y = x weight^T (+ bias) for float32 CPU tensors x [rows, in], weight [out, in], bias [out] or
// undefined, the output features split over the ATen threads. kDot: an even split (no element
// depends on the columns a thread computes, nor on the number of rows). kBlas: blocks of
// kColumnBlock features, one BLAS call each on its own slice of the weight (the blocks depend on
// the shapes only, so no element depends on the thread count).
at::Tensor column_blocked_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             ProjectionKernel kernel = ProjectionKernel::kDot);

// linear.forward(x) for x [rows, in]. A dense float32 CPU layer without an unmerged adapter goes
// through column_blocked_mm (kDot), so a row's result does not depend on the rows batched with it;
// other layers take linear.forward.
at::Tensor column_blocked_linear(const Linear& linear, const at::Tensor& x);

}  // namespace cairn::detail
