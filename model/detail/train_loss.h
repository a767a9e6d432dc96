// The training loss: summed token cross-entropy of an output head over selected hidden states,
// computed a chunk of positions at a time so the [positions, vocab] logits never exist whole.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "model/linear.h"

namespace cairn::detail {

// sum_i cross_entropy(head(hidden[i]), targets[i]) as a float32 scalar, for hidden [n, in] and
// targets [n] (int64, every one a valid class). `chunk` positions at a time (> 0).
//
// With a plain dense head (no bias, no adapter, no frozen base) the chunks are fused: each
// chunk's logits, softmax and gradients (for hidden, and for the head's weight when it requires
// grad) are computed in the forward and the logits dropped at once, so memory is one chunk of
// logits whatever n is. The gradients are then ready for backward, which only scales them.
// Other heads go through autograd chunk by chunk (correct, but the chunks' logits are kept for
// backward). `training` turns the head adapter's dropout on.
at::Tensor summed_cross_entropy(const at::Tensor& hidden, const Linear& head, const at::Tensor& targets,
                                int64_t chunk, bool training);

}  // namespace cairn::detail
