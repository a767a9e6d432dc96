#include "model/detail/dot_linear.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cairn::detail {
namespace {

// Tiles are kTileRows rows of x by kTileCols rows of w. The weight is walked in tiles of
// kTileCols rows (a few KiB, kept in L1) with the rows of x inner, over chunks of x rows sized
// to stay in L2 (kRowChunkBytes). The loop order never changes an element's arithmetic.
constexpr int kTileRows = 4;
constexpr int kTileCols = 3;
constexpr int64_t kRowChunkBytes = 256 * 1024;

int64_t row_chunk(int64_t depth) {
  const int64_t rows = kRowChunkBytes / (4 * std::max<int64_t>(depth, 1));
  return std::max<int64_t>(kTileRows, rows / kTileRows * kTileRows);
}

// Plain C++: eight lane sums over the inputs in steps of 8 (as the AVX2 path's lanes), combined
// in a fixed order, then the bias. Used for every element alike.
float dot_generic(const float* x, const float* w, int64_t depth) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= depth; k += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += x[k + l] * w[k + l];
  }
  for (int l = 0; k + l < depth; ++l) lanes[l] += x[k + l] * w[k + l];
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

void linear_generic(const DotLinearArgs& a) {
  for (int64_t m = 0; m < a.rows; ++m) {
    for (int64_t n = 0; n < a.cols; ++n) {
      float s = dot_generic(a.x + m * a.x_stride, a.w + n * a.w_stride, a.depth);
      if (a.bias != nullptr) s += a.bias[n];
      a.y[m * a.y_stride + n] = s;
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One R x C tile (R <= kTileRows, C <= kTileCols): every element gets its own 8-lane accumulator,
// FMA over full steps of 8 inputs, then the tail (depth % 8 inputs) as one masked step with zeros
// beyond it, then horizontal_sum, then the bias.
template <int R, int C>
__attribute__((target("avx2,fma"))) void tile_avx2(const DotLinearArgs& a, int64_t m, int64_t n, __m256i tail_mask) {
  const float* x = a.x + m * a.x_stride;
  const float* w = a.w + n * a.w_stride;
  __m256 acc[R][C];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  const int64_t depth = a.depth;
  int64_t k = 0;
  for (; k + 8 <= depth; k += 8) {
    __m256 wv[C];
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) wv[j] = _mm256_loadu_ps(w + j * a.w_stride + k);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * a.x_stride + k);
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < depth) {
    __m256 wv[C];
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) wv[j] = _mm256_maskload_ps(w + j * a.w_stride + k, tail_mask);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m256 xv = _mm256_maskload_ps(x + i * a.x_stride + k, tail_mask);
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    float* y = a.y + (m + i) * a.y_stride + n;
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) {
      float s = horizontal_sum(acc[i][j]);
      if (a.bias != nullptr) s += a.bias[n + j];
      y[j] = s;
    }
  }
}

// The tiles of one column tile of C weight rows, for rows [first, last) of x.
template <int C>
__attribute__((target("avx2,fma"))) void column_tile_avx2(const DotLinearArgs& a, int64_t first, int64_t last,
                                                          int64_t n, __m256i tail_mask) {
  int64_t m = first;
  for (; m + kTileRows <= last; m += kTileRows) tile_avx2<kTileRows, C>(a, m, n, tail_mask);
  switch (last - m) {
    case 3: tile_avx2<3, C>(a, m, n, tail_mask); break;
    case 2: tile_avx2<2, C>(a, m, n, tail_mask); break;
    case 1: tile_avx2<1, C>(a, m, n, tail_mask); break;
    default: break;
  }
}

__attribute__((target("avx2,fma"))) void linear_avx2(const DotLinearArgs& a) {
  const int tail = static_cast<int>(a.depth % 8);
  alignas(32) int32_t mask[8];
  for (int l = 0; l < 8; ++l) mask[l] = l < tail ? -1 : 0;
  const __m256i tail_mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(mask));
  const int64_t chunk = row_chunk(a.depth);
  for (int64_t first = 0; first < a.rows; first += chunk) {
    const int64_t last = std::min(a.rows, first + chunk);
    int64_t n = 0;
    for (; n + kTileCols <= a.cols; n += kTileCols) column_tile_avx2<kTileCols>(a, first, last, n, tail_mask);
    switch (a.cols - n) {
      case 3: column_tile_avx2<3>(a, first, last, n, tail_mask); break;
      case 2: column_tile_avx2<2>(a, first, last, n, tail_mask); break;
      case 1: column_tile_avx2<1>(a, first, last, n, tail_mask); break;
      default: break;
    }
  }
}
#endif

}  // namespace

bool dot_linear_uses_avx2() {
#if defined(__x86_64__)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

void dot_linear_portable(const DotLinearArgs& args) {
  if (args.rows <= 0 || args.cols <= 0) return;
  linear_generic(args);
}

void dot_linear(const DotLinearArgs& args) {
  if (args.rows <= 0 || args.cols <= 0) return;
#if defined(__x86_64__)
  if (dot_linear_uses_avx2()) {
    linear_avx2(args);
    return;
  }
#endif
  linear_generic(args);
}

}  // namespace cairn::detail
