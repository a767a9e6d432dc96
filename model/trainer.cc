#include "model/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "model/detail/data_util.h"
#include "model/detail/files.h"
#include "model/detail/torch_error.h"
#include "model/detail/train_loss.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/optim.h"
#include "model/qlora.h"
#include "model/safetensors_torch.h"
#include "model/tokenizer.h"
#include "model/trainer_torch.h"
#include "runtime/collective.h"

namespace cairn {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kAdapterFile = "adapter_model.safetensors";
constexpr const char* kPeftPrefix = "base_model.model.";
constexpr int kStateVersion = 1;

// Guards libtorch's default generators while a trainer's dropout state is swapped into them:
// trainers of one process (rank threads) take turns in forward/backward when they use dropout.
std::mutex& dropout_generator_mutex() {
  static std::mutex mutex;
  return mutex;
}

// transformers' get_decay_parameter_names: no weight decay for biases and norm weights.
bool decays(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return !ends_with(".bias") && name.find("norm") == std::string::npos;
}

std::string hex_encode(const uint8_t* data, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 15];
  }
  return out;
}

std::optional<std::vector<uint8_t>> hex_decode(const std::string& text) {
  if (text.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::vector<uint8_t> out(text.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return out;
}

// One micro-batch as tensors on the model's device.
struct BatchTensors {
  at::Tensor input_ids;       // [batch, length] int64
  at::Tensor position_ids;    // [batch, length] int64
  at::Tensor attention_mask;  // [batch, length] int64 document ids, 0 for padding
  at::Tensor positions;       // [n] flat indices (b * length + i) of positions that predict a label
  at::Tensor targets;         // [n] int64: labels[b][i + 1]
  int64_t tokens = 0;         // n
};

Result<BatchTensors> to_tensors(const std::vector<PackedRow>& rows, at::Device device) {
  if (rows.empty()) return error(Code::invalid_argument, "micro-batch is empty");
  const size_t length = rows[0].input_ids.size();
  if (length == 0) return error(Code::invalid_argument, "micro-batch row 0 is empty");
  const int64_t batch = static_cast<int64_t>(rows.size()), len = static_cast<int64_t>(length);
  at::Tensor ids = at::empty({batch, len}, at::kLong), pos = at::empty({batch, len}, at::kLong),
             mask = at::zeros({batch, len}, at::kLong);
  int64_t* ids_p = ids.data_ptr<int64_t>();
  int64_t* pos_p = pos.data_ptr<int64_t>();
  int64_t* mask_p = mask.data_ptr<int64_t>();
  std::vector<int64_t> positions, targets;
  for (size_t r = 0; r < rows.size(); ++r) {
    const PackedRow& row = rows[r];
    if (row.input_ids.size() != length || row.labels.size() != length || row.position_ids.size() != length) {
      return error(Code::invalid_argument, "micro-batch row " + std::to_string(r) +
                                               ": input_ids, labels and position_ids must all have the " +
                                               std::to_string(length) + " positions of row 0");
    }
    const int64_t base = static_cast<int64_t>(r) * len;
    for (int64_t i = 0; i < len; ++i) {
      ids_p[base + i] = row.input_ids[i];
      pos_p[base + i] = row.position_ids[i];
    }
    int64_t at_pos = 0, doc = 1;
    for (int32_t doc_len : row.doc_lens) {
      if (doc_len < 0 || at_pos + doc_len > len) {
        return error(Code::invalid_argument,
                     "micro-batch row " + std::to_string(r) + ": doc_lens add up to more than the row's length");
      }
      for (int64_t i = 0; i < doc_len; ++i) mask_p[base + at_pos + i] = doc;
      at_pos += doc_len;
      ++doc;
    }
    for (int64_t i = 0; i + 1 < len; ++i) {
      const int32_t label = row.labels[i + 1];
      if (label == kIgnoreLabel) continue;
      positions.push_back(base + i);
      targets.push_back(label);
    }
  }
  BatchTensors out;
  out.tokens = static_cast<int64_t>(positions.size());
  out.input_ids = ids.to(device);
  out.position_ids = pos.to(device);
  out.attention_mask = mask.to(device);
  out.positions = at::tensor(positions, at::kLong).to(device);
  out.targets = at::tensor(targets, at::kLong).to(device);
  return out;
}

// A post hook on a parameter's gradient accumulator: runs `ready` once its gradient for the
// current backward has been added in.
class GradientReadyHook : public torch::autograd::FunctionPostHook {
 public:
  explicit GradientReadyHook(std::function<void()> ready) : ready_(std::move(ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    ready_();
    return outputs;
  }

 private:
  std::function<void()> ready_;
};

std::vector<int64_t> contiguous_strides(at::IntArrayRef sizes) {
  std::vector<int64_t> strides(sizes.size(), 1);
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * sizes[i + 1];
  return strides;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Trainer::Impl {
  // Constant after create().
  TrainJobConfig config;
  TrainerInit init;
  TrainerOptions options;
  std::optional<LlamaModel> model;
  std::optional<LoraConfig> lora;  // set for lora / qlora
  at::Device device{at::kCPU};
  Linear* head = nullptr;  // the model's lm_head
  bool uses_dropout = false;

  // The trainable parameters, laid out back to back in `flat_params` / `flat_grads` in reverse
  // registration order (the order backward finishes them), so buckets fill front to back.
  struct Param {
    std::string name;
    at::Tensor tensor;  // the model's parameter, a view of flat_params
    int64_t offset = 0;
    int64_t numel = 0;
    size_t bucket = 0;
  };
  std::vector<Param> params;  // layout order
  at::Tensor flat_params, flat_grads, exp_avg, exp_avg_sq;
  std::vector<ElementRange> decayed;

  struct Bucket {
    int64_t offset = 0;
    int64_t numel = 0;
    size_t params = 0;
    // Gradients final in the current step's last backward; reset by reduce_gradients().
    size_t ready = 0;
  };
  std::vector<Bucket> buckets;
  std::unique_ptr<AsyncAllReduce> async;
  // Keep the hooked gradient accumulators alive (autograd holds them weakly).
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  bool overlapping = false;  // the current backward submits buckets as they become ready
  size_t next_bucket = 0;    // buckets are submitted in index order, the same on every rank

  // The step in progress.
  int64_t micro_batches = 0;
  int64_t tokens = 0;
  double loss_sum = 0.0;
  double seconds = 0.0;

  int64_t steps_done = 0;
  at::Tensor rng_state;  // the dropout generator's state (uint8), swapped in while training

  Status validate_and_setup();
  Status build_model();
  Status layout_parameters();
  void hook_gradients();
  void on_gradient_ready(size_t param_index);
  void submit_ready_buckets();
  Status reduce_gradients();
  double learning_rate(int64_t step) const { return scheduled_learning_rate(config, init.schedule, step); }

  bool last_micro_batch() const { return micro_batches + 1 >= config.gradient_accumulation_steps; }
  int world() const { return options.world_size; }

  Result<at::Tensor> loss_of(const BatchTensors& batch) const;
  std::vector<std::pair<std::string, at::Tensor>> named_trainable() const;
  std::string digest_of(const std::vector<std::pair<std::string, at::Tensor>>& tensors) const;
};

Status Trainer::Impl::validate_and_setup() {
  const TrainerOptions& o = options;
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return error(Code::invalid_argument, "trainer: rank " + std::to_string(o.rank) + " is outside world_size " +
                                             std::to_string(o.world_size));
  }
  if (o.world_size > 1) {
    if (o.collective == nullptr) {
      return error(Code::invalid_argument, "trainer: world_size " + std::to_string(o.world_size) + " needs a collective");
    }
    if (o.collective->world_size() != o.world_size || o.collective->rank() != o.rank) {
      return error(Code::invalid_argument, "trainer: the collective is rank " + std::to_string(o.collective->rank()) +
                                               " of " + std::to_string(o.collective->world_size()) +
                                               ", the options say rank " + std::to_string(o.rank) + " of " +
                                               std::to_string(o.world_size));
    }
  }
  if (o.bucket_bytes < sizeof(float)) return error(Code::invalid_argument, "trainer: bucket_bytes must be at least 4");
  if (init.schedule.total_steps <= 0) {
    return error(Code::invalid_argument, "trainer: the schedule's total_steps must be positive, got " +
                                             std::to_string(init.schedule.total_steps));
  }
  if (config.optimizer != OptimizerKind::adamw) return error(Code::invalid_argument, "optimizer: only adamw is supported");
  if (config.gradient_accumulation_steps < 1) {
    return error(Code::invalid_argument, "gradient_accumulation_steps: must be at least 1");
  }
  try {
    device = at::Device(o.device);
  } catch (const std::exception&) {
    return error(Code::invalid_argument, "trainer: device \"" + o.device + "\": expected \"cpu\", \"cuda\" or \"cuda:N\"");
  }
  if (o.world_size > 1 && !device.is_cpu()) {
    // Collective::all_reduce_sum takes host floats; device gradients need the NCCL communicator.
    return error(Code::invalid_argument, "trainer: data-parallel training on device \"" + o.device +
                                             "\" is not supported yet (gradients are reduced as host floats); "
                                             "use num_workers: 1 or device: cpu");
  }
  if (config.fp16) {
    return error(Code::invalid_argument, "fp16: float16 training is not supported (it needs loss scaling); use bf16 on a GPU");
  }
  if (config.bf16 == Bf16Mode::on && !device.is_cuda()) {
    return error(Code::invalid_argument,
                 "bf16: true needs a CUDA device (device \"" + o.device +
                     "\"): bfloat16 matmuls on this CPU build are slower than float32; use bf16: false or auto");
  }
  if (o.num_threads > 0) at::set_num_threads(o.num_threads);
  return Status::ok_status();
}

Status Trainer::Impl::build_model() {
  ModelOptions model_options;
  model_options.device = options.device;
  // bf16 (on CUDA only, see validate_and_setup): weights, gradients and optimizer state all in
  // bfloat16, without float32 master weights; softmax and norms still compute in float32.
  const bool bf16 = device.is_cuda() && config.bf16 != Bf16Mode::off;
  model_options.dtype = bf16 ? Precision::bfloat16 : Precision::float32;
  if (!init.base_model_dir.empty()) {
    auto loaded = load_llama(init.base_model_dir, model_options);
    if (!loaded.ok()) return loaded.status();
    model.emplace(std::move(*loaded));
  } else {
    if (!config.architecture) {
      return error(Code::invalid_argument, "trainer: neither a base model directory nor an architecture block");
    }
    if (init.tokenizer_path.empty()) {
      return error(Code::invalid_argument, "trainer: a from-scratch model needs the tokenizer (init.tokenizer_path)");
    }
    auto tokenizer = Tokenizer::load(init.tokenizer_path);
    if (!tokenizer.ok()) return tokenizer.status();
    auto llama_config = to_llama_config(*config.architecture, static_cast<int64_t>(tokenizer->vocab_size()),
                                        config.sequence_len);
    if (!llama_config.ok()) return llama_config.status();
    if (tokenizer->bos_id()) llama_config->bos_token_id = *tokenizer->bos_id();
    if (tokenizer->eos_id()) llama_config->eos_token_ids = {*tokenizer->eos_id()};
    auto random = LlamaModel::random(*llama_config, model_options, config.seed);
    if (!random.ok()) return random.status();
    model.emplace(std::move(*random));
  }
  if (config.adapter == AdapterKind::none) {
    model->set_base_trainable(true);
  } else {
    if (config.adapter == AdapterKind::qlora) CAIRN_RETURN_IF_ERROR(quantize_model_nf4(*model));
    LoraConfig c;
    c.rank = config.lora_r;
    c.alpha = config.lora_alpha;
    c.dropout = config.lora_dropout;
    c.target_modules = config.lora_target_linear ? std::vector<std::string>{"all-linear"} : config.lora_target_modules;
    c.base_model_name_or_path = init.base_model_reference.empty() ? init.base_model_dir : init.base_model_reference;
    CAIRN_RETURN_IF_ERROR(attach_lora(*model, c, config.seed));
    lora = c;
  }
  model->set_training(true);
  model->set_gradient_checkpointing(config.gradient_checkpointing);
  for (auto& [name, linear] : model->linear_layers()) {
    if (name == "lm_head") head = linear;
  }
  uses_dropout = model->config().attention_dropout > 0 || (lora && lora->dropout > 0);
  at::Generator generator = at::globalContext().defaultGenerator(device).clone();
  generator.set_current_seed(config.seed + static_cast<uint64_t>(options.rank) * 0x9E3779B97F4A7C15ull);
  rng_state = generator.get_state();
  return Status::ok_status();
}

std::vector<std::pair<std::string, at::Tensor>> Trainer::Impl::named_trainable() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, tensor] : model->named_parameters()) {
    if (tensor.requires_grad()) out.emplace_back(name, tensor);
  }
  return out;
}

