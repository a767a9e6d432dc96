#include "model/nf4.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <utility>

#include "model/detail/torch_error.h"

namespace cairn {
namespace {

// bitsandbytes' NF4 values (functional.py, get_4bit_type("nf4")); QLoRA Appendix E.
constexpr std::array<float, 16> kNf4CodeBook = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// The index that zero quantizes to; padding bytes hold it in both nibbles.
constexpr uint8_t kNf4ZeroIndex = 7;
constexpr uint8_t kNf4ZeroPair = (kNf4ZeroIndex << 4) | kNf4ZeroIndex;

// Blocks per parallel_for task: about 32K elements, enough to amortize the task overhead.
constexpr int64_t kElementsPerTask = 32768;

// The 15 decision thresholds between adjacent codes, the midpoints (computed in double) that
// bitsandbytes' dQuantizeNF4 hard-codes, e.g. 0.03979014977812767 between 0 and 0.0796.
std::array<float, 15> make_nf4_thresholds() {
  std::array<float, 15> out{};
  for (size_t i = 0; i + 1 < kNf4CodeBook.size(); ++i) {
    out[i] = static_cast<float>(
        (static_cast<double>(kNf4CodeBook[i]) + static_cast<double>(kNf4CodeBook[i + 1])) / 2.0);
  }
  return out;
}
const std::array<float, 15> kNf4Thresholds = make_nf4_thresholds();

// The index of the code nearest to x (x is absmax-normalized, so in [-1, 1]); a tie, x exactly on
// a threshold, goes to the lower code as in bitsandbytes (`x > threshold` picks the upper one).
inline uint8_t nf4_index(float x) {
  int index = 0;
  for (int step = 8; step > 0; step /= 2) {
    if (x > kNf4Thresholds[index + step - 1]) index += step;
  }
  return static_cast<uint8_t>(index);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t grain_in_blocks(int64_t block_size) {
  return std::max<int64_t>(1, kElementsPerTask / block_size);
}

// Quantizes x[0, numel) block by block: absmax[b] and packed bytes. Returns false if a value is
// NaN or infinite (the outputs are then meaningless).
template <typename scalar_t>
bool quantize_blocks(const scalar_t* x, int64_t numel, int64_t block_size, float* absmax,
                     uint8_t* packed) {
  const int64_t num_blocks = ceil_div(numel, block_size);
  std::atomic<bool> all_finite{true};
  at::parallel_for(0, num_blocks, grain_in_blocks(block_size), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = b * block_size;
      const int64_t n = std::min(block_size, numel - start);
      const scalar_t* in = x + start;
      float amax = 0.0f;
      bool finite = true;
      for (int64_t j = 0; j < n; ++j) {
        const float a = std::fabs(static_cast<float>(in[j]));
        finite &= (a <= FLT_MAX);  // false for NaN and infinities
        amax = std::max(amax, a);
      }
      if (!finite) all_finite.store(false, std::memory_order_relaxed);
      absmax[b] = amax;
      // As bitsandbytes: multiply by the reciprocal. A zero block stays zero (index 7).
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      uint8_t* out = packed + start / 2;
      if (n == block_size) {
        for (int64_t j = 0; j < block_size / 2; ++j) {
          const uint8_t hi = nf4_index(static_cast<float>(in[2 * j]) * inv);
          const uint8_t lo = nf4_index(static_cast<float>(in[2 * j + 1]) * inv);
          out[j] = static_cast<uint8_t>((hi << 4) | lo);
        }
      } else {  // the last, partial block: pad with zeros
        for (int64_t j = 0; j < block_size / 2; ++j) {
          const uint8_t hi =
              2 * j < n ? nf4_index(static_cast<float>(in[2 * j]) * inv) : kNf4ZeroIndex;
          const uint8_t lo =
              2 * j + 1 < n ? nf4_index(static_cast<float>(in[2 * j + 1]) * inv) : kNf4ZeroIndex;
          out[j] = static_cast<uint8_t>((hi << 4) | lo);
        }
      }
    }
  });
  return all_finite.load();
}

// Writes code[index] * absmax[block] for the first `numel` elements. Each block first scales the
// 16 codes and rounds them to out_t once, so the inner loop is two table loads per byte.
template <typename out_t>
void dequantize_blocks(const uint8_t* packed, const float* absmax, int64_t numel,
                       int64_t block_size, out_t* out) {
  const int64_t num_blocks = ceil_div(numel, block_size);
  at::parallel_for(0, num_blocks, grain_in_blocks(block_size), [&](int64_t begin, int64_t end) {
    out_t table[16];
    for (int64_t b = begin; b < end; ++b) {
      const float a = absmax[b];
      for (int k = 0; k < 16; ++k) table[k] = static_cast<out_t>(kNf4CodeBook[k] * a);
      const int64_t start = b * block_size;
      const int64_t n = std::min(block_size, numel - start);
      const uint8_t* in = packed + start / 2;
      out_t* o = out + start;
      if (n == block_size) {
        for (int64_t j = 0; j < block_size / 2; ++j) {
          const uint8_t byte = in[j];
          o[2 * j] = table[byte >> 4];
          o[2 * j + 1] = table[byte & 0x0f];
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const uint8_t byte = in[j / 2];
          o[j] = table[(j % 2 == 0) ? (byte >> 4) : (byte & 0x0f)];
        }
      }
    }
  });
}

at::Tensor code_book_tensor() {
  return at::tensor(at::ArrayRef<float>(kNf4CodeBook.data(), kNf4CodeBook.size()),
                    at::TensorOptions().dtype(at::kFloat));
}

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), step by step
// with the same float32 ops so the values match bit for bit.
at::Tensor make_dynamic_code_8bit() {
  constexpr int kMaxExponentBits = 7;
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int64_t fraction_items = (int64_t{1} << i) + 1;
    at::Tensor boundaries = at::linspace(0.1, 1.0, fraction_items, at::kFloat);
    at::Tensor means =
        (boundaries.narrow(0, 0, fraction_items - 1) + boundaries.narrow(0, 1, fraction_items - 1)) /
        2.0;
    const double scale = std::pow(10.0, -(kMaxExponentBits - 1) + i);
    at::Tensor positive = (means * scale).contiguous();
    at::Tensor negative = (means * -scale).contiguous();
    data.insert(data.end(), positive.data_ptr<float>(), positive.data_ptr<float>() + positive.numel());
    data.insert(data.end(), negative.data_ptr<float>(), negative.data_ptr<float>() + negative.numel());
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  TORCH_INTERNAL_ASSERT(data.size() == 256, "dynamic code has ", data.size(), " values");
  return at::tensor(data, at::TensorOptions().dtype(at::kFloat));
}

