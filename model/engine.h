// The inference engine: many concurrent generation requests over one model, served by continuous
// (iteration-level) batching over a paged KV cache, as vLLM does. Torch-free, so the batcher actor,
// the HTTP layer and the CLI include it without libtorch's headers.
//
// Every step() runs one batched forward pass: the running sequences each decode one token, and
// what is left of the step's token budget prefills waiting prompts in chunks (first come, first
// served), so requests join and leave the batch at every step and a long prompt never stalls the
// running decodes for long. Keys and values live in fixed-size blocks of a pool sized from a
// memory budget; full prompt blocks are shared between requests through a prefix cache (hashed,
// reference-counted, least recently used blocks evicted first). When blocks run out the newest
// running requests are preempted: their blocks are freed and they are recomputed later from their
// prompt plus the tokens generated so far. A request is never failed for lack of blocks; one that
// could never fit is refused at submit.
//
// Greedy output equals model/generate.h generate()'s for the same request (same tokens). Seeded
// sampling draws from one Sampler per request (model/sampling.h), so it is reproducible and equals
// generate() with the same seed and options (for the options generate() supports).
//
// LoRA adapters are loaded by name beside the base weights (never merged) and chosen per request;
// one batch mixes adapters and the base model (multi-LoRA).
//
// Threads: one thread (the batcher's loop) calls step(), and every TokenEvent is delivered on it.
// submit(), cancel(), abort_all(), stats(), wait_for_work(), load_adapter() and unload_adapter()
// are safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/llama_config.h"
#include "model/sampling_options.h"
#include "model/tokenizer.h"
#include "runtime/status.h"

namespace cairn {

class LlamaModel;

// How an engine batches and caches. Validated by InferenceEngine::load / create.
struct EngineOptions {
  // Memory for keys and values, in bytes. The number of KV blocks is kv_cache_bytes /
  // (2 * layers * kv_heads * head_dim * block_size * dtype bytes). Default 256 MiB.
  uint64_t kv_cache_bytes = 256ull << 20;
  // Tokens per KV block (the unit of allocation and of prefix sharing). Default 16.
  int64_t block_size = 16;
  // Sequences in one step's batch at most. Default 64.
  int64_t max_running = 64;
  // Tokens in one step's forward pass at most (one per decoding sequence, the rest prefill
  // chunks). Bounds a step's latency: prefill is chunked to fit. At least 1; default 512.
  int64_t max_step_tokens = 512;
  // Share full prompt blocks between requests with the same prefix (and adapter). Default on.
  bool prefix_caching = true;

  // invalid_argument naming the field: kv_cache_bytes 0, block_size, max_running or
  // max_step_tokens below 1.
  Status validate() const;
};

// One of the most likely tokens at a position, when logprobs were asked for.
struct TopLogprob {
  int64_t token_id = 0;
  std::string text;  // the token's text alone ("" without a tokenizer; may be part of a character)
  double logprob = 0.0;
};

// What a request hears, in order: one event per new token whose text may be sent, then exactly one
// final event. Delivered on the thread that calls step().
struct TokenEvent {
  uint64_t request_id = 0;
  // false: a new token. true: the request has ended (no more events follow).
  bool final = false;

  // ---- a new token (final == false) ----
  int64_t token_id = -1;
  // New text since the previous event (incremental detokenization). Bytes that may start a stop
  // string or an incomplete UTF-8 character are held back until they are known not to (so a delta
  // may be "" and a later one carry several tokens' text); special tokens have no text. Never
  // contains a stop string.
  std::string text;
  // log_softmax of the raw logits (before temperature and penalties) at the chosen token, when
  // the request asked for logprobs (> 0); NaN otherwise.
  double logprob = 0.0;
  // The request's `logprobs` most likely tokens, most likely first (empty when not asked).
  std::vector<TopLogprob> top_logprobs;