Status Trainer::Impl::layout_parameters() {
  auto trainable = named_trainable();
  if (trainable.empty()) return error(Code::invalid_argument, "trainer: the model has no trainable parameters");
  std::reverse(trainable.begin(), trainable.end());
  const at::ScalarType dtype = trainable[0].second.scalar_type();
  int64_t total = 0;
  for (auto& [name, tensor] : trainable) {
    if (tensor.scalar_type() != dtype) {
      return error(Code::internal, "trainer: parameter \"" + name + "\" has another dtype than the others");
    }
    params.push_back({name, tensor, total, tensor.numel(), 0});
    total += tensor.numel();
  }
  const auto tensor_options = at::TensorOptions().dtype(dtype).device(device);
  flat_params = at::empty({total}, tensor_options);
  flat_grads = at::zeros({total}, tensor_options);
  exp_avg = at::zeros({total}, tensor_options);
  exp_avg_sq = at::zeros({total}, tensor_options);
  {
    at::NoGradGuard no_grad;
    for (Param& p : params) {
      at::Tensor view = flat_params.narrow(0, p.offset, p.numel);
      view.copy_(p.tensor.reshape({-1}));
      // Re-point the parameter's storage (every handle to it, tied ones included) at the flat buffer.
      // A weight loaded without a copy is a detached tensor, which refuses metadata changes
      // unless allowed.
      p.tensor.unsafeGetTensorImpl()->set_allow_tensor_metadata_change(true);
      const std::vector<int64_t> sizes = p.tensor.sizes().vec();
      p.tensor.set_(flat_params.storage(), flat_params.storage_offset() + p.offset, sizes, contiguous_strides(sizes));
      p.tensor.mutable_grad() = flat_grads.narrow(0, p.offset, p.numel).view(p.tensor.sizes());
      if (decays(p.name)) {
        if (!decayed.empty() && decayed.back().second == p.offset) {
          decayed.back().second = p.offset + p.numel;
        } else {
          decayed.emplace_back(p.offset, p.offset + p.numel);
        }
      }
    }
  }
  // Buckets: consecutive parameters until bucket_bytes is reached (a parameter is never split).
  const int64_t bucket_elements = std::max<int64_t>(1, static_cast<int64_t>(options.bucket_bytes / flat_params.element_size()));
  for (Param& p : params) {
    if (buckets.empty() || buckets.back().numel >= bucket_elements) buckets.push_back({p.offset, 0, 0, 0});
    buckets.back().numel += p.numel;
    buckets.back().params += 1;
    p.bucket = buckets.size() - 1;
  }
  return Status::ok_status();
}

