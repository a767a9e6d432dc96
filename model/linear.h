// The linear layers of a model, made pluggable: a layer's base weight is dense (trainable or
// frozen) or a FrozenWeight that computes x W^T itself (a quantized base such as NF4 for QLoRA),
// and a LoRA adapter may sit beside either.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>

namespace cairn {

// A frozen base weight [out_features, in_features] that is not kept dense: it computes x W^T on
// the fly (e.g. dequantizing NF4 blocks; see model/nf4.h's nf4_linear, which a FrozenWeight wraps
// in a few lines). Implementations are immutable after construction and their const methods are
// safe to call from several threads.
class FrozenWeight {
 public:
  virtual ~FrozenWeight() = default;
  virtual int64_t out_features() const = 0;
  virtual int64_t in_features() const = 0;
  // x [..., in_features] -> [..., out_features] in x's dtype, plus `bias` when defined. Gradients
  // flow to x and bias, never to the weight.
  virtual at::Tensor linear(const at::Tensor& x, const at::Tensor& bias) const = 0;
  // The weight as a dense [out_features, in_features] tensor of `dtype`, on the device the weight
  // lives on (to save it, or inspect it).
  virtual at::Tensor dense(at::ScalarType dtype) const = 0;
};

// A LoRA adapter on one linear layer: y += scale * B A dropout(x) (Hu et al. 2021; as PEFT
// computes it).
struct LoraWeights {
  at::Tensor a;  // lora_A [rank, in_features]
  at::Tensor b;  // lora_B [out_features, rank]
  double scale = 1.0;    // lora_alpha / rank (lora_alpha / sqrt(rank) with rsLoRA)
  double dropout = 0.0;  // on the adapter's input, in training mode only
  // B A has been added into the dense base weight; forward then skips the adapter.
  bool merged = false;
};

// y = x W^T + bias (+ the LoRA term). A value type whose tensors are shared handles: copying a
// Linear aliases its weights. Not thread-safe for mutation; forward is safe concurrently.
class Linear {
 public:
  Linear() = default;
  // A dense layer; `weight` [out, in], `bias` [out] or undefined.
  explicit Linear(at::Tensor weight, at::Tensor bias = {});

  int64_t out_features() const;
  int64_t in_features() const;

  // `training` turns the adapter's dropout on. Throws c10::Error on shape mismatch (callers at the
  // module boundary turn it into a Status).
  at::Tensor forward(const at::Tensor& x, bool training = false) const;

  // Dense base weight (undefined when frozen_weight() is set).
  const at::Tensor& weight() const { return weight_; }
  at::Tensor& mutable_weight() { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  at::Tensor& mutable_bias() { return bias_; }

  // A computed frozen base in place of the dense weight (which is released); the bias stays.
  // The replacement must have the same shape; returns false (and changes nothing) otherwise.
  bool set_frozen_weight(std::shared_ptr<const FrozenWeight> frozen);
  const std::shared_ptr<const FrozenWeight>& frozen_weight() const { return frozen_; }
  // The base weight as a dense tensor of `dtype` (the dense weight itself when it already is one,
  // without the adapter unless merged).
  at::Tensor dense_weight(at::ScalarType dtype) const;

  // The adapter, if one is attached.
  const std::optional<LoraWeights>& lora() const { return lora_; }
  std::optional<LoraWeights>& mutable_lora() { return lora_; }

 private:
  at::Tensor weight_;
  at::Tensor bias_;
  std::shared_ptr<const FrozenWeight> frozen_;
  std::optional<LoraWeights> lora_;
};

}  // namespace cairn
