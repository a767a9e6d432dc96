// A training job's configuration: the YAML a user writes for `cairn train submit JOB.yaml`, with
// Axolotl's key names where Axolotl has the setting, parsed and checked before any compute.
// Torch-free (cairn_text): the CLI, the supervisor and the job actors read it without libtorch.
//
// docs/TRAINING.md is the reference of every key; the fields below carry the same facts (default,
// unit, allowed values). configs/train/ holds working examples.
//
// Parsing never stops at an unknown key: it is reported as a ConfigWarning by name (with "did you
// mean" when a known key is close), and so is an Axolotl key that Cairn does not implement
// ("ignored"). A value of the wrong type or out of range, and a combination of keys that cannot
// work, is an invalid_argument error naming the file, the key path (`datasets[1].type`), the value
// and what is allowed: `job.yaml: datasets[1].type: expected one of completion, alpaca,
// chat_template, got "sharegpt"`. YAML syntax errors name the line and column.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/data.h"
#include "model/llama_config.h"
#include "runtime/status.h"

namespace cairn {

// ---------------------------------------------------------------------------------------------
// The model

// The `architecture:` block: a Llama-family model built with random weights, for pretraining
// from scratch. Every key is optional; the defaults make the small demo model (about 4.5M
// parameters with a 4096-token vocabulary: 3.4M in the layers, 1M in the tied embedding). Names
// are those of a Hugging Face config.json.
struct ArchitectureSpec {
  int64_t hidden_size = 256;        // > 0, a multiple of num_attention_heads
  // The SwiGLU MLP's inner width. 0: derived as Llama does, 8/3 * hidden_size rounded up to a
  // multiple of 256 (hidden 256 -> 768, hidden 4096 -> 11008).
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 4;    // > 0
  int64_t num_attention_heads = 4;  // > 0, divides hidden_size; head_dim = hidden / heads, even
  int64_t num_key_value_heads = 0;  // 0: num_attention_heads; else divides num_attention_heads
  int64_t max_position_embeddings = 0;  // 0: the job's sequence_len
  double rope_theta = 10000.0;      // > 0
  double rms_norm_eps = 1e-5;       // > 0
  bool tie_word_embeddings = true;  // the output head shares the embedding matrix
  double initializer_range = 0.02;  // std of the normal initialisation; > 0
  int64_t vocab_size = 0;           // 0: the tokenizer's vocabulary size; else >= it
};

// The LlamaConfig of `spec` for a tokenizer of `vocab_size` tokens and rows of `sequence_len`
// tokens, with every 0 ("derive") resolved. bos/eos/pad ids are left unset (the caller takes them
// from the tokenizer). invalid_argument naming the `architecture.*` key for what
// LlamaConfig::validate() rejects, and for a spec.vocab_size smaller than `vocab_size`.
Result<LlamaConfig> to_llama_config(const ArchitectureSpec& spec, int64_t vocab_size, int64_t sequence_len);

// Where the weights of `base_model` come from, as parse_model_reference reads the text:
//   "NAME@ALIAS"  registry: the version the alias points at ("latest": the newest version);
//   "NAME/N"      registry: version N of model NAME (N decimal digits, NAME without '/');
//   anything else a local Hugging Face directory (config.json, *.safetensors, tokenizer.json),
//                 relative to the YAML file's directory. Write "./NAME/3" for a local directory
//                 that would otherwise read as a registry reference.
struct ModelReference {
  enum class Kind : uint8_t { none, local_dir, registry };
  Kind kind = Kind::none;
  std::string path;     // local_dir: the directory, resolved against the YAML file's directory
  std::string name;     // registry: the model name
  std::string alias;    // registry: set for NAME@ALIAS
  std::string version;  // registry: set for NAME/N (decimal digits)