void Trainer::Impl::hook_gradients() {
  if (world() == 1 || !options.overlap_communication) return;
  async = std::make_unique<AsyncAllReduce>(*options.collective);
  for (size_t i = 0; i < params.size(); ++i) {
    std::shared_ptr<torch::autograd::Node> accumulator = torch::autograd::impl::grad_accumulator(params[i].tensor);
    // `this` outlives the hook: the Impl owns the accumulators, which own their hooks.
    accumulator->add_post_hook(std::make_unique<GradientReadyHook>([this, i] { on_gradient_ready(i); }));
    accumulators.push_back(std::move(accumulator));
  }
}

void Trainer::Impl::on_gradient_ready(size_t param_index) {
  if (!overlapping) return;
  Bucket& bucket = buckets[params[param_index].bucket];
  if (++bucket.ready == bucket.params) submit_ready_buckets();
}

void Trainer::Impl::submit_ready_buckets() {
  while (next_bucket < buckets.size() && buckets[next_bucket].ready >= buckets[next_bucket].params) {
    Bucket& bucket = buckets[next_bucket++];
    async->submit(flat_grads.data_ptr<float>() + bucket.offset, static_cast<size_t>(bucket.numel));
  }
}

Status Trainer::Impl::reduce_gradients() {
  if (world() == 1) return Status::ok_status();
  if (flat_grads.scalar_type() != at::kFloat || !flat_grads.device().is_cpu()) {
    return error(Code::invalid_argument, "trainer: data-parallel training needs float32 CPU gradients here");
  }
  if (async) {
    // Parameters that got no gradient this step never fired their hooks: their buckets go now,
    // still in index order.
    for (size_t b = next_bucket; b < buckets.size(); ++b) buckets[b].ready = buckets[b].params;
    submit_ready_buckets();
    overlapping = false;
    Status reduced = async->wait();
    // Ready for the next step's backward (bucket state is per step).
    next_bucket = 0;
    for (Bucket& bucket : buckets) bucket.ready = 0;
    CAIRN_RETURN_IF_ERROR(reduced);
  } else {
    for (const Bucket& bucket : buckets) {
      CAIRN_RETURN_IF_ERROR(options.collective->all_reduce_sum(flat_grads.data_ptr<float>() + bucket.offset,
                                                               static_cast<size_t>(bucket.numel)));
    }
  }
  return Status::ok_status();
}

Result<at::Tensor> Trainer::Impl::loss_of(const BatchTensors& batch) const {
  ForwardInput input;
  input.input_ids = batch.input_ids;
  input.position_ids = batch.position_ids;
  input.attention_mask = batch.attention_mask;
  input.hidden_states_only = true;
  auto hidden = model->forward(input);
  if (!hidden.ok()) return hidden.status();
  at::Tensor flat = hidden->reshape({-1, hidden->size(-1)}).index_select(0, batch.positions);
  constexpr int64_t kChunkLogits = int64_t{4} << 20;  // floats: 16 MiB
  const int64_t chunk = options.loss_chunk_tokens > 0
                            ? options.loss_chunk_tokens
                            : std::max<int64_t>(64, kChunkLogits / model->config().vocab_size);
  return detail::summed_cross_entropy(flat, *head, batch.targets, chunk, model->training());
}

std::string Trainer::Impl::digest_of(const std::vector<std::pair<std::string, at::Tensor>>& tensors) const {
  detail::Fnv1a64 hash;
  for (const auto& [name, tensor] : tensors) {
    at::Tensor bytes = tensor.detach().to(at::kCPU).contiguous();
    hash.str(name);
    hash.bytes(bytes.data_ptr(), bytes.numel() * bytes.element_size());
  }
  return hash.hex();
}

// ---------------------------------------------------------------------------------------------

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;
Trainer::~Trainer() {
  if (impl_ && impl_->async) (void)impl_->async->wait();
}

Result<std::unique_ptr<Trainer>> Trainer::create(const TrainJobConfig& config, const TrainerInit& init,
                                                 const TrainerOptions& options) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    impl->init = init;
    impl->options = options;
    CAIRN_RETURN_IF_ERROR(impl->validate_and_setup());
    CAIRN_RETURN_IF_ERROR(impl->build_model());
    CAIRN_RETURN_IF_ERROR(impl->layout_parameters());
    if (impl->world() > 1) {
      CAIRN_RETURN_IF_ERROR(options.collective->broadcast(impl->flat_params.data_ptr(),
                                                          impl->flat_params.numel() * impl->flat_params.element_size(), 0));
    }
    impl->hook_gradients();
    return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
  } catch (...) {
    return detail::current_exception_status("Trainer::create");
  }
}

Status Trainer::accumulate(const std::vector<PackedRow>& micro_batch) {
  Impl& m = *impl_;
  const auto start = std::chrono::steady_clock::now();
  if (m.micro_batches >= m.config.gradient_accumulation_steps) {
    // The previous accumulate() completed the step (and may have started its all-reduce).
    return error(Code::invalid_argument, "Trainer::accumulate: " + std::to_string(m.micro_batches) +
                                             " micro-batches (gradient_accumulation_steps) are accumulated; call "
                                             "step() first");
  }
  try {
    auto batch = to_tensors(micro_batch, m.device);
    if (!batch.ok()) return batch.status();
    // The accumulate() completing a step starts the gradient all-reduce during backward.
    m.overlapping = m.async != nullptr && m.last_micro_batch();
    auto run = [&]() -> Result<double> {
      auto loss = m.loss_of(*batch);
      if (!loss.ok()) return loss.status();
      const double value = loss->item<double>();
      if (loss->requires_grad()) loss->backward();
      return value;
    };
    Result<double> loss = 0.0;
    if (m.uses_dropout) {
      std::lock_guard<std::mutex> lock(dropout_generator_mutex());
      at::Generator generator = at::globalContext().defaultGenerator(m.device);
      at::Tensor own = generator.get_state();
      generator.set_state(m.rng_state);
      loss = run();
      m.rng_state = generator.get_state();
      generator.set_state(own);
    } else {
      loss = run();
    }
    if (!loss.ok()) {
      m.overlapping = false;
      return loss.status();
    }
    m.loss_sum += *loss;
    m.tokens += batch->tokens;
    m.micro_batches += 1;
  } catch (...) {
    m.overlapping = false;
    return detail::current_exception_status("Trainer::accumulate");
  }
  m.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Status::ok_status();
}

