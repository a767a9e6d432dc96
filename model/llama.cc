#include "model/llama.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <set>

#include "model/detail/decode_attention.h"
#include "model/detail/engine_paged.h"
#include "model/detail/engine_linear.h"
#include "model/detail/rope.h"
#include "model/detail/row_blocks.h"
#include "model/detail/train_checkpoint.h"
#include "model/detail/torch_error.h"

namespace cairn {
namespace {

at::ScalarType scalar_type_of(Precision precision) {
  switch (precision) {
    case Precision::float32: return at::kFloat;
    case Precision::bfloat16: return at::kBFloat16;
    case Precision::float16: return at::kHalf;
  }
  return at::kFloat;
}

Result<at::Device> parse_device(const std::string& name) {
  try {
    return at::Device(name);
  } catch (const std::exception&) {
    return error(Code::invalid_argument, "device \"" + name + "\": expected \"cpu\", \"cuda\" or \"cuda:N\"");
  }
}

// The most negative finite value of a floating dtype: what masked scores become, so a row with
// nothing to attend to gives a uniform (finite) softmax instead of NaN.
double lowest_value(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return -3.3895313892515355e38;
    case at::kDouble: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

std::string shape_text(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// transformers' LlamaRMSNorm: normalise in float32, round to the input dtype, then scale.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

// x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] for the halves x1, x2 of the last dim.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

struct Layer {
  Linear q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  at::Tensor input_layernorm;
  at::Tensor post_attention_layernorm;
};

// The projections of a layer with their names inside it, in checkpoint order.
template <class LayerT, class F>
void for_each_projection(LayerT& layer, F&& f) {
  f("self_attn.q_proj", layer.q_proj);
  f("self_attn.k_proj", layer.k_proj);
  f("self_attn.v_proj", layer.v_proj);
  f("self_attn.o_proj", layer.o_proj);
  f("mlp.gate_proj", layer.gate_proj);
  f("mlp.up_proj", layer.up_proj);
  f("mlp.down_proj", layer.down_proj);
}

// How random() initialises a tensor.
enum class Init { normal, ones, zeros };

// One base tensor of the model: its checkpoint name, shape, where it lives, and (for the weight
// of a linear layer) the layer, whose FrozenWeight stands in when the dense weight is undefined.
struct Slot {
  std::string name;
  std::vector<int64_t> shape;
  at::Tensor* tensor;
  const Linear* linear;
  Init init;
};

// The linear layers of a model's Impl (const or not) by module name, in checkpoint order.
template <class LinearT, class ImplT>
std::vector<std::pair<std::string, LinearT*>> collect_linears(ImplT& impl) {
  std::vector<std::pair<std::string, LinearT*>> out;
  for (size_t i = 0; i < impl.layers.size(); ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    for_each_projection(impl.layers[i], [&](const std::string& name, LinearT& linear) {
      out.emplace_back(prefix + name, &linear);
    });
  }
  out.emplace_back("lm_head", &impl.lm_head);
  return out;
}

// Whether decode_attention (float32, CPU) computes the attention of one new position of q.
bool decode_kernel_applies(const at::Tensor& q) { return q.scalar_type() == at::kFloat && q.device().is_cpu(); }

// The attention output [batch, 1, heads * head_dim] of q (one position per row of the batch,
// [batch, ..., head_dim] holding each row's heads in order) against the first `total` positions
// of a KvCache layer's keys and values [batch, kv_heads, capacity, head_dim].
at::Tensor cached_decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                                   int64_t total, const LlamaConfig& c) {
  const int64_t batch = q.size(0), heads = c.num_attention_heads, head_dim = c.head_dim;
  at::Tensor query = q.contiguous();
  at::Tensor out = at::empty({batch, 1, heads * head_dim}, query.options());
  detail::DecodeAttentionShape shape;
  shape.heads = heads;
  shape.kv_heads = c.num_key_value_heads;
  shape.head_dim = head_dim;
  shape.slot_stride = head_dim;
  shape.head_stride = keys.size(2) * head_dim;
  shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  std::vector<detail::DecodeAttentionSequence> sequences(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    detail::DecodeAttentionSequence& seq = sequences[static_cast<size_t>(b)];
    seq.query = query.data_ptr<float>() + b * heads * head_dim;
    seq.out = out.data_ptr<float>() + b * heads * head_dim;
    seq.keys = keys[b].data_ptr<float>();
    seq.values = values[b].data_ptr<float>();
    seq.total = total;
  }
  detail::decode_attention(shape, sequences);
  return out;
}

}  // namespace

struct LlamaModel::Impl {
  LlamaConfig config;
  at::ScalarType dtype = at::kFloat;
  at::Device device{at::kCPU};
  at::Tensor embed_tokens;  // [vocab, hidden]
  std::vector<Layer> layers;
  at::Tensor norm;  // [hidden]
  Linear lm_head;   // weight is embed_tokens when tied
  at::Tensor inv_freq;  // float32 [head_dim / 2] on device
  bool training = false;
  bool gradient_checkpointing = false;