  // "devil@latest", "devil/3" or the local path; "" for none.
  std::string to_string() const;
};

// `base_dir` resolves a relative local path ("" keeps it as written). invalid_argument for an
// empty text or an empty NAME / ALIAS.
Result<ModelReference> parse_model_reference(std::string_view text, const std::string& base_dir);

// ---------------------------------------------------------------------------------------------
// The job

// "adapter": what is trained.
enum class AdapterKind : uint8_t {
  none,   // absent: a full fine-tune (or pretraining), every weight trained
  lora,   // "lora": LoRA adapters on a frozen base
  qlora,  // "qlora": LoRA adapters on an NF4-quantized frozen base; needs base_model
};
enum class LrScheduler : uint8_t {
  cosine,    // "cosine": warmup, then half a cosine from learning_rate to 0 (Axolotl's default)
  linear,    // "linear": warmup, then a straight line from learning_rate to 0
  constant,  // "constant": warmup, then learning_rate throughout
};
enum class OptimizerKind : uint8_t {
  adamw,  // "adamw"; Axolotl's "adamw_torch" and "adamw_torch_fused" are read as this
};
// "bf16": Axolotl's true / false / "auto".
enum class Bf16Mode : uint8_t {
  off,        // false (default): float32
  on,         // true: bfloat16 weights and activations; the trainer refuses where unsupported
  automatic,  // "auto": bfloat16 where the device supports it, else float32
};
// "chat_template": which template renders chat_template datasets.
enum class ChatTemplateChoice : uint8_t {
  tokenizer_default,  // "tokenizer_default" (default): the tokenizer's own, ChatML if it has none
  chatml,             // "chatml": Axolotl's ChatML
  jinja,              // "jinja": the Jinja source in chat_template_jinja
};

std::string_view adapter_name(AdapterKind kind);  // "none", "lora", "qlora"
std::string_view lr_scheduler_name(LrScheduler scheduler);
std::string_view optimizer_name(OptimizerKind optimizer);
std::string_view bf16_mode_name(Bf16Mode mode);  // "false", "true", "auto"
std::string_view chat_template_choice_name(ChatTemplateChoice choice);
std::string_view long_example_policy_name(LongExamplePolicy policy);  // "drop", "truncate", "split"

// Everything a training job reads from its YAML. A default-constructed config holds the defaults
// (and is not valid: it has neither base_model nor architecture, nor datasets, nor a learning
// rate). Paths are stored resolved against the YAML file's directory.
struct TrainJobConfig {
  // ---- model and data ----
  // "base_model": the weights to start from (see ModelReference). Exactly one of base_model and
  // architecture is given.
  ModelReference base_model;
  // "architecture": a from-scratch model (pretraining); nullopt when base_model is given.
  std::optional<ArchitectureSpec> architecture;
  // "tokenizer" (Axolotl: "tokenizer_config"): a tokenizer.json or a directory holding one.
  // Required with architecture; with base_model, "" uses the base model's own.
  std::string tokenizer;
  // "datasets": at least one {path, type}; path is a JSONL file (relative: to the YAML file's
  // directory), type one of completion, alpaca, chat_template (model/data.h).
  std::vector<DatasetSpec> datasets;
  // "val_set_size": the validation split, a fraction in [0, 1) of the examples or a count >= 1
  // (whole numbers only). Default 0: no validation set (then no evaluation).
  double val_set_size = 0.0;
  // "sequence_len": tokens per row, >= 2. Default 2048 (Axolotl's).
  int64_t sequence_len = 2048;
  // "sample_packing": several examples per row. Default false.
  bool sample_packing = false;
  // "train_on_inputs": also train on prompt tokens (alpaca's instruction, chat's user turns).
  // Default false.
  bool train_on_inputs = false;
  // "shuffle_merged_datasets": shuffle rows anew every epoch by seed. Default true.
  bool shuffle = true;
  // "excess_length_strategy": drop (default), truncate or split.
  LongExamplePolicy excess_length_strategy = LongExamplePolicy::drop;
  // "chat_template": tokenizer_default (default), chatml or jinja. Axolotl's other built-in names
  // (llama3, mistral, ...) are rejected: use jinja with the template's source.
  ChatTemplateChoice chat_template = ChatTemplateChoice::tokenizer_default;
  // "chat_template_jinja": the template's Jinja source; required with chat_template: jinja and
  // checked to parse (model/chat_template.h).
  std::string chat_template_jinja;

  // ---- adapters ----
  // "adapter": absent (or "none"/null) = full fine-tune, "lora", "qlora". Axolotl's
  // `load_in_4bit: true` is accepted beside "qlora" (and required by nothing).
  AdapterKind adapter = AdapterKind::none;
  int64_t lora_r = 8;          // "lora_r": rank, > 0 with an adapter
  double lora_alpha = 16.0;    // "lora_alpha": output scaled by alpha / r; >= 0
  double lora_dropout = 0.0;   // "lora_dropout": in [0, 1)
  // "lora_target_modules": PEFT module names ("q_proj", "mlp.down_proj"); default q_proj, v_proj.
  std::vector<std::string> lora_target_modules = {"q_proj", "v_proj"};
  // "lora_target_linear": every linear projection of the decoder (PEFT's "all-linear"); replaces
  // lora_target_modules. Default false.
  bool lora_target_linear = false;