Result<StepStats> Trainer::step() {
  Impl& m = *impl_;
  // A rank whose shard ran out may take part in a step with nothing of its own (its gradients
  // are zero); a single worker has no step to take then.
  if (m.micro_batches == 0 && m.world() == 1) {
    return error(Code::invalid_argument, "Trainer::step: no accumulate() since the last step");
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    at::NoGradGuard no_grad;
    CAIRN_RETURN_IF_ERROR(m.reduce_gradients());
    double global_tokens = static_cast<double>(m.tokens), global_loss = m.loss_sum;
    if (m.world() > 1) {
      float sums[2] = {static_cast<float>(m.tokens), static_cast<float>(m.loss_sum)};
      CAIRN_RETURN_IF_ERROR(m.options.collective->all_reduce_sum(sums, 2));
      global_tokens = std::round(sums[0]);
      global_loss = sums[1];
    }
    if (global_tokens > 0) m.flat_grads.div_(global_tokens);
    const double grad_norm = clip_grad_norm(m.flat_grads, m.config.max_grad_norm);
    StepStats stats;
    stats.lr = m.learning_rate(m.steps_done);
    AdamWOptions adamw;
    adamw.lr = stats.lr;
    adamw.beta1 = m.config.adam_beta1;
    adamw.beta2 = m.config.adam_beta2;
    adamw.eps = m.config.adam_epsilon;
    adamw.weight_decay = m.config.weight_decay;
    adamw_step(m.flat_params, m.flat_grads, m.exp_avg, m.exp_avg_sq, m.steps_done + 1, adamw, m.decayed);
    m.flat_grads.zero_();
    m.steps_done += 1;
    stats.step = m.steps_done;
    stats.loss = global_tokens > 0 ? global_loss / global_tokens : 0.0;
    stats.grad_norm = grad_norm;
    stats.tokens = static_cast<int64_t>(global_tokens);
    stats.seconds = m.seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.micro_batches = 0;
    m.tokens = 0;
    m.loss_sum = 0.0;
    m.seconds = 0.0;
    return stats;
  } catch (...) {
    return detail::current_exception_status("Trainer::step");
  }
}

Result<EvalStats> Trainer::evaluate(const std::vector<std::vector<PackedRow>>& batches) {
  Impl& m = *impl_;
  double loss_sum = 0.0;
  int64_t tokens = 0;
  Status local;
  try {
    at::NoGradGuard no_grad;
    m.model->set_training(false);
    for (const auto& rows : batches) {
      auto batch = to_tensors(rows, m.device);
      if (!batch.ok()) {
        local = batch.status();
        break;
      }
      auto loss = m.loss_of(*batch);
      if (!loss.ok()) {
        local = loss.status();
        break;
      }
      loss_sum += loss->item<double>();
      tokens += batch->tokens;
    }
    m.model->set_training(true);
  } catch (...) {
    m.model->set_training(true);
    local = detail::current_exception_status("Trainer::evaluate");
  }
  // Every rank joins the reduction, even one whose own batches failed, so none waits forever; a
  // negative count tells the others.
  double global_loss = loss_sum, global_tokens = static_cast<double>(tokens);
  if (m.world() > 1) {
    float sums[3] = {static_cast<float>(tokens), static_cast<float>(loss_sum), local.ok() ? 0.0f : 1.0f};
    CAIRN_RETURN_IF_ERROR(m.options.collective->all_reduce_sum(sums, 3));
    if (!local.ok()) return local;
    if (sums[2] > 0) return error(Code::internal, "Trainer::evaluate: another rank failed to evaluate its batches");
    global_tokens = std::round(sums[0]);
    global_loss = sums[1];
  }
  if (!local.ok()) return local;
  if (global_tokens <= 0) return error(Code::invalid_argument, "Trainer::evaluate: the batches hold no trained tokens");
  EvalStats stats;
  stats.loss = global_loss / global_tokens;
  stats.perplexity = std::exp(stats.loss);
  stats.tokens = static_cast<int64_t>(global_tokens);
  return stats;
}