  // Every base tensor in checkpoint order; lm_head only when untied.
  std::vector<Slot> slots() {
    const LlamaConfig& c = config;
    const int64_t h = c.hidden_size, q_out = c.num_attention_heads * c.head_dim,
                  kv_out = c.num_key_value_heads * c.head_dim, inner = c.intermediate_size;
    std::vector<Slot> out;
    out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, &embed_tokens, nullptr, Init::normal});
    for (size_t i = 0; i < layers.size(); ++i) {
      Layer& layer = layers[i];
      const std::string prefix = "model.layers." + std::to_string(i) + ".";
      auto shape_of = [&](const std::string& name) -> std::pair<int64_t, int64_t> {
        if (name == "self_attn.q_proj") return {q_out, h};
        if (name == "self_attn.k_proj" || name == "self_attn.v_proj") return {kv_out, h};
        if (name == "self_attn.o_proj") return {h, q_out};
        if (name == "mlp.down_proj") return {h, inner};
        return {inner, h};  // gate_proj, up_proj
      };
      for_each_projection(layer, [&](const std::string& name, Linear& linear) {
        auto [rows, cols] = shape_of(name);
        out.push_back({prefix + name + ".weight", {rows, cols}, &linear.mutable_weight(), &linear, Init::normal});
        bool has_bias = name.rfind("self_attn.", 0) == 0 ? c.attention_bias : c.mlp_bias;
        if (has_bias) out.push_back({prefix + name + ".bias", {rows}, &linear.mutable_bias(), nullptr, Init::zeros});
      });
      out.push_back({prefix + "input_layernorm.weight", {h}, &layer.input_layernorm, nullptr, Init::ones});
      out.push_back({prefix + "post_attention_layernorm.weight", {h}, &layer.post_attention_layernorm, nullptr, Init::ones});
    }
    out.push_back({"model.norm.weight", {h}, &norm, nullptr, Init::ones});
    if (!c.tie_word_embeddings) {
      out.push_back({"lm_head.weight", {c.vocab_size, h}, &lm_head.mutable_weight(), &lm_head, Init::normal});
    }
    return out;
  }

  // Builds an Impl with empty layers for `config` and `options`.
  static Result<std::unique_ptr<Impl>> make(const LlamaConfig& config, const ModelOptions& options) {
    CAIRN_RETURN_IF_ERROR(config.validate());
    auto device = parse_device(options.device);
    if (!device.ok()) return device.status();
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    impl->dtype = scalar_type_of(options.dtype);
    impl->device = *device;
    impl->layers.resize(static_cast<size_t>(config.num_hidden_layers));
    impl->inv_freq = detail::rope_inverse_frequencies(config).to(impl->device);
    return impl;
  }

  void tie_head() {
    if (config.tie_word_embeddings) lm_head.mutable_weight() = embed_tokens;
  }

  // The CPU training path (grad on, training mode, no KV cache) computes with the row-wise kernels
  // and blocked products of model/detail/row_blocks.h, split over the ATen threads (one BLAS
  // thread here). Inference keeps the plain ATen ops, and so its bits.
  bool cpu_training(const at::Tensor& x, const KvCache* cache) const {
    return cache == nullptr && training && x.device().is_cpu() && at::GradMode::is_enabled();
  }

