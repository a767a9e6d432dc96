// A Llama model with its decoder's linear layers frozen in 4-bit NF4 (the QLoRA base): each
// weight is quantized once and dequantized block by block on every forward (model/nf4.h), so no
// dense copy stays in memory. The embeddings, norms and output head stay dense, as bitsandbytes
// leaves them. LoRA adapters attach on top as usual (model/lora.h).
#pragma once

#include <cstdint>

#include "model/llama.h"
#include "model/nf4.h"
#include "runtime/status.h"

namespace cairn {

// Replaces the dense weight of every q/k/v/o/gate/up/down projection with an NF4 FrozenWeight.
// Fails (leaving the model unchanged) when a layer cannot be quantized; a layer that already has a
// frozen base is left alone.
Status quantize_model_nf4(LlamaModel& model, const Nf4Options& options = {});

// Bytes the model's weights hold: dense parameters plus the storage of frozen (quantized) bases.
uint64_t model_weight_bytes(const LlamaModel& model);

}  // namespace cairn
