// Gradient checkpointing of one block of a model (a decoder layer): run it without keeping its
// activations, and recompute them during backward. Used by LlamaModel when gradient
// checkpointing is on.
#pragma once

#include <ATen/ATen.h>

#include <functional>

namespace cairn::detail {

using CheckpointedBlock = std::function<at::Tensor(const at::Tensor&)>;

// block(input), computed without an autograd graph; only `input` is kept. During backward the
// block is run again with grad (with the random-number state `device`'s default generator had at
// the first run, so dropout draws the same mask) and its gradient flows to `input` and to every
// parameter the block uses, as if it had been called directly. The block must capture by value
// whatever it needs besides its parameters: it runs again after the caller has returned.
// Call only when grad mode is on.
at::Tensor checkpointed(CheckpointedBlock block, const at::Tensor& input, at::Device device);

}  // namespace cairn::detail
