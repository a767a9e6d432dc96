// Message catalogue of the `infer` domain: text generation by the inference batcher
// (actors/inference_batcher.h), and loading, listing and unloading the models it serves. Request
// fields follow OpenAI's completions and chat completions APIs (snake_case, the same defaults), so
// the OpenAI-compatible HTTP layer (cluster/openai_api.h) maps JSON to these structs key for key.
// Wire names are part of protocol version 1: never rename them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/wire.h"

namespace cairn::msg {

// ---- ops ----
// CompletionRequest -> CompletionReply; with stream: true, a CompletionDelta per piece of text first.
inline constexpr std::string_view kInferCompletions = "infer.completions";
// The same with `messages` rendered by the model's chat template.
inline constexpr std::string_view kInferChat = "infer.chat";
inline constexpr std::string_view kInferModels = "infer.models";  // Empty -> InferModelsReply
inline constexpr std::string_view kInferLoad = "infer.load";      // admin: InferLoadRequest -> InferModel
inline constexpr std::string_view kInferUnload = "infer.unload";  // admin: InferUnloadRequest -> Empty
inline constexpr std::string_view kInferStats = "infer.stats";    // Empty -> InferStatsReply

// finish_reason values.
inline constexpr std::string_view kFinishStop = "stop";      // eos, a stop token id or a stop string
inline constexpr std::string_view kFinishLength = "length";  // max_tokens, or the model's context, reached

struct InferChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
  template <class V>
  void fields(V& v) {
    v("role", role);
    v("content", content);
  }
};

// infer.completions and infer.chat. Errors: bad_request naming the field for a value out of range
// (max_tokens below 1 or past the context, n other than 1, logprobs outside [0, 20], sampling
// options; a prompt as long as the context); not_found for an unknown model; overloaded when the
// model's queue (serve.max_queue) is full; timeout when timeout_ms passes first.
struct CompletionRequest {
  // A served name (infer.models), or NAME:ADAPTER for one of its LoRA adapters (infer.load's
  // adapters), as vLLM names adapters by model; `adapter` selects one too.
  std::string model;
  std::string adapter;  // "" = the base model
  // infer.completions: the prompt as text, or as token ids (prompt_ids wins when not empty).
  std::string prompt;
  std::vector<int64_t> prompt_ids;
  // infer.chat: the conversation; the model's chat template renders it with a generation prompt.
  std::vector<InferChatMessage> messages;
  // New tokens at most. Unset: 16 for completions (OpenAI's default), the rest of the context for chat.
  std::optional<int64_t> max_tokens;
  double temperature = 1.0;  // 0 = greedy
  double top_p = 1.0;
  int64_t top_k = 0;  // 0 or -1 = off
  double min_p = 0.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  double repetition_penalty = 1.0;
  std::optional<uint64_t> seed;  // unset: a fresh seed per request
  std::vector<std::string> stop;
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
  // 0: none. n > 0: each token's logprob and the n most likely alternatives (n <= 20).
  int64_t logprobs = 0;
  int64_t n = 1;  // only 1 is supported
  // Stream a CompletionDelta per piece of text before the final reply.
  bool stream = false;
  // 0: the node's serve.request_timeout_ms. The request ends with `timeout` once it passes.
  uint64_t timeout_ms = 0;
  template <class V>
  void fields(V& v) {
    v("model", model);
    v.optional("adapter", adapter);
    v.optional("prompt", prompt);
    v.optional("prompt_ids", prompt_ids);
    v.optional("messages", messages);
    v.optional("max_tokens", max_tokens);
    v.optional("temperature", temperature);
    v.optional("top_p", top_p);
    v.optional("top_k", top_k);
    v.optional("min_p", min_p);
    v.optional("presence_penalty", presence_penalty);
    v.optional("frequency_penalty", frequency_penalty);
    v.optional("repetition_penalty", repetition_penalty);
    v.optional("seed", seed);
    v.optional("stop", stop);
    v.optional("stop_token_ids", stop_token_ids);
    v.optional("ignore_eos", ignore_eos);
    v.optional("logprobs", logprobs);
    v.optional("n", n);
    v.optional("stream", stream);
    v.optional("timeout_ms", timeout_ms);
  }
};

struct InferTopLogprob {
  int64_t token_id = 0;
  std::string token;  // the token's text
  double logprob = 0.0;
  template <class V>
  void fields(V& v) {
    v("token_id", token_id);
    v("token", token);
    v("logprob", logprob);
  }
};

// One generated token's logprob, when the request asked for them.
struct InferTokenLogprob {
  int64_t token_id = 0;
  std::string token;
  double logprob = 0.0;
  std::vector<InferTopLogprob> top_logprobs;  // most likely first
  template <class V>
  void fields(V& v) {
    v("token_id", token_id);
    v("token", token);
    v("logprob", logprob);
    v.optional("top_logprobs", top_logprobs);
  }
};

// A stream item: text generated since the previous one. Concatenated, the deltas are the whole
// completion. `text` may be empty while the tokens' text is held back (a possible stop string or a
// partial UTF-8 character).
struct CompletionDelta {
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<InferTokenLogprob> logprobs;  // per token, when asked
  template <class V>
  void fields(V& v) {
    v("text", text);
    v.optional("token_ids", token_ids);
    v.optional("logprobs", logprobs);
  }
};

struct InferUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t total_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  template <class V>
  void fields(V& v) {
    v("prompt_tokens", prompt_tokens);
    v("completion_tokens", completion_tokens);
    v("total_tokens", total_tokens);
    v.optional("cached_prompt_tokens", cached_prompt_tokens);
  }
};

