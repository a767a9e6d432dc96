// The engine's projections split over the ATen threads by output features (CPU BLAS runs
// single-threaded here, OPENBLAS_NUM_THREADS=1, the ATen threads being the parallelism).
// Internal to model/ (libtorch); compiled with -fopenmp (model/engine.cmake) so at::parallel_for
// splits the work.
#pragma once

#include <ATen/ATen.h>

#include "model/linear.h"

namespace cairn::detail {

// Output features per block of column_blocked_linear.
constexpr int64_t kColumnBlock = 256;

// linear.forward(x) for x [rows, in]. A dense float32 CPU layer without an unmerged adapter is
// computed as blocks of kColumnBlock output features, one BLAS call each on its own slice of the
// weight (so each thread packs only the weight rows it uses), shared by the ATen threads. The
// blocks depend on the shapes only, never on the thread count. Other layers take linear.forward.
at::Tensor column_blocked_linear(const Linear& linear, const at::Tensor& x);

}  // namespace cairn::detail
