// A float32 projection kernel that reads the weight as it is stored (row-major [out, in]), with no
// packing: y[m, n] = dot(x[m, :], w[n, :]) (+ bias[n]). Torch-free; internal to model/.
//
// Determinism contract: every output element is computed with the same arithmetic whatever the
// number of rows, the column range, the register tile or edge it falls in, and the thread that
// computes it (lane-wise FMA accumulation over the inputs in steps of 8, the tail masked, a fixed
// horizontal sum, then the bias). So row m of y does not depend on the other rows: a batch of
// requests gets bit for bit the rows a single request gets. One process always uses one code path
// (AVX2+FMA where the CPU has it, else plain C++; the two differ in the last bits).
#pragma once

#include <cstdint>

namespace cairn::detail {

// One call: rows x cols outputs over `depth` inputs. Strides are in floats between rows.
struct DotLinearArgs {
  const float* x = nullptr;     // [rows, depth], row stride x_stride
  int64_t x_stride = 0;
  const float* w = nullptr;     // [cols, depth], row stride w_stride
  int64_t w_stride = 0;
  const float* bias = nullptr;  // [cols] or null
  float* y = nullptr;           // [rows, cols], row stride y_stride
  int64_t y_stride = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t depth = 0;
};

void dot_linear(const DotLinearArgs& args);

// The plain C++ path alone: what dot_linear runs where the CPU lacks AVX2 or FMA (for tests).
void dot_linear_portable(const DotLinearArgs& args);

// Whether dot_linear takes its AVX2+FMA path in this process.
bool dot_linear_uses_avx2();

}  // namespace cairn::detail
