// The engine's projection kernel (model/detail/dot_linear.h, no weight packing) against the
// OpenBLAS path it replaced, on the serve_bench model's shapes (hidden 512, MLP 1376, vocab 8192):
// column_blocked_mm with ProjectionKernel::kDot vs kBlas (the same fixed 256-feature column blocks
// over the ATen threads) at 1 and 2 threads, and plain at::mm at 1 thread. Rows M are the tokens of
// a step: 1 to 64 in decode, 256 a prefill chunk.
//
//   dot_linear_bench [--no-results] [--memory-only]
//
// Appends a section to bench/RESULTS.md unless --no-results; --memory-only runs only the table with
// weights from memory. Run with OPENBLAS_NUM_THREADS=1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_support.h"
#include "model/detail/dot_linear.h"
#include "model/detail/engine_linear.h"

namespace cairn::bench {
namespace {

// Median seconds per call over 5 rounds, each round repeating `f` for >= 20 ms.
double seconds_per_call(const std::function<void()>& f) {
  using Clock = std::chrono::steady_clock;
  f();
  int64_t reps = 1;
  for (;;) {
    const auto start = Clock::now();
    for (int64_t r = 0; r < reps; ++r) f();
    if (Clock::now() - start >= std::chrono::milliseconds(20)) break;
    reps *= 2;
  }
  std::vector<double> rounds;
  for (int round = 0; round < 5; ++round) {
    const auto start = Clock::now();
    for (int64_t r = 0; r < reps; ++r) f();
    rounds.push_back(std::chrono::duration<double>(Clock::now() - start).count() / static_cast<double>(reps));
  }
  std::sort(rounds.begin(), rounds.end());
  return rounds[2];
}

double gflops(int64_t m, int64_t n, int64_t k, double seconds) { return 2.0 * m * n * k / seconds / 1e9; }

int run(int argc, char** argv) {
  bool results = true, warm = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-results") == 0) {
      results = false;
    } else if (std::strcmp(argv[i], "--memory-only") == 0) {
      warm = false;
    } else {
      die(std::string("usage: dot_linear_bench [--no-results] [--memory-only]; got ") + argv[i]);
    }
  }
  at::InferenceMode inference;
  const MachineInfo machine = describe_machine();
  std::ostringstream table;
  table << "| N x K | M | threads | dot GFLOP/s | blocked BLAS GFLOP/s | dot / BLAS | at::mm GFLOP/s (1 thread) |\n"
        << "| --- | --- | --- | --- | --- | --- | --- |\n";
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{512, 512}, {1376, 512}, {512, 1376}, {8192, 512}};
  const std::vector<int64_t> row_counts = {1, 8, 32, 64, 256};
  at::manual_seed(0);
  for (const auto& [n, k] : warm ? shapes : std::vector<std::pair<int64_t, int64_t>>{}) {
    const at::Tensor w = at::randn({n, k}) * 0.05;
    for (int64_t m : row_counts) {
      const at::Tensor x = at::randn({m, k});
      for (int threads : {1, 2}) {
        at::set_num_threads(threads);
        const double dot = seconds_per_call([&] { detail::column_blocked_mm(x, w, {}, detail::ProjectionKernel::kDot); });
        const double blas =
            seconds_per_call([&] { detail::column_blocked_mm(x, w, {}, detail::ProjectionKernel::kBlas); });
        std::string mm = "";
        if (threads == 1) mm = fixed(gflops(m, n, k, seconds_per_call([&] { at::mm(x, w.t()); })), 1);
        std::ostringstream line;
        line << "| " << n << " x " << k << " | " << m << " | " << threads << " | " << fixed(gflops(m, n, k, dot), 1)
             << " | " << fixed(gflops(m, n, k, blas), 1) << " | " << fixed(blas / dot, 2) << " | " << mm << " |\n";
        std::fputs(line.str().c_str(), stdout);
        std::fflush(stdout);
        table << line.str();
      }
    }
  }
  // Weights from memory, as in the engine (8 layers of ~12 MiB plus the head do not fit the cache):
  // one call on each of 16 distinct [1376, 512] weights (45 MiB) per timed round.
  std::ostringstream cold;
  cold << "\nWeights from memory (one call on each of 16 distinct 1376 x 512 weights, 45 MiB, per round; 1 thread):\n\n"
       << "| M | dot GFLOP/s | blocked BLAS GFLOP/s | dot / BLAS |\n| --- | --- | --- | --- |\n";
  std::vector<at::Tensor> weights;
  for (int i = 0; i < 16; ++i) weights.push_back(at::randn({1376, 512}) * 0.05);
  at::set_num_threads(1);
  for (int64_t m : {1, 8, 32, 64}) {
    const at::Tensor x = at::randn({m, 512});
    auto all = [&](detail::ProjectionKernel kernel) {
      for (const at::Tensor& w : weights) detail::column_blocked_mm(x, w, {}, kernel);
    };
    const double dot = seconds_per_call([&] { all(detail::ProjectionKernel::kDot); });
    const double blas = seconds_per_call([&] { all(detail::ProjectionKernel::kBlas); });
    std::ostringstream line;
    line << "| " << m << " | " << fixed(gflops(16 * m, 1376, 512, dot), 1) << " | "
         << fixed(gflops(16 * m, 1376, 512, blas), 1) << " | " << fixed(blas / dot, 2) << " |\n";
    std::fputs(line.str().c_str(), stdout);
    std::fflush(stdout);
    cold << line.str();
  }
  table << cold.str();
  if (results) {
    std::ostringstream section;
    section << "\n## dot_linear_bench, " << machine.date_utc << "\n\n" << machine_summary(machine)
            << ". The engine's projection kernel (model/detail/dot_linear, AVX2+FMA "
            << (detail::dot_linear_uses_avx2() ? "in use" : "NOT in use: plain C++ fallback")
            << ", no weight packing) vs the OpenBLAS calls it replaced, both through column_blocked_mm's "
               "256-feature column blocks; GFLOP/s, median of 5 rounds.\n\n"
            << table.str();
    append_section(std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md", section.str());
  }
  return 0;
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) { return cairn::bench::run(argc, argv); }
