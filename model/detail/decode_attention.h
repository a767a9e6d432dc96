// Attention of one new query position per sequence against its cached keys and values (the
// decode step), on the CPU in float32, reading the cache where it lies: the contiguous KvCache of
// LlamaModel::forward and the paged pool of forward_paged go through this same kernel, so a
// sequence decoded alone by generate() and one decoded in a batch by the engine get the same bits.
// Torch-free; compiled with -fopenmp (model/engine.cmake) so at::parallel_for splits the work.
#pragma once

#include <cstdint>
#include <vector>

namespace cairn::detail {

// The shape of the attention and how the cache is laid out: key (value) vector of position p,
// kv head h of a sequence starts at keys + slot(p) * slot_stride + h * head_stride, where slot(p)
// is slots[p] when the sequence has a slot table, else first_slot + p. Query head i uses kv head
// i / (heads / kv_heads), as transformers' repeat_kv pairs them.
struct DecodeAttentionShape {
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t slot_stride = 0;  // floats between consecutive slots
  int64_t head_stride = 0;  // floats between consecutive kv heads of one slot
  float scale = 1.0f;       // applied to every score (1 / sqrt(head_dim))
};

struct DecodeAttentionSequence {
  const float* query = nullptr;   // [heads, head_dim] contiguous (after RoPE)
  float* out = nullptr;           // [heads, head_dim] contiguous
  const float* keys = nullptr;    // see DecodeAttentionShape
  const float* values = nullptr;
  const int64_t* slots = nullptr;  // [total] or null (consecutive from first_slot)
  int64_t first_slot = 0;
  int64_t total = 0;  // positions attended to, the new one included (>= 1)
};

// out = softmax(scale * q K^T) V for every sequence and query head, accumulated in float32;
// the (sequence, kv head) pairs are shared by the ATen threads. Each output depends only on its
// own inputs and head_dim, never on the number of sequences or threads.
void decode_attention(const DecodeAttentionShape& shape, const std::vector<DecodeAttentionSequence>& sequences);

}  // namespace cairn::detail