  at::Tensor normed(const at::Tensor& x, const at::Tensor& weight, const KvCache* cache) const {
    if (cpu_training(x, cache) && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat) {
      return detail::rms_norm_rows(x, weight, config.rms_norm_eps);
    }
    return rms_norm(x, weight, config.rms_norm_eps);
  }

  at::Tensor attention(const Layer& layer, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& blocked, KvCache* cache, size_t layer_index) const {
    const LlamaConfig& c = config;
    const int64_t batch = x.size(0), length = x.size(1), heads = c.num_attention_heads,
                  kv_heads = c.num_key_value_heads, head_dim = c.head_dim, group = heads / kv_heads;
    const bool blocked_products = cpu_training(x, cache);
    auto rope = [&](const at::Tensor& t) {
      const bool rows = blocked_products && t.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat &&
                        cos.size(0) == t.size(0);
      return rows ? detail::rope_rows(t, cos, sin) : apply_rope(t, cos, sin);
    };
    at::Tensor q = rope(project(layer.q_proj, x, cache).view({batch, length, heads, head_dim}));
    at::Tensor k = rope(project(layer.k_proj, x, cache).view({batch, length, kv_heads, head_dim}));
    at::Tensor v = project(layer.v_proj, x, cache).view({batch, length, kv_heads, head_dim});
    if (blocked_products && q.scalar_type() == at::kFloat && !(c.attention_dropout > 0)) {
      at::Tensor mask = blocked.defined() ? blocked.view({blocked.size(0), length, length}) : at::Tensor();
      at::Tensor out = detail::attention_rows(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(head_dim)));
      return layer.o_proj.forward(out, training);
    }
    // Grouped-query attention without repeating keys and values: the `group` query heads that
    // share kv head j (heads j*group .. j*group+group-1, as transformers' repeat_kv pairs them)
    // become `group * length` query rows against that kv head.
    q = q.view({batch, length, kv_heads, group, head_dim}).permute({0, 2, 3, 1, 4}).reshape({batch, kv_heads, group * length, head_dim});
    k = k.transpose(1, 2);  // [batch, kv_heads, length, head_dim]
    v = v.transpose(1, 2);
    if (cache != nullptr) {
      const int64_t past = cache->length_, total = past + length;
      at::Tensor& keys = cache->keys_[layer_index];
      at::Tensor& values = cache->values_[layer_index];
      keys.narrow(2, past, length).copy_(k);
      values.narrow(2, past, length).copy_(v);
      k = keys.narrow(2, 0, total);
      v = values.narrow(2, 0, total);
      // One new position without a mask: the decode kernel that forward_paged also uses.
      if (length == 1 && !blocked.defined() && decode_kernel_applies(q)) {
        return project(layer.o_proj, cached_decode_attention(q, keys, values, total, c), cache);
      }
    }
    const int64_t keys_len = k.size(2);
    // Training on the CPU: the two products and their backward split over batch * kv heads.
    auto matmul = [blocked_products](const at::Tensor& a, const at::Tensor& b) {
      return blocked_products ? detail::blocked_matmul(a, b) : at::matmul(a, b);
    };
    at::Tensor scores = matmul(q, k.transpose(-2, -1));
    scores.mul_(1.0 / std::sqrt(static_cast<double>(head_dim)));
    if (blocked.defined()) {
      scores.view({batch, kv_heads, group, length, keys_len}).masked_fill_(blocked, lowest_value(scores.scalar_type()));
    }
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    if (training && c.attention_dropout > 0) probs = at::dropout(probs, c.attention_dropout, /*train=*/true);
    at::Tensor out = matmul(probs, v)
                         .view({batch, kv_heads, group, length, head_dim})
                         .permute({0, 3, 1, 2, 4})
                         .reshape({batch, length, heads * head_dim});
    return project(layer.o_proj, out, cache);
  }

  at::Tensor mlp(const Layer& layer, const at::Tensor& x, const KvCache* cache) const {
    return project(layer.down_proj,
                   at::silu(project(layer.gate_proj, x, cache)) * project(layer.up_proj, x, cache), cache);
  }

  // linear.forward(x), except that inference (grad off) with a KV cache, as in generate(), splits
  // dense float32 products by output features over the ATen threads as forward_paged does
  // (detail/engine_linear.h), so single-request decoding is as fast as the engine's.
  at::Tensor project(const Linear& linear, const at::Tensor& x, const KvCache* cache) const {
    if (cache == nullptr || training || at::GradMode::is_enabled()) return linear.forward(x, training);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    at::Tensor y = detail::column_blocked_linear(linear, x.reshape({-1, shape.back()}));
    shape.back() = y.size(-1);
    return y.view(shape);
  }
};

