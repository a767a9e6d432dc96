// The engine's projection kernel (model/detail/dot_linear.h) and the column-blocked split over it
// (detail/engine_linear.h): close to at::mm, and every row bit for bit the same whatever the other
// rows, the row count, the column range and the thread count (what keeps batched greedy output
// identical to single-request output).
#include "model/detail/dot_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/detail/engine_linear.h"

namespace cairn::detail {
namespace {

using Kernel = void (*)(const DotLinearArgs&);

// y = x w^T (+ bias) through `kernel` (dot_linear or its portable path) on contiguous tensors, for
// rows [first, last) and columns [col_begin, col_end).
at::Tensor dot(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t first, int64_t last,
               int64_t col_begin, int64_t col_end, Kernel kernel = dot_linear) {
  at::Tensor y = at::full({last - first, col_end - col_begin}, std::nanf(""));
  DotLinearArgs a;
  a.x = x.data_ptr<float>() + first * x.size(1);
  a.x_stride = x.size(1);
  a.w = w.data_ptr<float>() + col_begin * w.size(1);
  a.w_stride = w.size(1);
  a.bias = bias.defined() ? bias.data_ptr<float>() + col_begin : nullptr;
  a.y = y.data_ptr<float>();
  a.y_stride = y.size(1);
  a.rows = last - first;
  a.cols = col_end - col_begin;
  a.depth = x.size(1);
  kernel(a);
  return y;
}

at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  at::Tensor y = at::mm(xd, wd.t());
  if (bias.defined()) y += bias.to(at::kDouble);
  return y.to(at::kFloat);
}

// Depths around the 8-wide steps (tails of every length) and the model's; row and column counts
// around the 4 x 3 tiles.
void expect_matches_matmul(Kernel kernel) {
  at::manual_seed(1);
  for (int64_t depth : {1, 7, 8, 9, 13, 64, 100, 512, 1376}) {
    for (int64_t rows : {1, 2, 3, 4, 5, 9, 33}) {
      for (int64_t cols : {1, 2, 3, 4, 7, 13}) {
        for (bool with_bias : {false, true}) {
          const at::Tensor x = at::randn({rows, depth}), w = at::randn({cols, depth});
          const at::Tensor bias = with_bias ? at::randn({cols}) : at::Tensor();
          const at::Tensor y = dot(x, w, bias, 0, rows, 0, cols, kernel);
          EXPECT_TRUE(at::allclose(y, reference(x, w, bias), 1e-4, 1e-4 * std::sqrt(static_cast<double>(depth))))
              << "depth " << depth << " rows " << rows << " cols " << cols << " bias " << with_bias;
        }
      }
    }
  }
}

TEST(DotLinear, MatchesMatmulOnEveryTileAndTail) { expect_matches_matmul(dot_linear); }
TEST(DotLinear, PortablePathMatchesMatmul) { expect_matches_matmul(dot_linear_portable); }

void expect_independent_rows_and_columns(Kernel kernel) {
  at::manual_seed(2);
  for (int64_t depth : {13, 512, 1376}) {
    auto dot = [kernel](const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t first,
                        int64_t last, int64_t col_begin, int64_t col_end) {
      return detail::dot(x, w, bias, first, last, col_begin, col_end, kernel);
    };
    const int64_t rows = 11, cols = 14;
    const at::Tensor x = at::randn({rows, depth}), w = at::randn({cols, depth}), bias = at::randn({cols});
    const at::Tensor all = dot(x, w, bias, 0, rows, 0, cols);
    for (int64_t m = 0; m < rows; ++m) {
      EXPECT_TRUE(at::equal(dot(x, w, bias, m, m + 1, 0, cols), all.narrow(0, m, 1))) << "row " << m;
    }
    // Every split of the rows and columns, so each element falls in a different tile or edge.
    for (int64_t split = 1; split < rows; ++split) {
      at::Tensor parts = at::cat({dot(x, w, bias, 0, split, 0, cols), dot(x, w, bias, split, rows, 0, cols)}, 0);
      EXPECT_TRUE(at::equal(parts, all)) << "rows split at " << split;
    }
    for (int64_t split = 1; split < cols; ++split) {
      at::Tensor parts = at::cat({dot(x, w, bias, 0, rows, 0, split), dot(x, w, bias, 0, rows, split, cols)}, 1);
      EXPECT_TRUE(at::equal(parts, all)) << "columns split at " << split;
    }
  }
}

TEST(DotLinear, RowsAndColumnsAreIndependentOfTheRestBitwise) { expect_independent_rows_and_columns(dot_linear); }
TEST(DotLinear, PortablePathRowsAndColumnsAreIndependentBitwise) {
  expect_independent_rows_and_columns(dot_linear_portable);
}

// The production path: the model's shapes, rows one at a time vs all together (as one request vs a
// batch), at 1 and 2 ATen threads; and close to at::mm / the BLAS blocks.
TEST(DotLinear, ColumnBlockedRowsIndependentOfRowCountAndThreads) {
  at::manual_seed(3);
  const int threads = at::get_num_threads();
  for (auto [out, in] : std::vector<std::pair<int64_t, int64_t>>{{512, 512}, {1376, 512}, {512, 1376}, {601, 37}, {5, 9}}) {
    const at::Tensor x = at::randn({37, in}), w = at::randn({out, in}) * 0.05, bias = at::randn({out});
    at::set_num_threads(2);
    const at::Tensor all = column_blocked_mm(x, w, bias);
    EXPECT_TRUE(at::allclose(all, column_blocked_mm(x, w, bias, ProjectionKernel::kBlas), 1e-4, 1e-4));
    EXPECT_TRUE(at::allclose(column_blocked_mm(x, w, {}), at::mm(x, w.t()), 1e-4, 1e-4));
    at::set_num_threads(1);
    EXPECT_TRUE(at::equal(column_blocked_mm(x, w, bias), all)) << out << " x " << in;
    for (int64_t m : {0, 5, 36}) {
      EXPECT_TRUE(at::equal(column_blocked_mm(x.narrow(0, m, 1), w, bias), all.narrow(0, m, 1)))
          << out << " x " << in << " row " << m;
    }
    EXPECT_TRUE(at::equal(column_blocked_mm(x.narrow(0, 3, 8), w, bias), all.narrow(0, 3, 8)));
  }
  at::set_num_threads(threads);
}

}  // namespace
}  // namespace cairn::detail
