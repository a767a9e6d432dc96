// The optimizer arithmetic of the trainer, over flat buffers: AdamW (Loshchilov & Hutter 2019)
// as torch.optim.AdamW computes it element by element, and global-norm gradient clipping as
// torch.nn.utils.clip_grad_norm_ does. One call updates every parameter with a handful of
// vectorised ops over one buffer, instead of a loop over tensors. The learning-rate schedules
// live with the job config (scheduled_learning_rate in model/train_config.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace cairn {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // Decoupled: each step multiplies the decayed parameters by (1 - lr * weight_decay).
  double weight_decay = 0.0;
};

// A half-open element range [begin, end) of a flat buffer.
using ElementRange = std::pair<int64_t, int64_t>;

// One AdamW step, in place, over buffers of the same shape and dtype: `step` is the step being
// taken, counting from 1 (the bias corrections use it). Weight decay applies to the elements in
// `decayed` only (transformers exempts biases and norm weights). Element by element the same
// operations, in the same order, as torch.optim.AdamW's single-tensor path, so the results agree
// bitwise with it. Call with grad mode off.
void adamw_step(at::Tensor& params, const at::Tensor& grads, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                int64_t step, const AdamWOptions& options, const std::vector<ElementRange>& decayed);

// The L2 norm of `grads` (one flat buffer: the global norm of every gradient in it), and, when
// max_norm > 0 and the norm exceeds it, scales `grads` in place by max_norm / (norm + 1e-6) as
// clip_grad_norm_ does. Returns the norm before clipping (inf or nan passes through unclipped).
double clip_grad_norm(at::Tensor& grads, double max_norm);

}  // namespace cairn