  // ---- the final event (final == true) ----
  // "stop": eos, a stop token id or a stop string; "length": max_tokens reached; "cancelled":
  // cancel() was called; "error": see status (timeout for a passed deadline, the abort_all
  // reason, or an internal failure).
  std::string finish_reason;
  Status status;
  // The final event's `text` carries what was held back and turned out to be sendable (the text
  // before a stop string; the stop string and what follows it are never sent).
  int64_t prompt_tokens = 0;
  // Tokens generated, including a final eos or stop token and tokens after a stop string.
  int64_t completion_tokens = 0;
  // Prompt tokens whose keys and values came from the prefix cache (at first scheduling).
  int64_t cached_prompt_tokens = 0;
};

// One generation request.
struct EngineRequest {
  // The prompt's token ids; not empty, each in [0, vocab_size).
  std::vector<int64_t> prompt_ids;
  // Greedy (temperature 0, the default) or sampled; see model/sampling_options.h.
  SamplingOptions sampling;
  // New tokens at most; at least 1. prompt + max_tokens must not exceed the model's
  // max_position_embeddings. Default 16 (OpenAI's completions default).
  int64_t max_tokens = 16;
  // Generation stops when the text contains one of these; the text sent ends before it.
  std::vector<std::string> stop;
  // Generation stops after any of these tokens (which then counts but has no text).
  std::vector<int64_t> stop_token_ids;
  // Keep going past the model's eos tokens (until max_tokens, a stop string or stop token id).
  bool ignore_eos = false;
  // 0: no logprobs. n > 0: the chosen token's logprob and the n most likely tokens (at most 20).
  int64_t logprobs = 0;
  // A LoRA adapter loaded with load_adapter(); "" for the base model.
  std::string adapter;
  // When set and passed, the request ends with finish_reason "error", status timeout.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Called with each event on the step() thread. Must not call step() and should return quickly
  // (it runs inside the batch loop); may call submit() and cancel(). May be empty.
  std::function<void(const TokenEvent&)> on_event;
};

// A snapshot of the engine's load and counters, for /metrics and admission control.
struct EngineStats {
  int64_t running = 0;  // requests in the running batch (prefilling or decoding)
  int64_t waiting = 0;  // submitted, not yet scheduled or preempted and waiting to resume
  uint64_t preempted_total = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;    // referenced by a sequence
  int64_t kv_blocks_cached = 0;  // unreferenced but kept for the prefix cache (reclaimable)
  double kv_usage = 0.0;         // kv_blocks_used / kv_blocks_total
  uint64_t prompt_tokens_total = 0;      // prompt tokens of finished requests
  uint64_t generation_tokens_total = 0;  // tokens generated, all requests
  uint64_t prefix_cache_queried_tokens = 0;  // prompt tokens looked up in the prefix cache
  uint64_t prefix_cache_hit_tokens = 0;      // of those, found
  uint64_t requests_finished_total = 0;
  uint64_t steps_total = 0;
};

class InferenceEngine {
 public:
  // Loads the Hugging Face directory `model_dir` (model/hf_checkpoint.h: config.json,
  // model.safetensors; tokenizer.json and tokenizer_config.json with its chat_template, ChatML
  // when it has none). Errors: those of load_llama and Tokenizer::load, each naming the file;
  // invalid_argument for options that do not validate or a KV budget too small for one block.
  static Result<std::unique_ptr<InferenceEngine>> load(const std::string& model_dir, const ModelOptions& model_options,
                                                       const EngineOptions& options);

  // An engine over a model already built (random weights in tests and benchmarks). Without a
  // tokenizer, events carry no text and requests with stop strings are refused.
  static Result<std::unique_ptr<InferenceEngine>> create(std::unique_ptr<LlamaModel> model,
                                                         std::optional<Tokenizer> tokenizer,
                                                         const EngineOptions& options);

  InferenceEngine(const InferenceEngine&) = delete;
  InferenceEngine& operator=(const InferenceEngine&) = delete;
  // Requests still in flight end without a final event; end them with abort_all() and step()
  // first when their callers wait for one.
  ~InferenceEngine();

  // Loads a PEFT LoRA adapter directory (model/lora.h) under `name`, for requests to select.
  // Blocks while a step runs. Errors: invalid_argument for an empty name; already_exists for a
  // name in use; those of load_lora (naming the file).
  Status load_adapter(const std::string& name, const std::string& dir);
  // Removes an adapter. Requests using it that are still in flight end with finish_reason
  // "error" (status not_found) at the next step. Errors: not_found for an unknown name.
  Status unload_adapter(const std::string& name);
  std::vector<std::string> adapters() const;

  // Queues a request and returns its id (unique within this engine, from 1). Its events start at
  // a later step(). Errors (nothing queued, no event): invalid_argument naming the number for an
  // empty prompt, an id outside the vocabulary, max_tokens below 1, prompt + max_tokens past
  // max_position_embeddings, a request needing more KV blocks than the whole cache holds, logprobs
  // outside [0, 20], sampling options that do not validate, stop strings without a tokenizer;
  // not_found for an unknown adapter.
  Result<uint64_t> submit(EngineRequest request);
  // Ends the request with finish_reason "cancelled" at the next step, freeing its blocks there.
  // Unknown or finished ids are ignored.
  void cancel(uint64_t request_id);
  // Ends every request in flight with finish_reason "error" and `reason` at the next step.
  void abort_all(const Status& reason);

  // One iteration: admits new requests, ends cancelled and expired ones, schedules the batch, runs
  // one forward pass and samples one token per row that needs one, delivering events. Returns
  // whether requests remain in flight. Call from one thread only. An internal failure of the
  // forward pass ends the step's requests with "error" and its status; the engine stays usable.
  bool step();
  // Blocks until a request is submitted, cancelled or aborted, or `timeout` passes; returns at once
  // when requests are in flight. For the loop: `while (running) { if (!engine.step())
  // engine.wait_for_work(100ms); }`.
  void wait_for_work(std::chrono::milliseconds timeout);
  // Wakes a wait_for_work() (e.g. to stop the loop).
  void notify();

  EngineStats stats() const;

  const LlamaConfig& config() const;
  const EngineOptions& options() const;
  // Null for an engine created without a tokenizer.
  const Tokenizer* tokenizer() const;
  // The tokenizer's chat template (ChatML when it has none).
  const ChatTemplate& chat_template() const;
  // Renders a conversation with the chat template and the tokenizer's bos/eos text.
  Result<std::string> render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  struct Impl;
  explicit InferenceEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn
