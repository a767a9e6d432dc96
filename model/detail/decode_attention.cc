#include "model/detail/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cairn::detail {
namespace {

// The key or value vector of position p of kv head `head`.
inline const float* row(const float* base, const DecodeAttentionShape& shape, const DecodeAttentionSequence& seq,
                        int64_t p, int64_t head) {
  const int64_t slot = seq.slots != nullptr ? seq.slots[p] : seq.first_slot + p;
  return base + slot * shape.slot_stride + head * shape.head_stride;
}

// scores[0, n) becomes its softmax (max-subtracted, float32).
void softmax_in_place(float* scores, int64_t n) {
  float max = scores[0];
  for (int64_t p = 1; p < n; ++p) max = std::max(max, scores[p]);
  float sum = 0.0f;
  for (int64_t p = 0; p < n; ++p) {
    scores[p] = std::exp(scores[p] - max);
    sum += scores[p];
  }
  const float inverse = 1.0f / sum;
  for (int64_t p = 0; p < n; ++p) scores[p] *= inverse;
}

// The work of one task: the query heads of kv heads [first_head, last_head) of one sequence.
// Positions are the outer loop, so the pool's slots (all kv heads of a position side by side) are
// read in address order; every (query head, position) score and every output element is computed
// the same way whatever the task's head range or the cache's layout. `scores` holds
// (last_head - first_head) * group * seq.total floats, `acc` (last_head - first_head) * group *
// head_dim.
struct Task {
  const DecodeAttentionShape& shape;
  const DecodeAttentionSequence& seq;
  int64_t first_head;
  int64_t last_head;
  float* scores;
  float* acc;
};

// Plain C++.
void attend_generic(const Task& t) {
  const DecodeAttentionShape& shape = t.shape;
  const DecodeAttentionSequence& seq = t.seq;
  const int64_t group = shape.heads / shape.kv_heads, dim = shape.head_dim, total = seq.total;
  const int64_t rows = (t.last_head - t.first_head) * group;
  const float* q0 = seq.query + t.first_head * group * dim;
  for (int64_t p = 0; p < total; ++p) {
    for (int64_t h = t.first_head; h < t.last_head; ++h) {
      const float* k = row(seq.keys, shape, seq, p, h);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = (h - t.first_head) * group + g;
        const float* q = q0 + r * dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < dim; ++d) dot += q[d] * k[d];
        t.scores[r * total + p] = dot * shape.scale;
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) softmax_in_place(t.scores + r * total, total);
  std::fill(t.acc, t.acc + rows * dim, 0.0f);
  for (int64_t p = 0; p < total; ++p) {
    for (int64_t h = t.first_head; h < t.last_head; ++h) {
      const float* v = row(seq.values, shape, seq, p, h);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = (h - t.first_head) * group + g;
        const float w = t.scores[r * total + p];
        float* acc = t.acc + r * dim;
        for (int64_t d = 0; d < dim; ++d) acc[d] += w * v[d];
      }
    }
  }
  std::copy(t.acc, t.acc + rows * dim, seq.out + t.first_head * group * dim);
}

#if defined(__x86_64__)
// As attend_generic with AVX2 and FMA, for head_dim a multiple of 8.
__attribute__((target("avx2,fma"))) void attend_avx2(const Task& t) {
  const DecodeAttentionShape& shape = t.shape;
  const DecodeAttentionSequence& seq = t.seq;
  const int64_t group = shape.heads / shape.kv_heads, dim = shape.head_dim, total = seq.total;
  const int64_t rows = (t.last_head - t.first_head) * group;
  const float* q0 = seq.query + t.first_head * group * dim;
  for (int64_t p = 0; p < total; ++p) {
    for (int64_t h = t.first_head; h < t.last_head; ++h) {
      const float* k = row(seq.keys, shape, seq, p, h);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = (h - t.first_head) * group + g;
        const float* q = q0 + r * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 16 <= dim; d += 16) {
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), _mm256_loadu_ps(k + d + 8), a1);
        }
        if (d < dim) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a0);
        const __m256 a = _mm256_add_ps(a0, a1);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        t.scores[r * total + p] = _mm_cvtss_f32(s) * shape.scale;
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) softmax_in_place(t.scores + r * total, total);
  std::fill(t.acc, t.acc + rows * dim, 0.0f);
  for (int64_t p = 0; p < total; ++p) {
    for (int64_t h = t.first_head; h < t.last_head; ++h) {
      const float* v = row(seq.values, shape, seq, p, h);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = (h - t.first_head) * group + g;
        const __m256 w = _mm256_set1_ps(t.scores[r * total + p]);
        float* acc = t.acc + r * dim;
        for (int64_t d = 0; d < dim; d += 8) {
          _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + d), _mm256_loadu_ps(acc + d)));
        }
      }
    }
  }
  std::copy(t.acc, t.acc + rows * dim, seq.out + t.first_head * group * dim);
}

bool use_avx2(int64_t dim) {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && dim % 8 == 0;
}
#endif

}  // namespace

void decode_attention(const DecodeAttentionShape& shape, const std::vector<DecodeAttentionSequence>& sequences) {
  if (sequences.empty()) return;
  int64_t longest = 0;
  for (const DecodeAttentionSequence& seq : sequences) longest = std::max(longest, seq.total);
  // Whole sequences per task when there are enough to share, else one kv head per task. The
  // split changes only who computes what, never a result.
  const int64_t count = static_cast<int64_t>(sequences.size());
  const int64_t heads_per_task = count >= 2 * at::get_num_threads() ? shape.kv_heads : 1;
  const int64_t tasks_per_sequence = shape.kv_heads / heads_per_task;
  const int64_t group = shape.heads / shape.kv_heads;
#if defined(__x86_64__)
  const bool avx2 = use_avx2(shape.head_dim);
#endif
  at::parallel_for(0, count * tasks_per_sequence, 1, [&](int64_t first, int64_t last) {
    std::vector<float> scores(static_cast<size_t>(heads_per_task * group * longest));
    std::vector<float> acc(static_cast<size_t>(heads_per_task * group * shape.head_dim));
    for (int64_t i = first; i < last; ++i) {
      const int64_t head = (i % tasks_per_sequence) * heads_per_task;
      const Task task{shape, sequences[static_cast<size_t>(i / tasks_per_sequence)], head, head + heads_per_task,
                      scores.data(), acc.data()};
#if defined(__x86_64__)
      if (avx2) {
        attend_avx2(task);
        continue;
      }
#endif
      attend_generic(task);
    }
  });
}

}  // namespace cairn::detail