// The final reply. Without stream it carries the whole text, tokens and logprobs; with stream
// those went out as deltas and are empty here.
struct CompletionReply {
  std::string id;       // "cmpl-<node-unique number>"
  std::string model;    // the served name
  std::string version;  // the registry version that generated it, "" for a local folder
  int64_t created = 0;  // Unix seconds
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<InferTokenLogprob> logprobs;
  std::string finish_reason;  // "stop" or "length"
  InferUsage usage;
  template <class V>
  void fields(V& v) {
    v("id", id);
    v("model", model);
    v.optional("version", version);
    v("created", created);
    v.optional("text", text);
    v.optional("token_ids", token_ids);
    v.optional("logprobs", logprobs);
    v("finish_reason", finish_reason);
    v("usage", usage);
  }
};

struct InferAdapter {
  std::string name;    // what requests select: `adapter`, or model "NAME:ADAPTER"
  std::string source;  // a local PEFT adapter folder
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("source", source);
  }
};

// A served model.
struct InferModel {
  std::string name;
  // A local Hugging Face folder, "model@alias" or "model/version" from the node's registry.
  std::string source;
  std::string version;  // the registry version now serving new requests; "" for a folder
  // "loading" (first load in progress), "ready", "retrying" (the registry source cannot be
  // resolved yet; tried again with backoff), "failed" (the source resolved but did not load).
  std::string state;
  std::string error;    // why, when retrying or failed
  int64_t created = 0;  // Unix seconds when the current version started serving
  int64_t max_context = 0;  // the model's max_position_embeddings
  std::vector<std::string> adapters;
  // A startup model (serve.models, or restored after a restart): readiness (/health) waits for it.
  bool startup = false;
  // infer.load's persist: kept across node restarts.
  bool persist = false;
  // For a registry adapter version: the base model it runs on ("name/version" or a folder).
  std::string base_model;
  // The loaded engine serving the current version (0 while none). Served names with the same id
  // share one loaded base: adapter versions of one base attach to the engine already loaded on it.
  uint64_t engine_id = 0;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("source", source);
    v.optional("version", version);
    v("state", state);
    v.optional("error", error);
    v.optional("created", created);
    v.optional("max_context", max_context);
    v.optional("adapters", adapters);
    v.optional("startup", startup);
    v.optional("persist", persist);
    v.optional("base_model", base_model);
    v.optional("engine_id", engine_id);
  }
};

struct InferModelsReply {
  std::vector<InferModel> models;
  template <class V>
  void fields(V& v) { v("models", models); }
};

// Loads `source` under `name` and answers once it serves (or failed). already_exists when the name
// is taken; the errors of the source (not_found for a folder or registry version that does not
// exist, invalid_argument for a malformed one).
struct InferLoadRequest {
  std::string name;
  std::string source;
  std::vector<InferAdapter> adapters;
  // Keep serving it after a node restart (it is always kept across a restart of the actor).
  bool persist = false;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("source", source);
    v.optional("adapters", adapters);
    v.optional("persist", persist);
  }
};

// Stops routing to the model, cancels its requests in flight and frees it. not_found when unknown.
struct InferUnloadRequest {
  std::string name;
  template <class V>
  void fields(V& v) { v("name", name); }
};

// A cumulative histogram in Prometheus' shape: counts[i] observations <= bounds[i]; `count` all.
struct InferHistogram {
  std::vector<double> bounds;  // seconds, ascending (the +Inf bucket is `count`)
  std::vector<uint64_t> counts;
  double sum = 0.0;
  uint64_t count = 0;
  template <class V>
  void fields(V& v) {
    v("bounds", bounds);
    v("counts", counts);
    v("sum", sum);
    v("count", count);
  }
};

struct InferModelStats {
  std::string name;
  std::string version;
  int64_t running = 0;  // requests in a running batch (every version of the model)
  int64_t waiting = 0;  // admitted, not yet running
  int64_t queue_limit = 0;  // serve.max_queue: waiting requests past which new ones are refused
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  double kv_usage = 0.0;  // used / total, of the version serving new requests
  uint64_t prompt_tokens_total = 0;
  uint64_t generation_tokens_total = 0;
  uint64_t requests_finished_total = 0;  // ended with stop or length
  uint64_t requests_failed_total = 0;    // ended with an error or a timeout
  uint64_t requests_cancelled_total = 0;
  uint64_t requests_rejected_total = 0;  // refused as overloaded
  uint64_t preempted_total = 0;
  uint64_t prefix_cache_queried_tokens = 0;
  uint64_t prefix_cache_hit_tokens = 0;
  uint64_t swaps_total = 0;  // versions swapped in after an alias moved
  InferHistogram time_to_first_token;
  InferHistogram inter_token_latency;
  InferHistogram e2e_latency;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("version", version);
    v("running", running);
    v("waiting", waiting);
    v("queue_limit", queue_limit);
    v("kv_blocks_total", kv_blocks_total);
    v("kv_blocks_used", kv_blocks_used);
    v("kv_usage", kv_usage);
    v("prompt_tokens_total", prompt_tokens_total);
    v("generation_tokens_total", generation_tokens_total);
    v("requests_finished_total", requests_finished_total);
    v("requests_failed_total", requests_failed_total);
    v("requests_cancelled_total", requests_cancelled_total);
    v("requests_rejected_total", requests_rejected_total);
    v("preempted_total", preempted_total);
    v("prefix_cache_queried_tokens", prefix_cache_queried_tokens);
    v("prefix_cache_hit_tokens", prefix_cache_hit_tokens);
    v("swaps_total", swaps_total);
    v("time_to_first_token", time_to_first_token);
    v("inter_token_latency", inter_token_latency);
    v("e2e_latency", e2e_latency);
  }
};

struct InferStatsReply {
  std::vector<InferModelStats> models;
  template <class V>
  void fields(V& v) { v("models", models); }
};

}  // namespace cairn::msg