// Double quantization: absmax (float32 [num_blocks]) to 8-bit indices, per-block scales and the
// offset, as bitsandbytes' quantize_4bit(compress_statistics=True) does: offset = mean, then
// quantize_blockwise(absmax - offset, code=dynamic map, blocksize=absmax_block_size).
void double_quantize(const at::Tensor& absmax, int64_t absmax_block_size, Nf4Tensor& q) {
  const int64_t num_blocks = absmax.numel();
  const int64_t num_groups = ceil_div(num_blocks, absmax_block_size);
  const float offset = absmax.mean().item<float>();
  at::Tensor centered = absmax - offset;
  at::Tensor groups = at::constant_pad_nd(centered, {0, num_groups * absmax_block_size - num_blocks})
                          .view({num_groups, absmax_block_size});
  at::Tensor scale = groups.abs().amax(1);
  at::Tensor inv = at::where(scale > 0, scale.reciprocal(), at::zeros_like(scale));
  at::Tensor normalized = groups * inv.unsqueeze(1);
  const at::Tensor& code = detail::dynamic_code_8bit();
  at::Tensor midpoints = (code.narrow(0, 0, 255) + code.narrow(0, 1, 255)) / 2.0;
  at::Tensor index = at::bucketize(normalized, midpoints, /*out_int32=*/true, /*right=*/false);
  q.absmax = index.view({-1}).narrow(0, 0, num_blocks).to(at::kByte).contiguous();
  q.absmax_code = code;
  q.absmax_scale = scale.contiguous();
  q.absmax_offset = offset;
}