namespace detail {

at::Tensor rope_inverse_frequencies(const LlamaConfig& config) {
  // Each step as transformers writes it, in float32, so the frequencies agree bit for bit.
  const int64_t dim = config.head_dim;
  const RopeParameters& rope = config.rope;
  at::Tensor exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = at::reciprocal(at::pow(rope.theta, exponent));
  switch (rope.type) {
    case RopeType::standard:
      return inv_freq;
    case RopeType::linear:
      return inv_freq / rope.factor;
    case RopeType::llama3: {
      const double old_context = static_cast<double>(rope.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / rope.low_freq_factor;
      const double high_freq_wavelen = old_context / rope.high_freq_factor;
      at::Tensor wavelen = at::reciprocal(inv_freq) * (2 * M_PI);
      at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
      at::Tensor smooth =
          (at::reciprocal(wavelen) * old_context - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
      at::Tensor medium = (wavelen < high_freq_wavelen).logical_not() & (wavelen > low_freq_wavelen).logical_not();
      return at::where(medium, smoothed, scaled);
    }
  }
  return inv_freq;
}

}  // namespace detail

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::LlamaModel(LlamaModel&&) noexcept = default;
LlamaModel& LlamaModel::operator=(LlamaModel&&) noexcept = default;
LlamaModel::~LlamaModel() = default;

Result<LlamaModel> LlamaModel::random(const LlamaConfig& config, const ModelOptions& options, uint64_t seed) {
  try {
    auto impl = Impl::make(config, options);
    if (!impl.ok()) return impl.status();
    Impl& m = **impl;
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    const auto target = at::TensorOptions().dtype(m.dtype).device(m.device);
    for (Slot& slot : m.slots()) {
      at::Tensor value;
      switch (slot.init) {
        case Init::normal: value = at::normal(0.0, config.initializer_range, slot.shape, generator); break;
        case Init::ones: value = at::ones(slot.shape); break;
        case Init::zeros: value = at::zeros(slot.shape); break;
      }
      *slot.tensor = value.to(target);
    }
    if (config.pad_token_id) m.embed_tokens[*config.pad_token_id].zero_();
    m.tie_head();
    return LlamaModel(std::move(*impl));
  } catch (...) {
    return detail::current_exception_status("LlamaModel::random");
  }
}

Result<LlamaModel> LlamaModel::from_weights(const LlamaConfig& config, const std::map<std::string, at::Tensor>& weights,
                                            const ModelOptions& options) {
  try {
    auto impl = Impl::make(config, options);
    if (!impl.ok()) return impl.status();
    Impl& m = **impl;
    const auto target = at::TensorOptions().dtype(m.dtype).device(m.device);
    std::set<std::string> used;
    for (Slot& slot : m.slots()) {
      auto it = weights.find(slot.name);
      if (it == weights.end()) {
        return error(Code::invalid_argument, "tensor \"" + slot.name + "\" is missing");
      }
      if (it->second.sizes() != at::IntArrayRef(slot.shape)) {
        return error(Code::invalid_argument, "tensor \"" + slot.name + "\" has shape " + shape_text(it->second.sizes()) +
                                                 " but the config needs " + shape_text(slot.shape));
      }
      if (!at::isFloatingType(it->second.scalar_type())) {
        return error(Code::invalid_argument, "tensor \"" + slot.name + "\" is not floating point");
      }
      *slot.tensor = it->second.detach().to(target);
      used.insert(slot.name);
    }
    for (const auto& [name, tensor] : weights) {
      if (used.count(name) != 0) continue;
      static const std::string kInvFreq = ".rotary_emb.inv_freq";
      const bool ignored =
          (config.tie_word_embeddings && name == "lm_head.weight") ||
          (name.size() >= kInvFreq.size() && name.compare(name.size() - kInvFreq.size(), kInvFreq.size(), kInvFreq) == 0);
      if (!ignored) {
        return error(Code::invalid_argument,
                     "tensor \"" + name + "\" is not part of a LlamaForCausalLM with this config");
      }
    }
    m.tie_head();
    return LlamaModel(std::move(*impl));
  } catch (...) {
    return detail::current_exception_status("LlamaModel::from_weights");
  }
}

const LlamaConfig& LlamaModel::config() const { return impl_->config; }
at::ScalarType LlamaModel::dtype() const { return impl_->dtype; }
at::Device LlamaModel::device() const { return impl_->device; }
void LlamaModel::set_training(bool training) { impl_->training = training; }
bool LlamaModel::training() const { return impl_->training; }
void LlamaModel::set_gradient_checkpointing(bool enabled) { impl_->gradient_checkpointing = enabled; }
bool LlamaModel::gradient_checkpointing() const { return impl_->gradient_checkpointing; }

Result<KvCache> LlamaModel::new_cache(int64_t batch, int64_t capacity) const {
  if (batch <= 0 || capacity <= 0) {
    return error(Code::invalid_argument, "KV cache batch (" + std::to_string(batch) + ") and capacity (" +
                                             std::to_string(capacity) + ") must be positive");
  }
  try {
    const LlamaConfig& c = impl_->config;
    KvCache cache;
    const auto options = at::TensorOptions().dtype(impl_->dtype).device(impl_->device);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      cache.keys_.push_back(at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, options));
      cache.values_.push_back(at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, options));
    }
    cache.batch_ = batch;
    cache.capacity_ = capacity;
    return cache;
  } catch (...) {
    return detail::current_exception_status("LlamaModel::new_cache");
  }
}

