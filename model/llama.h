// A decoder-only transformer of the Llama family in libtorch, computing what transformers'
// LlamaForCausalLM computes: token embedding, RMSNorm, rotary position embeddings (default,
// linear and llama3 scaling), multi-head / grouped-query attention, a SwiGLU MLP and a tied or
// untied output head; fp32, bf16 or fp16.
//
// Weights are plain tensors named as in a Hugging Face checkpoint ("model.layers.0.self_attn.
// q_proj.weight"), so a checkpoint, an optimizer and a PEFT adapter all speak the same names.
// Loading and saving directories: model/hf_checkpoint.h. LoRA: model/lora.h. Generation:
// model/generate.h (torch-free).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/linear.h"
#include "model/llama_config.h"
#include "runtime/status.h"

namespace cairn {

struct PagedBatch;  // model/detail/engine_paged.h

// Keys and values of the positions seen so far, per layer, for incremental decoding. Preallocated
// by LlamaModel::new_cache for `capacity` positions of `batch` rows, so a decoding step copies its
// new positions in and nothing grows or reallocates. Every row holds the same number of positions.
// Owns its memory; movable, not copyable. One cache serves one sequence (batch) at a time.
class KvCache {
 public:
  KvCache() = default;
  KvCache(KvCache&&) noexcept = default;
  KvCache& operator=(KvCache&&) noexcept = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  // Positions held.
  int64_t length() const { return length_; }
  // Forgets every position; the memory is kept for the next sequence.
  void clear() { length_ = 0; }
  // Keeps the first `length` positions (e.g. to drop rejected draft tokens). Values past
  // length() are clamped to it.
  void truncate(int64_t length) { length_ = std::max<int64_t>(0, std::min(length, length_)); }

 private:
  friend class LlamaModel;
  std::vector<at::Tensor> keys_;    // per layer [batch, kv_heads, capacity, head_dim]
  std::vector<at::Tensor> values_;  // the same
  int64_t batch_ = 0;
  int64_t capacity_ = 0;
  int64_t length_ = 0;
};

// One forward pass's input. Only input_ids is required.
struct ForwardInput {
  // [batch, length] token ids, int64 or int32, on any device (moved to the model's).
  at::Tensor input_ids;
  // [batch, length] RoPE positions. Undefined: cache length + 0, 1, ... in every row. Packed
  // sequences restart at 0 at each document; left-padded rows count from their first real token.
  at::Tensor position_ids;
  // [batch, cache length + length] integer mask over every key position (past and new), as
  // transformers takes it. 0 marks padding, which no token attends to; any other value is a
  // document id, and a token attends only to itself and earlier tokens with the same id. So a
  // 0/1 padding mask works as is, and so does a packed row such as 1 1 1 2 2 0 (Axolotl's
  // multipack layout). Undefined: every token attends to every earlier token (causal only).
  // Logits at padding positions are unspecified (finite).
  at::Tensor attention_mask;
  // Logits for the last position only, [batch, 1, vocab]: all a generation step needs.
  bool last_position_only = false;
  // The final normed hidden states [batch, length, hidden] (or [batch, 1, hidden]) instead of
  // logits, for a caller that applies the output head itself (the trainer computes logits only at
  // trained positions, a chunk at a time): linear_layers()'s "lm_head" is the head.
  bool hidden_states_only = false;
};

// The model. Movable, not copyable. forward() is const and safe to call from several threads at
// once (each with its own cache); everything that changes weights or mode is not.
//
// Parameters start frozen (requires_grad false): call set_base_trainable(true) for full
// fine-tuning, or attach a LoRA adapter (model/lora.h), which freezes the base and trains only the
// adapter. forward() builds an autograd graph only when some parameter requires grad and grad mode
// is on; inference callers use at::InferenceMode (generate does).
class LlamaModel {
 public:
  // A model with random weights initialised as transformers does (normal(0, initializer_range)
  // for embeddings and projections, ones for norms, zeros for biases), reproducibly from `seed`.
  // Errors: invalid_argument for a config validate() rejects or a bad device string.
  static Result<LlamaModel> random(const LlamaConfig& config, const ModelOptions& options, uint64_t seed);

  // A model from weights named as in a checkpoint. Every tensor the config needs must be present
  // with its shape; weights are converted to the options' dtype and device, and kept without a
  // copy when they already match (e.g. views of a memory-mapped safetensors file, which the model
  // then keeps alive). "lm_head.weight" is ignored when embeddings are tied, and so are the
  // "rotary_emb.inv_freq" buffers older checkpoints hold. Errors (invalid_argument) name the
  // missing, misshapen or unexpected tensor.
  static Result<LlamaModel> from_weights(const LlamaConfig& config, const std::map<std::string, at::Tensor>& weights,
                                         const ModelOptions& options);

  LlamaModel(LlamaModel&&) noexcept;
  LlamaModel& operator=(LlamaModel&&) noexcept;
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;
  ~LlamaModel();

  const LlamaConfig& config() const;
  at::ScalarType dtype() const;
  at::Device device() const;

  // Logits [batch, length, vocab] (or [batch, 1, vocab]) in the model's dtype. With a cache,
  // attends to the cached positions too and appends the new ones (the cache's length grows by
  // `length`); without, attends to the input alone.
  // Errors: invalid_argument for ids out of the vocabulary, shapes that disagree, or a cache
  // that is too small or made for another batch size (the cache is then unchanged); internal for
  // a libtorch failure.
  Result<at::Tensor> forward(const ForwardInput& input, KvCache* cache = nullptr) const;

  // A cache for `batch` rows of up to `capacity` positions, in the model's dtype and device.
  // Memory: 2 * layers * batch * kv_heads * capacity * head_dim elements.
  Result<KvCache> new_cache(int64_t batch, int64_t capacity) const;

  // One step of the inference engine (model/engine.h): the new tokens of several sequences
  // flattened into one batch (each projection one GEMM over all of them), each sequence attending
  // causally to its keys and values in the paged pool, where the new ones are written first.
  // Per-row LoRA adapters beside the base weights. Returns logits [logit rows, vocab] in the
  // model's dtype. The caller (the engine) builds a consistent batch; errors: internal for a
  // libtorch failure.
  Result<at::Tensor> forward_paged(const PagedBatch& batch) const;

  // Training mode turns on dropout (attention_dropout, LoRA dropout). Default off.
  void set_training(bool training);
  bool training() const;
  // Gradient checkpointing: while on, a forward that builds an autograd graph (and uses no cache)
  // keeps only each decoder layer's input and recomputes the layer during backward, with the same
  // dropout masks: activation memory of one layer instead of all, for about one more forward of
  // compute. The gradients are those of a plain forward. Default off.
  void set_gradient_checkpointing(bool enabled);
  bool gradient_checkpointing() const;

  // Every parameter by name: base weights as in a checkpoint (without "lm_head.weight" when tied),
  // then LoRA weights as "model.layers.0.self_attn.q_proj.lora_A.weight". Weights computed by a
  // FrozenWeight are not parameters and are absent. The tensors alias the model's: an optimizer
  // that updates them in place updates the model.
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;
  // The parameters that require grad, in named_parameters() order.
  std::vector<at::Tensor> trainable_parameters() const;
  // Sets requires_grad on every base parameter (not LoRA weights).
  void set_base_trainable(bool trainable);

  // The base weights as a checkpoint holds them, in checkpoint order; FrozenWeights are made
  // dense in the model's dtype, and merged adapters are included (they are part of the weight).
  // For saving (model/hf_checkpoint.h). Errors: internal for a libtorch failure.
  Result<std::vector<std::pair<std::string, at::Tensor>>> checkpoint_weights() const;

  // The linear layers by module name ("model.layers.0.self_attn.q_proj", ..., "model.layers.0.
  // mlp.down_proj", and "lm_head"), for attaching adapters or replacing bases. Pointers stay valid
  // while the model lives; with tied embeddings lm_head's weight is the embedding matrix.
  std::vector<std::pair<std::string, Linear*>> linear_layers();
  std::vector<std::pair<std::string, const Linear*>> linear_layers() const;

 private:
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn
