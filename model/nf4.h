// 4-bit NormalFloat (NF4) quantization of frozen weights, as bitsandbytes does it for QLoRA
// (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", Appendix E):
//
//   * the weight is flattened and cut into blocks of `block_size` (64) elements;
//   * each block is scaled by its absolute maximum (absmax) into [-1, 1] and every element is
//     replaced by the index of the nearest of the 16 NF4 code values (ties go to the lower code);
//   * two 4-bit indices are packed per byte, the first element of each pair in the high nibble;
//   * optionally ("double quantization") the fp32 absmax values are themselves quantized: their mean
//     is subtracted (the offset), then they are quantized blockwise (`absmax_block_size`, 256) to
//     8-bit indices into bitsandbytes' signed dynamic code, each 256-block with its own fp32 scale.
//
// Dequantization (value = code[index] * absmax[block]) runs on the fly, on every call of
// nf4_linear, so no dense copy of the weight is kept, not even for backward.
//
// Thread safety: every function here is safe to call concurrently; an Nf4Tensor is never modified
// by them. The kernels run on CPU tensors and use ATen's intra-op thread pool.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn {

// How quantize_nf4 quantizes. bitsandbytes' defaults for QLoRA are block_size 64 and, with
// bnb_4bit_use_double_quant=True, double_quant with absmax_block_size 256.
struct Nf4Options {
  // Elements per absmax block (bitsandbytes: 64). Must be even and positive. Smaller blocks cost
  // more absmax storage (4 bytes per block, about 1 byte with double_quant) and give smaller errors.
  int64_t block_size = 64;
  // Quantize the per-block absmax values to 8 bits (saves about 3 bytes per block, i.e. 0.375 bit
  // per weight at block_size 64). Adds the absmax's own quantization error (at most about 0.7% of
  // the largest |absmax - mean| in its 256-block) to every element. Default off.
  bool double_quant = false;
  // absmax values per 8-bit block when double_quant is on (bitsandbytes: 256). Must be positive.
  int64_t absmax_block_size = 256;
};

// A 4-bit NF4 weight. A value type: copies share the (immutable) tensors. Every tensor is a
// contiguous CPU tensor owned by this object. Built by quantize_nf4 or nf4_from_named_tensors,
// which check that the fields agree; code that fills the fields by hand must keep them consistent
// (see validate_nf4).
struct Nf4Tensor {
  // uint8 [num_blocks() * block_size / 2]: two 4-bit code indices per byte, element 2i in the high
  // nibble and 2i+1 in the low one. The last block is padded with zeros (index 7, value 0).
  at::Tensor packed;
  // Per-block scale. Without double quantization: float32 [num_blocks()], each block's absmax.
  // With it: uint8 [num_blocks()], indices into absmax_code.
  at::Tensor absmax;
  // Double quantization only (undefined otherwise): float32 [256], the 8-bit code the absmax
  // indices point into (bitsandbytes' signed dynamic map, sorted ascending). quantize_nf4 shares
  // one such tensor among all the weights it makes; a loaded weight holds its own copy.
  at::Tensor absmax_code;
  // Double quantization only (undefined otherwise): float32 [ceil(num_blocks() /
  // absmax_block_size)], the absmax of each 256-block of (absmax - absmax_offset).
  at::Tensor absmax_scale;
  // Double quantization only: the mean of the fp32 absmax values, added back after decoding.
  // A block's absmax is absmax_code[absmax[b]] * absmax_scale[b / absmax_block_size] + offset.
  float absmax_offset = 0.0f;
  // The original weight's shape and dtype; dequantize_nf4 restores the shape.
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;
  int64_t block_size = 64;
  int64_t absmax_block_size = 256;

  bool double_quant() const { return absmax_code.defined(); }
  // Elements of the original weight (the product of shape).
  int64_t numel() const;
  int64_t num_blocks() const;
  // Bytes actually held: the sum of the storage sizes of the tensors above (the shared 1 KiB
  // absmax_code counted in full for each weight).
  size_t storage_bytes() const;
};

// The 16 NF4 code values, ascending, exactly as bitsandbytes lists them (QLoRA, Appendix E).
const std::array<float, 16>& nf4_code_book();