Result<at::Tensor> LlamaModel::forward(const ForwardInput& input, KvCache* cache) const {
  const Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  auto invalid = [](const std::string& what) { return error(Code::invalid_argument, "forward: " + what); };
  try {
    const at::Tensor& raw_ids = input.input_ids;
    if (!raw_ids.defined() || raw_ids.dim() != 2 || !at::isIntegralType(raw_ids.scalar_type(), /*includeBool=*/false)) {
      return invalid("input_ids must be a 2-D integer tensor [batch, length]");
    }
    const int64_t batch = raw_ids.size(0), length = raw_ids.size(1);
    if (batch == 0 || length == 0) return invalid("input_ids " + shape_text(raw_ids.sizes()) + " is empty");
    at::Tensor ids = raw_ids.to(m.device, at::kLong);
    auto [min_id, max_id] = at::aminmax(ids);
    const int64_t lo = min_id.item<int64_t>(), hi = max_id.item<int64_t>();
    if (lo < 0 || hi >= c.vocab_size) {
      return invalid("token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                     std::to_string(c.vocab_size) + ")");
    }
    const int64_t past = cache != nullptr ? cache->length_ : 0;
    const int64_t total = past + length;
    if (cache != nullptr) {
      if (static_cast<int64_t>(cache->keys_.size()) != c.num_hidden_layers || cache->batch_ != batch) {
        return invalid("the KV cache was made for batch " + std::to_string(cache->batch_) + " (input has " +
                       std::to_string(batch) + ") or for another model");
      }
      if (total > cache->capacity_) {
        return invalid("the KV cache holds " + std::to_string(cache->capacity_) + " positions; " +
                       std::to_string(past) + " cached + " + std::to_string(length) + " new do not fit");
      }
    }
    const auto long_options = at::TensorOptions().dtype(at::kLong).device(m.device);

    at::Tensor positions;
    if (input.position_ids.defined()) {
      if (input.position_ids.sizes() != raw_ids.sizes()) {
        return invalid("position_ids " + shape_text(input.position_ids.sizes()) + " must match input_ids " +
                       shape_text(raw_ids.sizes()));
      }
      positions = input.position_ids.to(m.device, at::kLong);
    } else {
      positions = at::arange(past, total, long_options).unsqueeze(0).expand({batch, length});
    }

    // blocked: true where a query may not attend to a key; [batch or 1, 1, 1, length, total] so
    // it broadcasts over the kv heads and query groups of the scores.
    at::Tensor blocked;
    at::Tensor causal_blocked;
    if (input.attention_mask.defined() || length > 1) {
      at::Tensor key_index = at::arange(total, long_options).unsqueeze(0);
      at::Tensor query_index = at::arange(past, total, long_options).unsqueeze(1);
      causal_blocked = key_index > query_index;  // [length, total]
    }
    if (input.attention_mask.defined()) {
      const at::Tensor& mask = input.attention_mask;
      if (mask.dim() != 2 || mask.size(0) != batch || mask.size(1) != total) {
        return invalid("attention_mask " + shape_text(mask.sizes()) + " must be [batch, cached + new] = [" +
                       std::to_string(batch) + ", " + std::to_string(total) + "]");
      }
      at::Tensor docs = mask.to(m.device, at::kLong);
      at::Tensor key_docs = docs.unsqueeze(1);                          // [batch, 1, total]
      at::Tensor query_docs = docs.narrow(1, past, length).unsqueeze(2);  // [batch, length, 1]
      blocked = causal_blocked.unsqueeze(0) | (key_docs != query_docs) | (key_docs == 0);
      blocked = blocked.view({batch, 1, 1, length, total});
    } else if (length > 1) {
      blocked = causal_blocked.view({1, 1, 1, length, total});
    }

    // Rotary tables in float32, rounded to the model dtype, as transformers does.
    at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * m.inv_freq;  // [batch, length, head_dim/2]
    at::Tensor angles = at::cat({freqs, freqs}, -1);
    at::Tensor cos = angles.cos().to(m.dtype).unsqueeze(2);  // [batch, length, 1, head_dim]
    at::Tensor sin = angles.sin().to(m.dtype).unsqueeze(2);

    const int64_t padding_idx = c.pad_token_id ? *c.pad_token_id : -1;
    at::Tensor hidden = at::embedding(m.embed_tokens, ids, padding_idx);
    const bool checkpointing = m.gradient_checkpointing && cache == nullptr && at::GradMode::is_enabled();
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const Layer& layer = m.layers[i];
      // Captures by value: a checkpointed layer runs again during backward, after forward returned.
      auto decoder_layer = [&m, &layer, cos, sin, blocked, cache, i](const at::Tensor& x) {
        at::Tensor h = x + m.attention(layer, m.normed(x, layer.input_layernorm, cache), cos, sin, blocked, cache, i);
        return h + m.mlp(layer, m.normed(h, layer.post_attention_layernorm, cache), cache);
      };
      hidden = checkpointing ? detail::checkpointed(decoder_layer, hidden, m.device) : decoder_layer(hidden);
    }
    hidden = m.normed(hidden, m.norm, cache);
    if (input.last_position_only) hidden = hidden.narrow(1, length - 1, 1);
    if (input.hidden_states_only) {
      if (cache != nullptr) cache->length_ = total;
      return hidden;
    }
    at::Tensor logits = m.project(m.lm_head, hidden, cache);
    if (cache != nullptr) cache->length_ = total;
    return logits;
  } catch (...) {
    return detail::current_exception_status("LlamaModel::forward");
  }
}