// The weight in `dtype` as bitsandbytes' matmul_4bit sees it: dequantized to the original dtype,
// then cast. From an fp32 (or fp64) original the first rounding is exact, so one step suffices.
at::Tensor dequantize_for(const Nf4Tensor& w, at::ScalarType dtype) {
  if (w.dtype == dtype || w.dtype == at::kFloat || w.dtype == at::kDouble) {
    return dequantize_nf4(w, dtype);
  }
  return dequantize_nf4(w, w.dtype).to(dtype);
}

void check_linear_args(const at::Tensor& x, const Nf4Tensor& w,
                       const c10::optional<at::Tensor>& bias) {
  const Status status = validate_nf4(w);
  TORCH_CHECK(status.ok(), "nf4_linear: ", status.to_string());
  TORCH_CHECK(w.shape.size() == 2, "nf4_linear: the weight must be 2-D, has ", w.shape.size(),
              " dimensions");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.shape[1], "nf4_linear: x has ",
              x.dim() >= 1 ? x.size(-1) : 0, " features, the weight expects ", w.shape[1]);
  TORCH_CHECK(!bias.has_value() || !bias->defined() || bias->numel() == w.shape[0],
              "nf4_linear: bias has ", bias.has_value() && bias->defined() ? bias->numel() : 0,
              " elements, the weight has ", w.shape[0], " outputs");
}

at::Tensor linear_forward(const at::Tensor& x, const Nf4Tensor& w,
                          const c10::optional<at::Tensor>& bias) {
  return at::linear(x, dequantize_for(w, x.scalar_type()), bias);
}

// A frozen NF4 linear layer under autograd. It saves the quantized weight, never the dense one:
// backward dequantizes again (as bitsandbytes' MatMul4Bit), so training keeps the 4-bit footprint.
class Nf4LinearFunction : public torch::autograd::Function<Nf4LinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& bias, const Nf4Tensor& w) {
    save(ctx, w);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return linear_forward(x, w, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor grad_x;
    at::Tensor grad_bias;
    if (ctx->needs_input_grad(0)) {
      const Nf4Tensor w = load(ctx);
      const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
      grad_x = at::matmul(grad, dequantize_for(w, x_dtype));
    }
    if (has_bias && ctx->needs_input_grad(1)) {
      grad_bias = grad.reshape({-1, grad.size(-1)}).sum(0);
    }
    return {grad_x, grad_bias, at::Tensor()};
  }

 private:
  static void save(torch::autograd::AutogradContext* ctx, const Nf4Tensor& w) {
    auto& s = ctx->saved_data;
    s["packed"] = w.packed;
    s["absmax"] = w.absmax;
    s["double_quant"] = w.double_quant();
    if (w.double_quant()) {
      s["absmax_code"] = w.absmax_code;
      s["absmax_scale"] = w.absmax_scale;
    }
    s["absmax_offset"] = static_cast<double>(w.absmax_offset);
    s["shape"] = w.shape;
    s["dtype"] = static_cast<int64_t>(w.dtype);
    s["block_size"] = w.block_size;
    s["absmax_block_size"] = w.absmax_block_size;
  }

  static Nf4Tensor load(torch::autograd::AutogradContext* ctx) {
    auto& s = ctx->saved_data;
    Nf4Tensor w;
    w.packed = s["packed"].toTensor();
    w.absmax = s["absmax"].toTensor();
    if (s["double_quant"].toBool()) {
      w.absmax_code = s["absmax_code"].toTensor();
      w.absmax_scale = s["absmax_scale"].toTensor();
    }
    w.absmax_offset = static_cast<float>(s["absmax_offset"].toDouble());
    w.shape = s["shape"].toIntVector();
    w.dtype = static_cast<at::ScalarType>(s["dtype"].toInt());
    w.block_size = s["block_size"].toInt();
    w.absmax_block_size = s["absmax_block_size"].toInt();
    return w;
  }
};

// dtype names as bitsandbytes writes them: str(torch.bfloat16).strip("torch.").
const std::vector<std::pair<at::ScalarType, std::string>>& dtype_names() {
  static const auto* names = new std::vector<std::pair<at::ScalarType, std::string>>{
      {at::kFloat, "float32"}, {at::kBFloat16, "bfloat16"}, {at::kHalf, "float16"},
      {at::kDouble, "float64"}};
  return *names;
}