// Quantizes `weight` (any floating dtype, any shape, CPU, finite values) to NF4. A numel that is
// not a multiple of block_size is padded with zeros to whole blocks; the padding never changes a
// block's absmax. A block of zeros gets absmax 0 and dequantizes to zeros.
// Errors (invalid_argument): weight undefined, empty, not floating point, or holding a NaN or an
// infinity; block_size not positive and even; absmax_block_size not positive.
Result<Nf4Tensor> quantize_nf4(const at::Tensor& weight, const Nf4Options& options = {});

// The dense weight back in `dtype` (any floating dtype), shaped like the original. Values are
// computed in fp32 (code * absmax) and rounded once to `dtype`. Precondition: `q` is valid (as
// from quantize_nf4 / nf4_from_named_tensors) and dtype is floating; violations throw c10::Error.
at::Tensor dequantize_nf4(const Nf4Tensor& q, at::ScalarType dtype = at::kFloat);

// y = x @ dequantize(W)^T (+ bias): the forward of a frozen NF4 linear layer, for x of shape
// [..., in_features] and W of shape [out_features, in_features]. As bitsandbytes' matmul_4bit, the
// weight is dequantized to its original dtype, cast to x's dtype, and at::linear is applied; the
// result equals at::linear(x, dequantize_nf4(W, W.dtype).to(x.dtype), bias) bit for bit.
// The dense weight is a temporary of this call only. Autograd: gradients flow to x and bias; the
// weight is frozen, and backward dequantizes it again instead of saving the dense copy.
// Precondition: W is valid and 2-D, x.size(-1) == in_features, bias (if any) has out_features
// elements; violations throw c10::Error, as at::linear does.
at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensor& weight,
                      const c10::optional<at::Tensor>& bias = c10::nullopt);

// Checks that the fields of `q` agree (dtypes, sizes, block sizes); invalid_argument names the
// first field that does not.
Status validate_nf4(const Nf4Tensor& q);

// Named tensors in bitsandbytes' state-dict layout for a Linear4bit weight called `name` (e.g.
// "model.layers.0.mlp.down_proj.weight"), as transformers saves them to safetensors:
//   name                                  uint8 [ceil(numel / 2), 1], the packed codes
//   name + ".absmax"                      float32 [blocks] (uint8 [blocks] when double-quantized)
//   name + ".quant_map"                   float32 [16], the NF4 code book
//   name + ".nested_absmax"               float32 [ceil(blocks / 256)]   (double quant only)
//   name + ".nested_quant_map"            float32 [256]                  (double quant only)
//   name + ".quant_state.bitsandbytes__nf4"  uint8, UTF-8 JSON: quant_type, blocksize, dtype,
//                                         shape (and nested_blocksize, nested_dtype, nested_offset)
// The returned tensors are fresh copies or views of `q`'s tensors; callers may hand them to a
// safetensors writer as they are. Errors: invalid_argument when `q` is not valid (validate_nf4).
using NamedTensors = std::map<std::string, at::Tensor>;
Result<NamedTensors> nf4_to_named_tensors(const Nf4Tensor& q, std::string_view name);

// The inverse: reads the entries above for weight `name` from `tensors` (other entries are ignored)
// and copies them into a new Nf4Tensor. Errors: not_found when an entry is missing;
// invalid_argument when the JSON is malformed, quant_type is not "nf4", the quant_map is not the
// NF4 code book, or a size or dtype does not match the description.
Result<Nf4Tensor> nf4_from_named_tensors(const NamedTensors& tensors, std::string_view name);

// For tests and benchmarks only.
namespace detail {

// Dequantization by plain ATen ops (unpack the nibbles, index the 16-entry code book, multiply by
// the repeated absmax): the reference that the fused kernel behind dequantize_nf4 is tested
// against, and its baseline in the speed measurement. Same contract, bit-identical result.
at::Tensor dequantize_nf4_reference(const Nf4Tensor& q, at::ScalarType dtype = at::kFloat);

// Each block's absmax as float32 [num_blocks], double quantization decoded.
at::Tensor nf4_block_absmax(const Nf4Tensor& q);

// bitsandbytes' signed 8-bit dynamic code, create_dynamic_map(signed=True): float32 [256],
// ascending, from about -0.993 to 1. Double quantization maps each absmax to its nearest entry.
const at::Tensor& dynamic_code_8bit();

}  // namespace detail

}  // namespace cairn
