#include "model/detail/train_loss.h"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "model/detail/row_blocks.h"

namespace cairn::detail {
namespace {

// Loss and both gradients in one pass over the chunks (as Liger's fused linear cross-entropy).
struct FusedLinearCrossEntropy : torch::autograd::Function<FusedLinearCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk, bool hidden_grad, bool weight_grad) {
    const int64_t n = hidden.size(0);
    at::Tensor loss = at::zeros({}, hidden.options().dtype(at::kFloat));
    at::Tensor grad_hidden = hidden_grad ? at::empty_like(hidden) : at::Tensor();
    at::Tensor grad_weight = weight_grad ? at::zeros_like(weight, at::kFloat) : at::Tensor();
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t len = std::min(chunk, n - begin);
      at::Tensor h = hidden.narrow(0, begin, len);
      at::Tensor t = targets.narrow(0, begin, len).unsqueeze(1);
      at::Tensor logits = at::empty({len, weight.size(0)}, h.options());  // [len, vocab]
      mm_rows(logits, h, weight.t());
      logits = logits.to(at::kFloat);
      at::Tensor target_logits = logits.gather(1, t);
      if (!hidden_grad && !weight_grad) {
        loss.add_((logits.logsumexp(1, /*keepdim=*/true) - target_logits).sum());
        continue;
      }
      // One exp pass serves the loss and the gradient: logsumexp = max + log(sum(exp(l - max))),
      // and d loss / d logits = softmax - one_hot(target), built in the logits' memory.
      at::Tensor max = logits.amax(1, /*keepdim=*/true);
      at::Tensor grad_logits = logits.sub_(max).exp_();
      at::Tensor sum = grad_logits.sum(1, /*keepdim=*/true);
      loss.add_((max + sum.log() - target_logits).sum());
      grad_logits.div_(sum);
      grad_logits.scatter_add_(1, t, at::full({len, 1}, -1.0f, grad_logits.options()));
      at::Tensor g = grad_logits.to(hidden.scalar_type());
      if (hidden_grad) {
        at::Tensor rows = grad_hidden.narrow(0, begin, len);
        mm_rows(rows, g, weight);
      }
      if (weight_grad) add_mm_t_rows(grad_weight, grad_logits, h.to(at::kFloat));
    }
    ctx->saved_data["grad_hidden"] = grad_hidden;
    ctx->saved_data["grad_weight"] = weight_grad ? grad_weight.to(weight.scalar_type()) : grad_weight;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    at::Tensor scale = grad_outputs[0];
    auto scaled = [&](const at::Tensor& grad) -> at::Tensor {
      if (!grad.defined() || !scale.defined()) return at::Tensor();
      // The loss is a sum backpropagated as is (scale 1) in training: skip the multiply then.
      if (scale.device().is_cpu() && scale.item<float>() == 1.0f) return grad;
      return grad * scale.to(grad.scalar_type());
    };
    at::Tensor grad_hidden = scaled(ctx->saved_data["grad_hidden"].toTensor());
    at::Tensor grad_weight = scaled(ctx->saved_data["grad_weight"].toTensor());
    ctx->saved_data.clear();
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor summed_cross_entropy(const at::Tensor& hidden, const Linear& head, const at::Tensor& targets,
                                int64_t chunk, bool training) {
  chunk = std::max<int64_t>(1, chunk);
  const bool plain = head.weight().defined() && !head.bias().defined() && !head.frozen_weight() &&
                     (!head.lora() || head.lora()->merged);
  if (plain) {
    const bool grad_mode = at::GradMode::is_enabled();
    return FusedLinearCrossEntropy::apply(hidden, head.weight(), targets, chunk,
                                          grad_mode && hidden.requires_grad(),
                                          grad_mode && head.weight().requires_grad());
  }
  at::Tensor loss = at::zeros({}, hidden.options().dtype(at::kFloat));
  const int64_t n = hidden.size(0);
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t len = std::min(chunk, n - begin);
    at::Tensor logits = head.forward(hidden.narrow(0, begin, len), training).to(at::kFloat);
    loss = loss + at::cross_entropy_loss(logits, targets.narrow(0, begin, len), {}, at::Reduction::Sum);
  }
  return loss;
}

}  // namespace cairn::detail