std::optional<at::ScalarType> dtype_from_name(const std::string& name) {
  for (const auto& [type, type_name] : dtype_names()) {
    if (type_name == name) return type;
  }
  return std::nullopt;
}

std::string dtype_name(at::ScalarType type) {
  for (const auto& [t, name] : dtype_names()) {
    if (t == type) return name;
  }
  return c10::toString(type);
}

Status invalid(std::string message) { return error(Code::invalid_argument, std::move(message)); }

Status check_tensor(const at::Tensor& t, const char* field, at::ScalarType dtype, int64_t numel) {
  if (!t.defined()) return invalid(std::string("nf4: ") + field + " is undefined");
  if (t.scalar_type() != dtype) {
    return invalid(std::string("nf4: ") + field + " has dtype " + c10::toString(t.scalar_type()) +
                   ", expected " + c10::toString(dtype));
  }
  if (t.numel() != numel) {
    return invalid(std::string("nf4: ") + field + " has " + std::to_string(t.numel()) +
                   " elements, expected " + std::to_string(numel));
  }
  return Status::ok_status();
}

// A contiguous CPU copy that owns its memory (the source may be a view into a mapped file).
at::Tensor owned_copy(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(at::kCPU, dtype, /*non_blocking=*/false, /*copy=*/true).contiguous().view({-1});
}

Result<Nf4Tensor> from_named_tensors(const NamedTensors& tensors, const std::string& name) {
  auto find = [&](const std::string& key) -> const at::Tensor* {
    auto it = tensors.find(key);
    return it == tensors.end() ? nullptr : &it->second;
  };
  const std::string state_key = name + ".quant_state.bitsandbytes__nf4";
  const at::Tensor* state = find(state_key);
  if (state == nullptr) {
    if (find(name + ".quant_state.bitsandbytes__fp4") != nullptr) {
      return invalid("nf4: " + name + " is quantized as fp4, not nf4");
    }
    return error(Code::not_found, "nf4: no tensor named " + state_key);
  }
  for (const char* suffix : {"", ".absmax", ".quant_map"}) {
    if (find(name + suffix) == nullptr) {
      return error(Code::not_found, "nf4: no tensor named " + name + suffix);
    }
  }
  if (state->scalar_type() != at::kByte) return invalid("nf4: " + state_key + " is not uint8");
  at::Tensor state_bytes = state->contiguous().cpu();
  const std::string text(reinterpret_cast<const char*>(state_bytes.data_ptr<uint8_t>()),
                         static_cast<size_t>(state_bytes.numel()));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return invalid("nf4: " + state_key + " is not a JSON object");
  auto field = [&](const char* key, nlohmann::json::value_t type1,
                   nlohmann::json::value_t type2) -> const nlohmann::json* {
    auto it = json.find(key);
    if (it == json.end() || (it->type() != type1 && it->type() != type2)) return nullptr;
    return &*it;
  };
  using VT = nlohmann::json::value_t;
  const auto* quant_type = field("quant_type", VT::string, VT::string);
  if (quant_type == nullptr || quant_type->get<std::string>() != "nf4") {
    return invalid("nf4: " + state_key + ": quant_type must be \"nf4\"");
  }
  const auto* blocksize = field("blocksize", VT::number_unsigned, VT::number_integer);
  const auto* dtype = field("dtype", VT::string, VT::string);
  const auto* shape = field("shape", VT::array, VT::array);
  if (blocksize == nullptr || dtype == nullptr || shape == nullptr) {
    return invalid("nf4: " + state_key + " needs blocksize (integer), dtype and shape");
  }
  Nf4Tensor q;
  q.block_size = blocksize->get<int64_t>();
  const auto dtype_type = dtype_from_name(dtype->get<std::string>());
  if (!dtype_type) return invalid("nf4: " + state_key + ": unknown dtype " + dtype->dump());
  q.dtype = *dtype_type;
  for (const auto& dim : *shape) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      return invalid("nf4: " + state_key + ": bad shape " + shape->dump());
    }
    q.shape.push_back(dim.get<int64_t>());
  }
  if (q.block_size <= 0 || q.block_size % 2 != 0) {
    return invalid("nf4: " + state_key + ": blocksize " + std::to_string(q.block_size) +
                   " is not positive and even");
  }
  if (q.numel() <= 0) return invalid("nf4: " + state_key + ": empty shape " + shape->dump());
  const int64_t num_blocks = q.num_blocks();

  const at::Tensor& packed = *find(name);
  CAIRN_RETURN_IF_ERROR(check_tensor(packed, name.c_str(), at::kByte, ceil_div(q.numel(), 2)));
  q.packed = at::full({num_blocks * q.block_size / 2}, kNf4ZeroPair, at::kByte);
  q.packed.narrow(0, 0, packed.numel()).copy_(packed.reshape({-1}));

  const at::Tensor& quant_map = *find(name + ".quant_map");
  CAIRN_RETURN_IF_ERROR(check_tensor(quant_map, (name + ".quant_map").c_str(), at::kFloat, 16));
  if (!at::equal(quant_map.reshape({-1}).cpu(), code_book_tensor())) {
    return invalid("nf4: " + name + ".quant_map is not the NF4 code book");
  }

  const at::Tensor& absmax = *find(name + ".absmax");
  const at::Tensor* nested_absmax = find(name + ".nested_absmax");
  if (nested_absmax == nullptr) {
    CAIRN_RETURN_IF_ERROR(check_tensor(absmax, (name + ".absmax").c_str(), at::kFloat, num_blocks));
    q.absmax = owned_copy(absmax, at::kFloat);
    return q;
  }
  const at::Tensor* nested_quant_map = find(name + ".nested_quant_map");
  if (nested_quant_map == nullptr) {
    return error(Code::not_found, "nf4: no tensor named " + name + ".nested_quant_map");
  }
  const auto* nested_blocksize = field("nested_blocksize", VT::number_unsigned, VT::number_integer);
  const auto offset_it = json.find("nested_offset");
  const nlohmann::json* nested_offset =
      offset_it != json.end() && offset_it->is_number() ? &*offset_it : nullptr;
  const auto* nested_dtype = field("nested_dtype", VT::string, VT::string);
  if (nested_blocksize == nullptr || nested_blocksize->get<int64_t>() <= 0 ||
      nested_offset == nullptr) {
    return invalid("nf4: " + state_key +
                   " needs a positive nested_blocksize and a nested_offset number");
  }
  if (nested_dtype != nullptr && nested_dtype->get<std::string>() != "float32") {
    return invalid("nf4: " + state_key + ": nested_dtype must be float32, is " +
                   nested_dtype->dump());
  }
  q.absmax_block_size = nested_blocksize->get<int64_t>();
  q.absmax_offset = nested_offset->get<float>();
  CAIRN_RETURN_IF_ERROR(check_tensor(absmax, (name + ".absmax").c_str(), at::kByte, num_blocks));
  CAIRN_RETURN_IF_ERROR(check_tensor(*nested_absmax, (name + ".nested_absmax").c_str(), at::kFloat,
                                     ceil_div(num_blocks, q.absmax_block_size)));
  CAIRN_RETURN_IF_ERROR(
      check_tensor(*nested_quant_map, (name + ".nested_quant_map").c_str(), at::kFloat, 256));
  q.absmax = owned_copy(absmax, at::kByte);
  q.absmax_scale = owned_copy(*nested_absmax, at::kFloat);
  q.absmax_code = owned_copy(*nested_quant_map, at::kFloat);
  return q;
}

}  // namespace

int64_t Nf4Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Nf4Tensor::num_blocks() const {
  return block_size > 0 ? ceil_div(numel(), block_size) : 0;
}

size_t Nf4Tensor::storage_bytes() const {
  size_t total = 0;
  for (const at::Tensor* t : {&packed, &absmax, &absmax_code, &absmax_scale}) {
    if (t->defined()) total += t->storage().nbytes();
  }
  return total;
}

const std::array<float, 16>& nf4_code_book() { return kNf4CodeBook; }

