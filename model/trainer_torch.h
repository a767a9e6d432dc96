// Torch-side access to a Trainer, for tests and tools that compare tensors within a tolerance.
// Includes libtorch's headers: keep it out of actors and other torch-free code.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "model/llama.h"
#include "model/trainer.h"

namespace cairn {

class TrainerTorchAccess {
 public:
  // The trainable parameters by name, in the order named_parameters() gives (aliases of the
  // model's tensors: do not modify).
  static std::vector<std::pair<std::string, at::Tensor>> trainable_parameters(const Trainer& trainer);
  // The accumulated gradient of every trainable parameter as one flat float tensor, in the
  // trainer's bucket order (reverse registration), as summed by accumulate() and not yet reduced
  // or normalised. A copy.
  static at::Tensor accumulated_gradients(const Trainer& trainer);
};

}  // namespace cairn