  // ---- batching and length ----
  int64_t micro_batch_size = 1;             // "micro_batch_size": rows per worker per forward, > 0
  int64_t gradient_accumulation_steps = 1;  // "gradient_accumulation_steps": > 0
  int64_t num_epochs = 1;                   // "num_epochs": > 0 (whole epochs)
  // "max_steps": > 0 bounds training to this many optimizer steps (epochs repeat as needed);
  // 0 (default): num_epochs decides.
  int64_t max_steps = 0;

  // ---- optimization ----
  // "learning_rate": the peak learning rate, > 0. Required (as in Axolotl): fine-tunes and
  // pretraining want rates an order of magnitude apart, so no default fits both.
  double learning_rate = 0.0;
  LrScheduler lr_scheduler = LrScheduler::cosine;  // "lr_scheduler"
  // "warmup_steps" / "warmup_ratio" (at most one): linear warmup from 0 over this many optimizer
  // steps, or this fraction in [0, 1) of the total (rounded up). Default 0. Must stay below the
  // total (checked by training_schedule, and at parse time when max_steps is set).
  int64_t warmup_steps = 0;
  std::optional<double> warmup_ratio;
  OptimizerKind optimizer = OptimizerKind::adamw;  // "optimizer"
  double adam_beta1 = 0.9;      // "adam_beta1": in [0, 1)
  double adam_beta2 = 0.999;    // "adam_beta2": in [0, 1)
  double adam_epsilon = 1e-8;   // "adam_epsilon": > 0
  double weight_decay = 0.0;    // "weight_decay": decoupled (AdamW), >= 0
  double max_grad_norm = 1.0;   // "max_grad_norm": clip the global L2 norm; 0 = no clipping
  Bf16Mode bf16 = Bf16Mode::off;  // "bf16"
  bool fp16 = false;              // "fp16": float16 compute; the trainer decides where it runs
  bool gradient_checkpointing = false;  // "gradient_checkpointing": recompute activations

  // ---- logging, evaluation and stopping ----
  int64_t logging_steps = 1;  // "logging_steps": metrics every N optimizer steps, > 0
  // "evals_per_epoch" / "eval_steps" (at most one): evaluate N times an epoch, or every N
  // optimizer steps. 0 (default): once, at the end (when there is a validation set).
  int64_t evals_per_epoch = 0;
  int64_t eval_steps = 0;
  // "saves_per_epoch" / "save_steps" (at most one): checkpoint N times an epoch, or every N
  // optimizer steps. 0 (default): once, at the end.
  int64_t saves_per_epoch = 0;
  int64_t save_steps = 0;
  // "early_stopping_patience": stop after this many evaluations in a row without a lower eval
  // loss; needs a validation set. 0 (default): off.
  int64_t early_stopping_patience = 0;
  // "loss_watchdog_threshold": stop when the training loss is above this for
  // loss_watchdog_patience logged steps in a row. 0 (default): off.
  double loss_watchdog_threshold = 0.0;
  int64_t loss_watchdog_patience = 3;  // "loss_watchdog_patience": > 0

  // ---- other ----
  uint64_t seed = 42;  // "seed": weights init, adapters, split, shuffle, dropout
  // "output_model" (Axolotl: "hub_model_id"): the registry model the checkpoints are registered
  // under as versions. "" = "<experiment>-<run_name or run id>" chosen by the job. No '/' or '@'.
  std::string output_model;
  // "output_dir": a local directory the final model is also exported to (HF layout); "" = none.
  std::string output_dir;
  std::string experiment = "train";  // "experiment": the registry experiment of the run
  std::string run_name;              // "run_name": "" = chosen by the registry
  int64_t num_workers = 1;           // "num_workers": data-parallel trainers, >= 1
  // "nodes": the node protocol addresses ("host:port") the workers are placed on, rank i on
  // nodes[i % size]. Empty (default): every worker on the node the job is submitted to.
  std::vector<std::string> nodes;
  // "device": "cpu" (default), "cuda" or "cuda:N".
  std::string device = "cpu";

