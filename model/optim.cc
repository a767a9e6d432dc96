#include "model/optim.h"

#include <cmath>

namespace cairn {

void adamw_step(at::Tensor& params, const at::Tensor& grads, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                int64_t step, const AdamWOptions& options, const std::vector<ElementRange>& decayed) {
  // torch/optim/adamw.py, _single_tensor_adamw (1.13), with the same operation order.
  if (options.weight_decay != 0.0) {
    const double factor = 1.0 - options.lr * options.weight_decay;
    for (const auto& [begin, end] : decayed) params.narrow(0, begin, end - begin).mul_(factor);
  }
  exp_avg.mul_(options.beta1).add_(grads, 1.0 - options.beta1);
  exp_avg_sq.mul_(options.beta2).addcmul_(grads, grads, 1.0 - options.beta2);
  const double bias_correction1 = 1.0 - std::pow(options.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(options.beta2, static_cast<double>(step));
  const double step_size = options.lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options.eps);
  params.addcdiv_(exp_avg, denom, -step_size);
}

double clip_grad_norm(at::Tensor& grads, double max_norm) {
  const double norm = grads.norm(2).item<double>();
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) grads.mul_(coef);
  }
  return norm;
}

}  // namespace cairn