Status validate_nf4(const Nf4Tensor& q) {
  if (q.block_size <= 0 || q.block_size % 2 != 0) {
    return invalid("nf4: block_size " + std::to_string(q.block_size) + " is not positive and even");
  }
  for (int64_t d : q.shape) {
    if (d < 0) return invalid("nf4: shape has a negative dimension");
  }
  if (q.numel() <= 0) return invalid("nf4: the shape holds no elements");
  if (!at::isFloatingType(q.dtype)) {
    return invalid(std::string("nf4: dtype ") + c10::toString(q.dtype) + " is not floating point");
  }
  const int64_t num_blocks = q.num_blocks();
  CAIRN_RETURN_IF_ERROR(check_tensor(q.packed, "packed", at::kByte, num_blocks * q.block_size / 2));
  if (q.double_quant()) {
    if (q.absmax_block_size <= 0) {
      return invalid("nf4: absmax_block_size " + std::to_string(q.absmax_block_size) +
                     " is not positive");
    }
    if (!std::isfinite(q.absmax_offset)) return invalid("nf4: absmax_offset is not finite");
    CAIRN_RETURN_IF_ERROR(check_tensor(q.absmax, "absmax", at::kByte, num_blocks));
    CAIRN_RETURN_IF_ERROR(check_tensor(q.absmax_code, "absmax_code", at::kFloat, 256));
    CAIRN_RETURN_IF_ERROR(check_tensor(q.absmax_scale, "absmax_scale", at::kFloat,
                                       ceil_div(num_blocks, q.absmax_block_size)));
  } else {
    CAIRN_RETURN_IF_ERROR(check_tensor(q.absmax, "absmax", at::kFloat, num_blocks));
    if (q.absmax_scale.defined()) {
      return invalid("nf4: absmax_scale is set but absmax_code is not (double quantization)");
    }
  }
  for (const at::Tensor* t : {&q.packed, &q.absmax, &q.absmax_code, &q.absmax_scale}) {
    if (t->defined() && (!t->device().is_cpu() || !t->is_contiguous())) {
      return invalid("nf4: every tensor must be a contiguous CPU tensor");
    }
  }
  return Status::ok_status();
}

Result<Nf4Tensor> quantize_nf4(const at::Tensor& weight, const Nf4Options& options) {
  if (!weight.defined()) return invalid("quantize_nf4: the weight is undefined");
  if (!at::isFloatingType(weight.scalar_type())) {
    return invalid(std::string("quantize_nf4: the weight's dtype ") +
                   c10::toString(weight.scalar_type()) + " is not floating point");
  }
  if (weight.numel() == 0) return invalid("quantize_nf4: the weight is empty");
  if (options.block_size <= 0 || options.block_size % 2 != 0) {
    return invalid("quantize_nf4: block_size " + std::to_string(options.block_size) +
                   " is not positive and even");
  }
  if (options.absmax_block_size <= 0) {
    return invalid("quantize_nf4: absmax_block_size " + std::to_string(options.absmax_block_size) +
                   " is not positive");
  }
  try {
    at::NoGradGuard no_grad;
    const at::Tensor x = weight.detach().cpu().contiguous();
    Nf4Tensor q;
    q.shape = x.sizes().vec();
    q.dtype = x.scalar_type();
    q.block_size = options.block_size;
    q.absmax_block_size = options.absmax_block_size;
    const int64_t numel = x.numel();
    const int64_t num_blocks = q.num_blocks();
    q.packed = at::empty({num_blocks * q.block_size / 2}, at::kByte);
    at::Tensor absmax = at::empty({num_blocks}, at::kFloat);
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_nf4", [&] {
      finite = quantize_blocks(x.data_ptr<scalar_t>(), numel, q.block_size,
                               absmax.data_ptr<float>(), q.packed.data_ptr<uint8_t>());
    });
    if (!finite) return invalid("quantize_nf4: the weight holds a NaN or an infinity");
    if (options.double_quant) {
      double_quantize(absmax, options.absmax_block_size, q);
    } else {
      q.absmax = absmax;
    }
    return q;
  } catch (...) {
    return detail::current_exception_status("quantize_nf4");
  }
}

