// The inference engine's batched forward pass over a paged KV cache: what the engine hands
// LlamaModel::forward_paged (model/llama.h) for one step. Internal to model/ (libtorch).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/linear.h"

namespace cairn {

// Keys and values of every layer in fixed-size blocks: per layer a [num_blocks * block_size,
// kv_heads, head_dim] tensor, position p of a sequence living at slot table[p / block_size] *
// block_size + p % block_size.
struct PagedKvPool {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;
};

// One sequence's part of a step: rows [token_offset, token_offset + length) of the flattened
// batch are its positions past .. past + length - 1.
struct PagedSequence {
  int64_t token_offset = 0;
  int64_t length = 0;
  int64_t past = 0;
  // When its blocks are consecutive in the pool: the slot of its position 0, so attention reads the
  // pool in place. Otherwise -1, and its past + length slots start at gather_offset in
  // PagedBatch::gather_slots.
  int64_t pool_offset = -1;
  int64_t gather_offset = 0;
};

// The rows of a step that use one LoRA adapter.
struct PagedAdapterRows {
  // Per linear layer in LlamaModel::linear_layers() order (layer by layer q, k, v, o, gate, up,
  // down, then lm_head): the adapter's weights, or null where it has none. Never merged.
  const std::vector<const LoraWeights*>* linears = nullptr;
  at::Tensor rows;        // int64 rows of the flattened batch
  at::Tensor logit_rows;  // int64 indices into PagedBatch::logit_rows of the same sequences
};

struct PagedBatch {
  at::Tensor input_ids;  // [tokens] int64
  at::Tensor positions;  // [tokens] int64 RoPE positions
  at::Tensor new_slots;  // [tokens] int64: where each token's keys and values are written
  // int64: the pool slots of every position (past and new) of each sequence read by gathering
  // (pool_offset -1), in turn; may be empty.
  at::Tensor gather_slots;
  std::vector<PagedSequence> sequences;
  // int64 rows whose logits are returned (in this order).
  at::Tensor logit_rows;
  std::vector<PagedAdapterRows> adapters;
  PagedKvPool* pool = nullptr;
};

}  // namespace cairn