std::vector<std::pair<std::string, at::Tensor>> LlamaModel::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (Slot& slot : impl_->slots()) {
    if (slot.tensor->defined()) out.emplace_back(slot.name, *slot.tensor);
  }
  for (const auto& [name, linear] : linear_layers()) {
    if (!linear->lora()) continue;
    out.emplace_back(name + ".lora_A.weight", linear->lora()->a);
    out.emplace_back(name + ".lora_B.weight", linear->lora()->b);
  }
  return out;
}

std::vector<at::Tensor> LlamaModel::trainable_parameters() const {
  std::vector<at::Tensor> out;
  for (auto& [name, tensor] : named_parameters()) {
    if (tensor.requires_grad()) out.push_back(tensor);
  }
  return out;
}

void LlamaModel::set_base_trainable(bool trainable) {
  for (Slot& slot : impl_->slots()) {
    if (slot.tensor->defined()) slot.tensor->requires_grad_(trainable);
  }
}

Result<std::vector<std::pair<std::string, at::Tensor>>> LlamaModel::checkpoint_weights() const {
  try {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (Slot& slot : impl_->slots()) {
      if (slot.tensor->defined()) {
        out.emplace_back(slot.name, *slot.tensor);
      } else if (slot.linear != nullptr) {
        out.emplace_back(slot.name, slot.linear->dense_weight(impl_->dtype));
      }
    }
    return out;
  } catch (...) {
    return detail::current_exception_status("LlamaModel::checkpoint_weights");
  }
}