  // Checks the rules between keys: exactly one of base_model and architecture, a tokenizer with
  // architecture, qlora needs base_model, at most one of warmup_steps/warmup_ratio,
  // evals_per_epoch/eval_steps, saves_per_epoch/save_steps, early stopping needs a validation set,
  // warmup below max_steps when set, node addresses as HOST:PORT, and every value's own range.
  // invalid_argument naming the key (without a file name: parse_train_config adds it).
  Status validate() const;
};

struct ConfigWarning {
  std::string key;      // the key path: "wandb_project", "datasets[0].split"
  std::string message;  // "job.yaml: wandb_project: ignored (Cairn logs metrics to its registry)"
};

// Parses a job's YAML. `source_name` names the text in messages; its directory (when it has one)
// resolves relative paths, so pass an absolute file name where the process's working directory
// is not the file's. Unknown and ignored keys are appended to *warnings (may be null).
// invalid_argument "<source>[:line:col]: <key path>: <problem>" for malformed YAML, a top level
// that is not a map, a key given twice, a wrong type or bad value, a required key missing
// (learning_rate, datasets) and whatever validate() rejects.
Result<TrainJobConfig> parse_train_config(std::string_view yaml_text, const std::string& source_name,
                                          std::vector<ConfigWarning>* warnings);
// Reads and parses `path`; relative paths in it resolve against its directory made absolute.
// not_found / io_error name an unreadable file.
Result<TrainJobConfig> load_train_config(const std::string& path, std::vector<ConfigWarning>* warnings);

// The YAML with `overrides` ("KEY=VALUE", VALUE read as YAML: "max_steps=20", "nodes=[a:1, b:2]")
// set over it, as YAML text for parse_train_config. KEY is a top-level key or a dotted path into
// nested maps ("architecture.hidden_size=128"). Comments and key order are not kept. YAML that
// does not parse, or whose top level is not a map, comes back unchanged for parse_train_config to
// report with its file, line and column. invalid_argument naming the override for text without
// '=', a value that is not YAML, or a path through a key that is not a map.
Result<std::string> apply_train_config_overrides(std::string_view yaml_text,
                                                 const std::vector<std::string>& overrides);

// Every field as JSON with sorted keys and one fixed spelling per value (enums by name, paths as
// resolved), so equal configs give equal text however their YAML was written. Stored with the run.
std::string to_canonical_json(const TrainJobConfig& config);
// "fnv1a64:<16 hex digits>" of to_canonical_json: stable across runs and platforms, for lineage;
// not cryptographic (storage/sha256.h lives in cairn_storage, which cairn_text does not link).
std::string train_config_digest(const TrainJobConfig& config);

// ---------------------------------------------------------------------------------------------
// The schedule

// How long a job trains and when it logs, evaluates and saves, in optimizer steps (one step =
// micro_batch_size * gradient_accumulation_steps rows on each of num_workers workers).
struct TrainingSchedule {
  int64_t rows_per_step = 0;    // micro_batch_size * gradient_accumulation_steps * num_workers
  int64_t steps_per_epoch = 0;  // ceil(rows_per_epoch / rows_per_step)
  int64_t total_steps = 0;      // max_steps when > 0, else steps_per_epoch * num_epochs
  int64_t warmup_steps = 0;     // warmup_steps, or ceil(warmup_ratio * total_steps); < total
  // Evaluate after every N steps: eval_steps, or max(1, total_steps / (evals_per_epoch *
  // num_epochs)) as Axolotl computes it; 0: only at the end.
  int64_t eval_every = 0;
  int64_t save_every = 0;  // likewise for saves; 0: only at the end
};

// The schedule of `config` over a training split of `rows_per_epoch` rows (all shards; see
// BatchStream::rows_in_epoch). invalid_argument for rows_per_epoch < 1 without max_steps, and for
// warmup not below the total ("warmup_steps: 40 is not below the 30 optimizer steps of the job").
Result<TrainingSchedule> training_schedule(const TrainJobConfig& config, int64_t rows_per_epoch);
// training_schedule(config, rows_per_epoch)->total_steps.
Result<int64_t> total_optimizer_steps(const TrainJobConfig& config, int64_t rows_per_epoch);

// The learning rate of optimizer step `step` (0 for the first; the number of steps already
// taken), as Hugging Face's schedulers compute it: learning_rate * step / warmup during warmup,
// then per lr_scheduler, decaying to 0 at total_steps. Steps past the total get the last value.
double scheduled_learning_rate(const TrainJobConfig& config, const TrainingSchedule& schedule, int64_t step);

// The options model/data.h takes, from the config. data_options leaves chat_template "" for
// ChatTemplateChoice::tokenizer_default: the caller fills it from load_chat_template(tokenizer).
DataOptions data_options(const TrainJobConfig& config);
// Shard `shard_index` of num_workers; num_epochs 0 (endless) when max_steps bounds training.
StreamOptions stream_options(const TrainJobConfig& config, int32_t shard_index);

}  // namespace cairn
