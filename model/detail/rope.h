// Rotary position embedding frequencies, shared by the model and its tests.
#pragma once

#include <ATen/ATen.h>

#include "model/llama_config.h"

namespace cairn::detail {

// RoPE inverse frequencies, float32 [head_dim / 2] on CPU, computed in float32 exactly as
// transformers does for the config's rope type (default, linear, llama3).
at::Tensor rope_inverse_frequencies(const LlamaConfig& config);

}  // namespace cairn::detail