at::Tensor dequantize_nf4(const Nf4Tensor& q, at::ScalarType dtype) {
  const Status status = validate_nf4(q);
  TORCH_CHECK(status.ok(), "dequantize_nf4: ", status.to_string());
  TORCH_CHECK(at::isFloatingType(dtype), "dequantize_nf4: dtype ", dtype, " is not floating point");
  const at::Tensor absmax = detail::nf4_block_absmax(q).contiguous();
  at::Tensor out = at::empty({q.numel()}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_nf4", [&] {
    dequantize_blocks(q.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), q.numel(),
                      q.block_size, out.data_ptr<scalar_t>());
  });
  return out.view(q.shape);
}

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensor& weight,
                      const c10::optional<at::Tensor>& bias) {
  check_linear_args(x, weight, bias);
  const bool bias_needs_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (at::GradMode::is_enabled() && (x.requires_grad() || bias_needs_grad)) {
    return Nf4LinearFunction::apply(x, bias, weight);
  }
  return linear_forward(x, weight, bias);
}

Result<NamedTensors> nf4_to_named_tensors(const Nf4Tensor& q, std::string_view name) {
  CAIRN_RETURN_IF_ERROR(validate_nf4(q));
  const std::string base(name);
  try {
    NamedTensors out;
    const int64_t packed_bytes = ceil_div(q.numel(), 2);
    out[base] = q.packed.narrow(0, 0, packed_bytes).view({packed_bytes, 1});
    out[base + ".absmax"] = q.absmax;
    out[base + ".quant_map"] = code_book_tensor();
    // Key order as bitsandbytes' QuantState.as_dict writes it.
    nlohmann::ordered_json state = {
        {"quant_type", "nf4"},
        {"blocksize", q.block_size},
        {"dtype", dtype_name(q.dtype)},
        {"shape", q.shape},
    };
    if (q.double_quant()) {
      out[base + ".nested_absmax"] = q.absmax_scale;
      out[base + ".nested_quant_map"] = q.absmax_code;
      state["nested_blocksize"] = q.absmax_block_size;
      state["nested_dtype"] = "float32";
      state["nested_offset"] = static_cast<double>(q.absmax_offset);
    }
    const std::string text = state.dump();
    out[base + ".quant_state.bitsandbytes__nf4"] =
        at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, at::kByte)
            .clone();
    return out;
  } catch (...) {
    return detail::current_exception_status("nf4: writing " + base);
  }
}

Result<Nf4Tensor> nf4_from_named_tensors(const NamedTensors& tensors, std::string_view name) {
  try {
    Result<Nf4Tensor> q = from_named_tensors(tensors, std::string(name));
    if (!q.ok()) return q;
    CAIRN_RETURN_IF_ERROR(validate_nf4(*q));
    return q;
  } catch (...) {
    return detail::current_exception_status("nf4: reading " + std::string(name));
  }
}

namespace detail {

at::Tensor dequantize_nf4_reference(const Nf4Tensor& q, at::ScalarType dtype) {
  const Status status = validate_nf4(q);
  TORCH_CHECK(status.ok(), "dequantize_nf4_reference: ", status.to_string());
  const int64_t num_blocks = q.num_blocks();
  at::Tensor high = q.packed.div(16, "floor");
  at::Tensor low = q.packed.remainder(16);
  at::Tensor index = at::stack({high, low}, 1).view({-1}).to(at::kLong);
  at::Tensor values = code_book_tensor().index_select(0, index).view({num_blocks, q.block_size});
  values = values * nf4_block_absmax(q).unsqueeze(1);
  return values.view({-1}).narrow(0, 0, q.numel()).to(dtype).view(q.shape);
}

at::Tensor nf4_block_absmax(const Nf4Tensor& q) {
  if (!q.double_quant()) return q.absmax;
  const int64_t num_blocks = q.num_blocks();
  at::Tensor values = q.absmax_code.index_select(0, q.absmax.to(at::kLong));
  at::Tensor scale =
      q.absmax_scale.repeat_interleave(q.absmax_block_size).narrow(0, 0, num_blocks);
  // bitsandbytes: dequantize_blockwise (code * scale), then += offset, in float32.
  return (values * scale).add_(q.absmax_offset);
}

const at::Tensor& dynamic_code_8bit() {
  static const at::Tensor* code = new at::Tensor(make_dynamic_code_8bit());
  return *code;
}

}  // namespace detail
}  // namespace cairn