Status Trainer::save_checkpoint(const std::string& dir) const {
  const Impl& m = *impl_;
  if (m.options.rank != 0) return Status::ok_status();
  if (m.micro_batches != 0) {
    return error(Code::invalid_argument, "Trainer::save_checkpoint: gradients of an unfinished step are pending");
  }
  try {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return error(Code::io_error, dir + ": cannot create the directory: " + ec.message());
    if (m.lora) {
      CAIRN_RETURN_IF_ERROR(save_lora(*m.model, *m.lora, dir));
    } else {
      CAIRN_RETURN_IF_ERROR(save_llama(*m.model, dir));
    }
    std::vector<std::pair<std::string, at::Tensor>> state;
    for (const Impl::Param& p : m.params) {
      state.emplace_back(p.name + ".exp_avg", m.exp_avg.narrow(0, p.offset, p.numel).view(p.tensor.sizes()));
      state.emplace_back(p.name + ".exp_avg_sq", m.exp_avg_sq.narrow(0, p.offset, p.numel).view(p.tensor.sizes()));
    }
    CAIRN_RETURN_IF_ERROR(safetensors::write_tensors(dir + "/" + kOptimizerFile, state, {{"format", "pt"}}));
    at::Tensor rng = m.rng_state.contiguous();
    json trainer_state = {
        {"version", kStateVersion},
        {"step", m.steps_done},
        {"adapter", std::string(adapter_name(m.config.adapter))},
        {"trainable_parameters", m.flat_params.numel()},
        {"total_steps", m.init.schedule.total_steps},
        {"warmup_steps", m.init.schedule.warmup_steps},
        {"next_learning_rate", m.learning_rate(m.steps_done)},
        {"rank", m.options.rank},
        {"world_size", m.options.world_size},
        {"rng_state", hex_encode(rng.data_ptr<uint8_t>(), static_cast<size_t>(rng.numel()))},
    };
    return detail::write_file_atomically(dir + "/" + kStateFile, trainer_state.dump(2) + "\n");
  } catch (...) {
    return detail::current_exception_status("Trainer::save_checkpoint");
  }
}

