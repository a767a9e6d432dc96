#include "model/qlora.h"

#include <set>

#include "model/detail/torch_error.h"

namespace cairn {
namespace {

class Nf4FrozenWeight final : public FrozenWeight {
 public:
  explicit Nf4FrozenWeight(Nf4Tensor weight) : weight_(std::move(weight)) {}
  int64_t out_features() const override { return weight_.shape[0]; }
  int64_t in_features() const override { return weight_.shape[1]; }
  at::Tensor linear(const at::Tensor& x, const at::Tensor& bias) const override {
    return nf4_linear(x, weight_, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
  }
  at::Tensor dense(at::ScalarType dtype) const override { return dequantize_nf4(weight_, dtype); }
  size_t storage_bytes() const { return weight_.storage_bytes(); }

 private:
  const Nf4Tensor weight_;
};

}  // namespace

Status quantize_model_nf4(LlamaModel& model, const Nf4Options& options) {
  try {
    // Quantize everything first, then swap: a failure half-way leaves the model as it was.
    std::vector<std::pair<Linear*, std::shared_ptr<const FrozenWeight>>> swaps;
    for (auto& [name, layer] : model.linear_layers()) {
      if (layer->frozen_weight()) continue;
      auto q = quantize_nf4(layer->weight(), options);
      if (!q.ok()) return q.status().with_context(name);
      swaps.emplace_back(layer, std::make_shared<Nf4FrozenWeight>(std::move(q).value()));
    }
    for (auto& [layer, frozen] : swaps) {
      if (!layer->set_frozen_weight(frozen)) {
        return Status(Code::internal, "quantize_model_nf4: a quantized weight changed shape");
      }
    }
    return {};
  } catch (...) {
    return detail::current_exception_status("quantize_model_nf4");
  }
}

uint64_t model_weight_bytes(const LlamaModel& model) {
  uint64_t bytes = 0;
  // Tied weights appear under two names; count each storage once.
  std::set<const void*> seen;
  for (const auto& [name, tensor] : model.named_parameters()) {
    if (!tensor.defined() || !seen.insert(tensor.storage().data()).second) continue;
    bytes += tensor.numel() * tensor.element_size();
  }
  for (const auto& [name, layer] : model.linear_layers()) {
    if (auto* nf4 = dynamic_cast<const Nf4FrozenWeight*>(layer->frozen_weight().get())) bytes += nf4->storage_bytes();
  }
  return bytes;
}

}  // namespace cairn
