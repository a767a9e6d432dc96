#include "model/linear.h"

#include <utility>

#include "model/detail/row_blocks.h"

namespace cairn {

Linear::Linear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {}

int64_t Linear::out_features() const { return frozen_ ? frozen_->out_features() : weight_.size(0); }

int64_t Linear::in_features() const { return frozen_ ? frozen_->in_features() : weight_.size(1); }

at::Tensor Linear::forward(const at::Tensor& x, bool training) const {
  at::Tensor y;
  if (frozen_) {
    y = frozen_->linear(x, bias_);
  } else if (training && x.device().is_cpu() && at::GradMode::is_enabled() &&
             (x.requires_grad() || weight_.requires_grad())) {
    // Training on the CPU: the product and its backward split over the ATen threads (one BLAS
    // thread here). Inference keeps the single at::linear, and so its bits.
    y = detail::blocked_linear(x, weight_, bias_);
  } else {
    y = bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
  }
  if (lora_ && !lora_->merged) {
    const LoraWeights& lora = *lora_;
    at::Tensor input = x.scalar_type() == lora.a.scalar_type() ? x : x.to(lora.a.scalar_type());
    if (training && lora.dropout > 0) input = at::dropout(input, lora.dropout, /*train=*/true);
    at::Tensor delta = at::linear(at::linear(input, lora.a), lora.b);
    if (delta.scalar_type() != y.scalar_type()) delta = delta.to(y.scalar_type());
    y = at::add(y, delta, lora.scale);
  }
  return y;
}

bool Linear::set_frozen_weight(std::shared_ptr<const FrozenWeight> frozen) {
  if (!frozen || frozen->out_features() != out_features() || frozen->in_features() != in_features()) return false;
  frozen_ = std::move(frozen);
  weight_ = at::Tensor();
  return true;
}

at::Tensor Linear::dense_weight(at::ScalarType dtype) const {
  if (frozen_) return frozen_->dense(dtype);
  return weight_.scalar_type() == dtype ? weight_ : weight_.to(dtype);
}

}  // namespace cairn