Status Trainer::load_checkpoint(const std::string& dir) {
  Impl& m = *impl_;
  try {
    auto text = detail::read_file(dir + "/" + kStateFile);
    if (!text.ok()) return text.status();
    json state = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    const std::string state_path = dir + "/" + kStateFile;
    if (!state.is_object() || !state.contains("step") || !state["step"].is_number_integer() ||
        !state.contains("rng_state") || !state["rng_state"].is_string()) {
      return error(Code::data_loss, state_path + ": not a trainer state (step, rng_state)");
    }
    if (state.value("adapter", std::string()) != adapter_name(m.config.adapter)) {
      return error(Code::invalid_argument, state_path + ": a checkpoint of adapter \"" +
                                               state.value("adapter", std::string()) + "\", this job trains \"" +
                                               std::string(adapter_name(m.config.adapter)) + "\"");
    }
    auto rng = hex_decode(state["rng_state"].get<std::string>());
    if (!rng || static_cast<int64_t>(rng->size()) != m.rng_state.numel()) {
      return error(Code::data_loss, state_path + ": rng_state is not a generator state of this device");
    }
    const std::string weights_path = dir + "/" + (m.lora ? kAdapterFile : kModelFile);
    const std::string prefix = m.lora ? kPeftPrefix : "";
    auto weights = safetensors::Reader::open(weights_path);
    if (!weights.ok()) return weights.status();
    auto optimizer = safetensors::Reader::open(dir + "/" + kOptimizerFile);
    if (!optimizer.ok()) return optimizer.status();
    // Read everything first, so a bad file leaves the trainer unchanged.
    auto read = [](const safetensors::Reader& reader, const std::string& name,
                   const at::Tensor& like) -> Result<at::Tensor> {
      auto tensor = safetensors::read_tensor(reader, name);
      if (!tensor.ok()) return tensor.status();
      if (tensor->sizes() != like.sizes()) {
        return error(Code::invalid_argument, reader.path() + ": tensor \"" + name + "\" has another shape than the model's");
      }
      return *tensor;
    };
    std::vector<std::array<at::Tensor, 3>> loaded;
    for (const Impl::Param& p : m.params) {
      auto value = read(*weights, prefix + p.name, p.tensor);
      if (!value.ok()) return value.status();
      auto avg = read(*optimizer, p.name + ".exp_avg", p.tensor);
      if (!avg.ok()) return avg.status();
      auto avg_sq = read(*optimizer, p.name + ".exp_avg_sq", p.tensor);
      if (!avg_sq.ok()) return avg_sq.status();
      loaded.push_back({*value, *avg, *avg_sq});
    }
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < m.params.size(); ++i) {
      const Impl::Param& p = m.params[i];
      m.flat_params.narrow(0, p.offset, p.numel).copy_(loaded[i][0].reshape({-1}));
      m.exp_avg.narrow(0, p.offset, p.numel).copy_(loaded[i][1].reshape({-1}));
      m.exp_avg_sq.narrow(0, p.offset, p.numel).copy_(loaded[i][2].reshape({-1}));
    }
    m.flat_grads.zero_();
    m.micro_batches = 0;
    m.tokens = 0;
    m.loss_sum = 0.0;
    m.seconds = 0.0;
    m.steps_done = state["step"].get<int64_t>();
    std::memcpy(m.rng_state.data_ptr<uint8_t>(), rng->data(), rng->size());
    return Status::ok_status();
  } catch (...) {
    return detail::current_exception_status("Trainer::load_checkpoint");
  }
}

Status Trainer::export_model(const std::string& dir) const {
  const Impl& m = *impl_;
  try {
    if (m.lora) {
      CAIRN_RETURN_IF_ERROR(save_lora(*m.model, *m.lora, dir));
    } else {
      CAIRN_RETURN_IF_ERROR(save_llama(*m.model, dir));
    }
    if (!m.init.tokenizer_path.empty()) {
      fs::path source = m.init.tokenizer_path;
      if (fs::is_directory(source)) source /= "tokenizer.json";
      std::error_code ec;
      fs::copy_file(source, fs::path(dir) / "tokenizer.json", fs::copy_options::overwrite_existing, ec);
      if (ec) return error(Code::io_error, source.string() + ": cannot copy to " + dir + ": " + ec.message());
    }
    return Status::ok_status();
  } catch (...) {
    return detail::current_exception_status("Trainer::export_model");
  }
}

int64_t Trainer::completed_steps() const { return impl_->steps_done; }
double Trainer::next_learning_rate() const { return impl_->learning_rate(impl_->steps_done); }
int64_t Trainer::trainable_parameter_count() const { return impl_->flat_params.numel(); }
const LlamaModel& Trainer::model() const { return *impl_->model; }

std::string Trainer::parameters_digest() const { return impl_->digest_of(impl_->named_trainable()); }

std::string Trainer::base_weights_digest() const {
  auto weights = impl_->model->checkpoint_weights();
  if (!weights.ok()) return "error: " + weights.status().to_string();
  return impl_->digest_of(*weights);
}

std::vector<std::pair<std::string, at::Tensor>> TrainerTorchAccess::trainable_parameters(const Trainer& trainer) {
  return trainer.impl_->named_trainable();
}

at::Tensor TrainerTorchAccess::accumulated_gradients(const Trainer& trainer) {
  return trainer.impl_->flat_grads.clone();
}

}  // namespace cairn
