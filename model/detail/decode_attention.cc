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

// The query heads of kv head `head` of one sequence; `scores` holds seq.total floats. Plain C++.
void attend_generic(const DecodeAttentionShape& shape, const DecodeAttentionSequence& seq, int64_t head,
                    float* scores) {
  const int64_t group = shape.heads / shape.kv_heads, dim = shape.head_dim;
  for (int64_t g = 0; g < group; ++g) {
    const int64_t query_head = head * group + g;
    const float* q = seq.query + query_head * dim;
    for (int64_t p = 0; p < seq.total; ++p) {
      const float* k = row(seq.keys, shape, seq, p, head);
      float dot = 0.0f;
      for (int64_t d = 0; d < dim; ++d) dot += q[d] * k[d];
      scores[p] = dot * shape.scale;
    }
    softmax_in_place(scores, seq.total);
    float* out = seq.out + query_head * dim;
    std::fill(out, out + dim, 0.0f);
    for (int64_t p = 0; p < seq.total; ++p) {
      const float* v = row(seq.values, shape, seq, p, head);
      for (int64_t d = 0; d < dim; ++d) out[d] += scores[p] * v[d];
    }
  }
}

#if defined(__x86_64__)
// As attend_generic with AVX2 and FMA for head_dim a multiple of 8 and at most kMaxDim.
constexpr int64_t kMaxDim = 256;

__attribute__((target("avx2,fma"))) void attend_avx2(const DecodeAttentionShape& shape,
                                                     const DecodeAttentionSequence& seq, int64_t head,
                                                     float* scores) {
  const int64_t group = shape.heads / shape.kv_heads, dim = shape.head_dim;
  for (int64_t g = 0; g < group; ++g) {
    const int64_t query_head = head * group + g;
    const float* q = seq.query + query_head * dim;
    for (int64_t p = 0; p < seq.total; ++p) {
      const float* k = row(seq.keys, shape, seq, p, head);
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
      scores[p] = _mm_cvtss_f32(s) * shape.scale;
    }
    softmax_in_place(scores, seq.total);
    __m256 acc[kMaxDim / 8];
    const int64_t lanes = dim / 8;
    for (int64_t j = 0; j < lanes; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t p = 0; p < seq.total; ++p) {
      const float* v = row(seq.values, shape, seq, p, head);
      const __m256 weight = _mm256_set1_ps(scores[p]);
      for (int64_t j = 0; j < lanes; ++j) acc[j] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    float* out = seq.out + query_head * dim;
    for (int64_t j = 0; j < lanes; ++j) _mm256_storeu_ps(out + 8 * j, acc[j]);
  }
}

bool use_avx2(int64_t dim) {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && dim % 8 == 0 && dim <= kMaxDim;
}
#endif

}  // namespace

void decode_attention(const DecodeAttentionShape& shape, const std::vector<DecodeAttentionSequence>& sequences) {
  const int64_t tasks = static_cast<int64_t>(sequences.size()) * shape.kv_heads;
  if (tasks == 0) return;
  int64_t longest = 0;
  for (const DecodeAttentionSequence& seq : sequences) longest = std::max(longest, seq.total);
#if defined(__x86_64__)
  const bool avx2 = use_avx2(shape.head_dim);
#endif
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> scores(static_cast<size_t>(longest));
    for (int64_t t = first; t < last; ++t) {
      const DecodeAttentionSequence& seq = sequences[static_cast<size_t>(t / shape.kv_heads)];
      const int64_t head = t % shape.kv_heads;
#if defined(__x86_64__)
      if (avx2) {
        attend_avx2(shape, seq, head, scores.data());
        continue;
      }
#endif
      attend_generic(shape, seq, head, scores.data());
    }
  });
}

}  // namespace cairn::detail