namespace {

// A base linear layer over every row of a step, plus each adapter's term on the rows that use it.
// `index` is the layer's position in linear_layers() order.
at::Tensor paged_linear(const Linear& linear, const at::Tensor& x, const PagedBatch& batch, size_t index,
                        bool logit_rows = false) {
  at::Tensor y = detail::column_blocked_linear(linear, x);
  for (const PagedAdapterRows& adapter : batch.adapters) {
    const LoraWeights* lora = (*adapter.linears)[index];
    const at::Tensor& rows = logit_rows ? adapter.logit_rows : adapter.rows;
    if (lora == nullptr || rows.numel() == 0) continue;
    at::Tensor input = x.index_select(0, rows);
    if (input.scalar_type() != lora->a.scalar_type()) input = input.to(lora->a.scalar_type());
    at::Tensor delta = at::linear(at::linear(input, lora->a), lora->b);
    at::Tensor row_out = at::add(y.index_select(0, rows), delta.to(y.scalar_type()), lora->scale);
    y.index_copy_(0, rows, row_out);
  }
  return y;
}

}  // namespace

Result<at::Tensor> LlamaModel::forward_paged(const PagedBatch& batch) const {
  const Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  try {
    const int64_t tokens = batch.input_ids.size(0), heads = c.num_attention_heads, kv_heads = c.num_key_value_heads,
                  head_dim = c.head_dim, group = heads / kv_heads;
    const size_t per_layer = 7;
    at::Tensor freqs = batch.positions.to(at::kFloat).unsqueeze(-1) * m.inv_freq;  // [tokens, head_dim/2]
    at::Tensor angles = at::cat({freqs, freqs}, -1);
    at::Tensor cos = angles.cos().to(m.dtype).unsqueeze(1);  // [tokens, 1, head_dim]
    at::Tensor sin = angles.sin().to(m.dtype).unsqueeze(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    const double lowest = lowest_value(m.dtype);

    const int64_t padding_idx = c.pad_token_id ? *c.pad_token_id : -1;
    at::Tensor hidden = at::embedding(m.embed_tokens, batch.input_ids, padding_idx);  // [tokens, hidden]
    // Rows of one new position go through the decode kernel, as in forward() with a cache.
    const bool use_decode_kernel = decode_kernel_applies(hidden);
    detail::DecodeAttentionShape decode_shape;
    decode_shape.heads = heads;
    decode_shape.kv_heads = kv_heads;
    decode_shape.head_dim = head_dim;
    decode_shape.slot_stride = kv_heads * head_dim;
    decode_shape.head_stride = head_dim;
    decode_shape.scale = static_cast<float>(scale);
    std::vector<detail::DecodeAttentionSequence> decode;
    bool needs_gather = false;  // a sequence outside the pool's consecutive blocks takes the matmuls
    for (const PagedSequence& seq : batch.sequences) {
      needs_gather |= seq.pool_offset < 0 && !(use_decode_kernel && seq.length == 1);
    }
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const Layer& layer = m.layers[i];
      const size_t base = i * per_layer;
      at::Tensor x = rms_norm(hidden, layer.input_layernorm, c.rms_norm_eps);
      at::Tensor q = apply_rope(paged_linear(layer.q_proj, x, batch, base + 0).view({tokens, heads, head_dim}), cos, sin);
      at::Tensor k = apply_rope(paged_linear(layer.k_proj, x, batch, base + 1).view({tokens, kv_heads, head_dim}), cos, sin);
      at::Tensor v = paged_linear(layer.v_proj, x, batch, base + 2).view({tokens, kv_heads, head_dim});
      at::Tensor& pool_keys = batch.pool->keys[i];
      at::Tensor& pool_values = batch.pool->values[i];
      pool_keys.index_copy_(0, batch.new_slots, k);
      pool_values.index_copy_(0, batch.new_slots, v);
      // The keys and values of sequences whose blocks are not consecutive, in one gather:
      // [sum of their totals, kv_heads, head_dim]. The others read the pool in place.
      at::Tensor keys, values;
      if (needs_gather) {
        keys = pool_keys.index_select(0, batch.gather_slots);
        values = pool_values.index_select(0, batch.gather_slots);
      }
      // Each sequence's attention as forward() computes it for one sequence with a cache: one new
      // position through the same decode kernel, reading the pool in place; longer rows with the
      // same layouts and the same batched matmuls over its kv heads.
      at::Tensor attended = at::empty({tokens, heads * head_dim}, q.options());
      if (use_decode_kernel) {
        q = q.contiguous();
        decode.clear();
        for (const PagedSequence& seq : batch.sequences) {
          if (seq.length != 1) continue;
          detail::DecodeAttentionSequence d;
          d.query = q.data_ptr<float>() + seq.token_offset * heads * head_dim;
          d.out = attended.data_ptr<float>() + seq.token_offset * heads * head_dim;
          d.keys = pool_keys.data_ptr<float>();
          d.values = pool_values.data_ptr<float>();
          if (seq.pool_offset >= 0) {
            d.first_slot = seq.pool_offset;
          } else {
            d.slots = batch.gather_slots.data_ptr<int64_t>() + seq.gather_offset;
          }
          d.total = seq.past + 1;
          decode.push_back(d);
        }
        detail::decode_attention(decode_shape, decode);
      }
      for (size_t s = 0; s < batch.sequences.size(); ++s) {
        const PagedSequence& seq = batch.sequences[s];
        const int64_t length = seq.length, total = seq.past + seq.length;
        if (use_decode_kernel && length == 1) continue;
        at::Tensor sq = q.narrow(0, seq.token_offset, length)
                            .view({length, kv_heads, group, head_dim})
                            .permute({1, 2, 0, 3})
                            .reshape({kv_heads, group * length, head_dim});
        const bool in_place = seq.pool_offset >= 0;
        at::Tensor sk = (in_place ? pool_keys.narrow(0, seq.pool_offset, total) : keys.narrow(0, seq.gather_offset, total))
                            .permute({1, 0, 2});  // [kv_heads, total, head_dim]
        at::Tensor sv =
            (in_place ? pool_values.narrow(0, seq.pool_offset, total) : values.narrow(0, seq.gather_offset, total))
                .permute({1, 0, 2});
        at::Tensor scores = at::bmm(sq, sk.transpose(1, 2));
        scores.mul_(scale);
        if (length > 1) {
          const auto long_options = at::TensorOptions().dtype(at::kLong).device(m.device);
          at::Tensor blocked = at::arange(total, long_options).unsqueeze(0) >
                               at::arange(seq.past, total, long_options).unsqueeze(1);
          scores.view({kv_heads, group, length, total}).masked_fill_(blocked.view({1, 1, length, total}), lowest);
        }
        at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(sq.scalar_type());
        attended.narrow(0, seq.token_offset, length)
            .view({length, kv_heads, group, head_dim})
            .permute({1, 2, 0, 3})
            .copy_(at::bmm(probs, sv).view({kv_heads, group, length, head_dim}));
      }
      hidden = hidden + paged_linear(layer.o_proj, attended, batch, base + 3);
      at::Tensor y = rms_norm(hidden, layer.post_attention_layernorm, c.rms_norm_eps);
      at::Tensor gated = at::silu(paged_linear(layer.gate_proj, y, batch, base + 4)) *
                         paged_linear(layer.up_proj, y, batch, base + 5);
      hidden = hidden + paged_linear(layer.down_proj, gated, batch, base + 6);
    }
    hidden = rms_norm(hidden.index_select(0, batch.logit_rows), m.norm, c.rms_norm_eps);
    return paged_linear(m.lm_head, hidden, batch, m.layers.size() * per_layer, /*logit_rows=*/true);
  } catch (...) {
    return detail::current_exception_status("LlamaModel::forward_paged");
  }
}

std::vector<std::pair<std::string, Linear*>> LlamaModel::linear_layers() { return collect_linears<Linear>(*impl_); }

std::vector<std::pair<std::string, const Linear*>> LlamaModel::linear_layers() const {
  return collect_linears<const Linear>(static_cast<const Impl&>(*impl_));
}

}  // namespace cairn
