// One data-parallel replica of a training job: forward, backward, gradient accumulation, the
// gradient all-reduce across ranks, clipping, AdamW and the LR schedule, evaluation, and
// checkpoints that resume bitwise. Torch-free (pimpl), so actors include it without libtorch's
// headers; tests that need tensors use model/trainer_torch.h.
//
// A step is: accumulate() once per micro-batch, gradient_accumulation_steps times, then step().
//
// Loss normalisation (what makes data parallelism exact): each micro-batch backpropagates the SUM
// of token cross-entropies over its trained positions (labels != kIgnoreLabel, shifted as
// transformers does: the hidden state at position i predicts labels[i + 1]). step() sums the
// gradients and trained-token counts over every rank and micro-batch, then divides by the global
// count, so N ranks with micro-batch b compute what one rank with micro-batch N*b computes (up to
// float rounding), and the reported loss is the global per-token mean.
//
// Distributed contract: every rank creates its Trainer with the same config and init, calls
// accumulate() the same number of times per step, and calls step(), evaluate(), and
// load_checkpoint() together (they run collectives). Rank 0's initial trainable parameters are
// broadcast at create(), so replicas start identical and, applying identical reduced gradients,
// stay identical.
//
// Threads: a Trainer is used by one thread at a time. Several Trainers may live in one process
// (one per rank thread); dropout draws from the trainer's own generator state (see
// TrainerOptions::seed_offset), swapped into libtorch's default generator under a process-wide
// lock while a dropout-using forward runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/data.h"
#include "model/train_config.h"
#include "runtime/status.h"

namespace cairn {

class Collective;
class LlamaModel;

struct TrainerOptions {
  // This replica's rank in [0, world_size).
  int rank = 0;
  int world_size = 1;
  // Sums gradients across ranks. Not owned; must outlive the Trainer. May be null only when
  // world_size is 1.
  Collective* collective = nullptr;
  // A libtorch device string: "cpu", "cuda", "cuda:1". A CUDA device trains one rank only (the
  // all-reduce works on host floats), and is where bf16 is allowed: the config's bf16 then keeps
  // weights, gradients and optimizer state in bfloat16 (no float32 master copy; softmax, norms and
  // the loss compute in float32). On CPU bf16: true is refused, "auto" means float32.
  std::string device = "cpu";
  // Gradient bytes per all-reduce bucket. Smaller buckets start communicating earlier in the
  // backward pass; larger ones cost fewer calls. Default 25 MiB (DDP's).
  size_t bucket_bytes = size_t{25} << 20;
  // Submit gradient buckets to the all-reduce while backward still runs (on the last micro-batch
  // of a step). false: reduce every bucket after backward. No effect when world_size is 1.
  bool overlap_communication = true;
  // at::set_num_threads(num_threads) at create() when > 0 (process-wide); 0 leaves it.
  int num_threads = 0;
  // Trained positions per chunk of the output projection + cross-entropy: logits exist for one
  // chunk at a time ([chunk, vocab] floats), never for the whole batch. 0 (default): as many as
  // keep a chunk's logits within 16 MiB (at least 64), e.g. 512 for a 8192-token vocabulary:
  // small enough to stay below the mmap threshold the node sets for glibc, so every chunk reuses
  // heap memory instead of faulting in fresh pages (measured 7% of a step at hidden 256).
  int64_t loss_chunk_tokens = 0;
};

// What create() needs besides the job config: things the caller resolves (registry references,
// the schedule length from the dataset size).
struct TrainerInit {
  // A local Hugging Face model directory to start from (resolved by the caller); empty: a model
  // with random weights from the config's architecture block, seeded by the config's seed.
  std::string base_model_dir;
  // How exports name the base model (adapter_config.json's base_model_name_or_path), e.g. a
  // registry reference "tiny@prod"; empty: base_model_dir.
  std::string base_model_reference;
  // tokenizer.json copied into exports and checkpoints; empty: none copied.
  std::string tokenizer_path;
  // The job's schedule (training_schedule() in model/train_config.h): the LR schedule spans
  // schedule.total_steps optimizer steps (> 0) with schedule.warmup_steps of warmup.
  TrainingSchedule schedule;
};

// One optimizer step's numbers; identical on every rank.
struct StepStats {
  int64_t step = 0;         // steps completed, this one included (1 after the first step())
  double loss = 0.0;        // mean cross-entropy per trained token over the global batch
  double lr = 0.0;          // the learning rate this step applied
  double grad_norm = 0.0;   // global L2 norm of the gradient before clipping
  int64_t tokens = 0;       // trained tokens in the global batch (every rank, every micro-batch)
  double seconds = 0.0;     // wall time of this rank's accumulate() calls and step() for this step
};

struct EvalStats {
  double loss = 0.0;        // mean cross-entropy per trained token over every rank's batches
  double perplexity = 0.0;  // exp(loss)
  int64_t tokens = 0;       // trained tokens evaluated over every rank
};

// One replica. Movable, not copyable.
class Trainer {
 public:
  // Builds the model: random weights from config.architecture seeded by config.seed, or loaded
  // from init.base_model_dir. adapter "none" trains every base weight; "lora" attaches a fresh
  // adapter (base frozen); "qlora" quantizes the decoder's linear layers to NF4, then attaches
  // LoRA. Then broadcasts rank 0's trainable parameters to every rank.
  // Errors: invalid_argument for options or config values the trainer cannot honour, naming them
  // (bf16 on CPU, world_size without a collective, schedule.total_steps <= 0, ...); the loader's errors
  // for base_model_dir; the collective's errors.
  static Result<std::unique_ptr<Trainer>> create(const TrainJobConfig& config, const TrainerInit& init,
                                                 const TrainerOptions& options);

  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  ~Trainer();

  // Forward and backward of one micro-batch (rows of equal length), adding its summed-loss
  // gradient into the accumulated gradient. At most gradient_accumulation_steps calls per step;
  // fewer is fine (the end of an epoch), as long as every rank makes the same number. The
  // accumulate() that completes a step (the gradient_accumulation_steps-th) starts the
  // all-reduce of gradient buckets as backward produces them. Errors: invalid_argument for an
  // empty batch, rows of different lengths, ids outside the vocabulary, or a step already
  // complete (call step()); internal for a libtorch failure.
  Status accumulate(const std::vector<PackedRow>& micro_batch);

  // Finishes the step: all-reduces gradients, trained-token counts and loss sums across ranks;
  // divides by the global token count; clips to max_grad_norm (when > 0); applies AdamW with
  // the scheduled learning rate; advances the schedule; zeroes the gradients. With several ranks
  // a rank may call it without accumulating (its shard ran out): it contributes nothing. Errors:
  // invalid_argument when a single worker accumulated nothing; the collective's
  // errors (the trainer is then unusable).
  Result<StepStats> step();

  // Loss and perplexity of the model on `batches` (this rank's shard of the validation rows),
  // without dropout and without touching gradients; token counts and loss sums are reduced across
  // ranks, so every rank returns the same numbers. Every rank must call it (with its own batches,
  // possibly none).
  Result<EvalStats> evaluate(const std::vector<std::vector<PackedRow>>& batches);

  // Writes DIR (created if missing): the trainable weights in Hugging Face layout (adapter none:
  // config.json + model.safetensors; lora/qlora: PEFT adapter_config.json +
  // adapter_model.safetensors), optimizer.safetensors (exp_avg / exp_avg_sq per parameter name),
  // and trainer_state.json (steps done, schedule position, RNG state). Rank 0 writes; other ranks
  // return ok without writing. Call between steps (no accumulated gradients pending).
  Status save_checkpoint(const std::string& dir) const;
  // Restores what save_checkpoint wrote into a trainer created with the same config and init, so
  // that training continues bitwise as if never interrupted. Every rank reads DIR. Errors:
  // not_found / data_loss naming the file; invalid_argument for a checkpoint of another shape,
  // adapter or config.
  Status load_checkpoint(const std::string& dir);

  // Writes a directory a server loads: full weights (config.json, generation_config.json,
  // model.safetensors), or the adapter with adapter_config.json naming its base; plus
  // tokenizer.json when init.tokenizer_path was given.
  Status export_model(const std::string& dir) const;

  // Optimizer steps completed.
  int64_t completed_steps() const;
  // The learning rate the next step() applies.
  double next_learning_rate() const;
  // Number of trainable scalars.
  int64_t trainable_parameter_count() const;
  // "fnv1a64:<16 hex digits>" over the trainable parameters' names and bytes, in the model's
  // parameter order:
  // equal digests mean bitwise-equal parameters (not cryptographic).
  std::string parameters_digest() const;
  // The same over every base weight as a checkpoint holds it (frozen ones included; an NF4 base
  // as its dequantized dense weight), without adapters: to check a base stayed untouched.
  std::string base_weights_digest() const;

  // The model (for sampling from it or inspecting it; torch types via model/llama.h).
  const LlamaModel& model() const;

 private:
  friend class TrainerTorchAccess;  // model/trainer_torch.h
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn
