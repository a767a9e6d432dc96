#include "model/engine.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "model/detail/engine_paged.h"
#include "model/detail/engine_text.h"
#include "model/detail/torch_error.h"
#include "model/hf_checkpoint.h"
#include "model/kv_blocks.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/sampling.h"

namespace cairn {
namespace {

constexpr int64_t kMaxLogprobs = 20;

int64_t dtype_bytes(at::ScalarType type) { return static_cast<int64_t>(c10::elementSize(type)); }

// A LoRA adapter kept beside the base weights.
struct Adapter {
  std::string name;
  uint64_t salt = 0;
  std::vector<LoraWeights> weights;            // owned copies of the tensor handles
  std::vector<const LoraWeights*> linears;     // per linear layer; null where not adapted
  std::atomic<bool> unloaded{false};
};

// A request in flight.
struct Sequence {
  uint64_t id = 0;
  EngineRequest request;
  std::shared_ptr<Adapter> adapter;
  uint64_t salt = 0;
  std::vector<int64_t> tokens;  // prompt, then generated
  int64_t prompt_length = 0;
  int64_t computed = 0;  // positions whose keys and values are in `blocks`
  std::vector<KvBlockId> blocks;
  KvBlockId extent = -1;  // its reserved run of consecutive blocks (KvBlockManager), or -1
  std::vector<uint64_t> block_hashes;  // chain hashes of the first blocks (full, computed)
  int64_t cached_prompt_tokens = -1;   // set when first scheduled
  std::unordered_map<int64_t, int64_t> output_counts;  // for penalties
  std::unordered_set<int64_t> seen;                     // prompt and output tokens, for repetition
  Sampler sampler;
  detail::IncrementalText text;

  Sequence(const SamplingOptions& sampling, const Tokenizer* tokenizer, std::vector<std::string> stop)
      : sampler(sampling), text(tokenizer, std::move(stop)) {}
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_length; }
  int64_t needed() const { return static_cast<int64_t>(tokens.size()) - computed; }
};

// One sequence's share of a step.
struct Scheduled {
  Sequence* seq;
  int64_t chunk;
};

}  // namespace

Status EngineOptions::validate() const {
  if (kv_cache_bytes == 0) return error(Code::invalid_argument, "kv_cache_bytes: must be positive");
  if (block_size < 1) {
    return error(Code::invalid_argument, "block_size " + std::to_string(block_size) + ": must be at least 1");
  }
  if (max_running < 1) {
    return error(Code::invalid_argument, "max_running " + std::to_string(max_running) + ": must be at least 1");
  }
  if (max_step_tokens < 1) {
    return error(Code::invalid_argument,
                 "max_step_tokens " + std::to_string(max_step_tokens) + ": must be at least 1");
  }
  return Status::ok_status();
}

struct InferenceEngine::Impl {
  std::unique_ptr<LlamaModel> model;
  std::optional<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat;
  std::string bos_text, eos_text;
  EngineOptions options;
  LlamaConfig config;
  std::set<int64_t> eos;
  std::unordered_set<int64_t> special_ids;  // tokens without text
  size_t linear_count = 0;

  // Step thread only.
  std::unique_ptr<KvBlockManager> blocks;
  PagedKvPool pool;
  std::deque<std::unique_ptr<Sequence>> waiting;
  std::vector<std::unique_ptr<Sequence>> running;  // oldest admitted first

  // Guarded by mutex.
  mutable std::mutex mutex;
  std::condition_variable work;
  std::vector<std::unique_ptr<Sequence>> inbox;
  std::set<uint64_t> cancels;
  std::optional<Status> abort_reason;
  bool notified = false;
  uint64_t next_id = 1;
  EngineStats stats;
  std::map<std::string, std::shared_ptr<Adapter>> adapters;

  // Held by step() around the forward pass and by adapter loading (which attaches to the model).
  std::mutex model_mutex;
  std::atomic<uint64_t> adapter_loads{0};

  Status init(const EngineOptions& engine_options) {
    CAIRN_RETURN_IF_ERROR(engine_options.validate());
    options = engine_options;
    config = model->config();
    eos.insert(config.eos_token_ids.begin(), config.eos_token_ids.end());
    if (tokenizer) {
      for (const auto& added : tokenizer->added_tokens()) {
        if (added.special) special_ids.insert(added.id);
      }
      if (auto id = tokenizer->bos_id()) bos_text = tokenizer->id_to_token(*id).value_or("");
      if (auto id = tokenizer->eos_id()) eos_text = tokenizer->id_to_token(*id).value_or("");
    }
    for (int64_t id : config.eos_token_ids) special_ids.insert(id);
    linear_count = model->linear_layers().size();
    const int64_t num_blocks =
        kv_blocks_for_budget(options.kv_cache_bytes, config.num_hidden_layers, config.num_key_value_heads,
                             config.head_dim, options.block_size, dtype_bytes(model->dtype()));
    if (num_blocks < 1) {
      return error(Code::invalid_argument, "kv_cache_bytes " + std::to_string(options.kv_cache_bytes) +
                                               " holds no KV block of " + std::to_string(options.block_size) +
                                               " tokens for this model");
    }
    blocks = std::make_unique<KvBlockManager>(num_blocks, options.block_size);
    try {
      // Uninitialised: a sequence reads only the slots it wrote.
      const auto tensor_options = at::TensorOptions().dtype(model->dtype()).device(model->device());
      for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
        pool.keys.push_back(at::empty({num_blocks * options.block_size, config.num_key_value_heads, config.head_dim},
                                      tensor_options));
        pool.values.push_back(at::empty({num_blocks * options.block_size, config.num_key_value_heads, config.head_dim},
                                        tensor_options));
      }
    } catch (...) {
      return detail::current_exception_status("inference engine: allocating the KV cache");
    }
    stats.kv_blocks_total = num_blocks;
    return Status::ok_status();
  }

  // ---- finishing ----

  void emit(Sequence& seq, const TokenEvent& event) {
    if (seq.request.on_event) seq.request.on_event(event);
  }

  void finish(Sequence& seq, const std::string& reason, Status status = Status::ok_status()) {
    TokenEvent event;
    event.request_id = seq.id;
    event.final = true;
    event.finish_reason = reason;
    event.status = std::move(status);
    if (reason == "stop" || reason == "length") event.text = seq.text.flush();
    event.prompt_tokens = seq.prompt_length;
    event.completion_tokens = seq.generated();
    event.cached_prompt_tokens = std::max<int64_t>(0, seq.cached_prompt_tokens);
    free_blocks(seq);
    {
      std::lock_guard<std::mutex> lock(mutex);
      stats.prompt_tokens_total += static_cast<uint64_t>(seq.prompt_length);
      stats.requests_finished_total += 1;
    }
    emit(seq, event);
  }

  void free_blocks(Sequence& seq) {
    if (seq.extent >= 0) blocks->release_extent(seq.extent);
    seq.extent = -1;
    blocks->release(seq.blocks);
    seq.blocks.clear();
    seq.block_hashes.clear();
    seq.computed = 0;
  }

  // Why a sequence must end before this step, or nullopt.
  std::optional<std::pair<std::string, Status>> end_reason(const Sequence& seq, const std::set<uint64_t>& cancelled,
                                                           const std::optional<Status>& abort,
                                                           std::chrono::steady_clock::time_point now) const {
    if (cancelled.count(seq.id) != 0) return std::make_pair(std::string("cancelled"), Status::ok_status());
    if (abort) return std::make_pair(std::string("error"), *abort);
    if (seq.adapter && seq.adapter->unloaded) {
      return std::make_pair(std::string("error"),
                            error(Code::not_found, "adapter \"" + seq.adapter->name + "\" was unloaded"));
    }
    if (seq.request.deadline && now >= *seq.request.deadline) {
      return std::make_pair(std::string("error"), error(Code::timeout, "request " + std::to_string(seq.id) +
                                                                           ": the deadline passed after " +
                                                                           std::to_string(seq.generated()) + " tokens"));
    }
    return std::nullopt;
  }

  // ---- scheduling ----

  // Moves the newest running sequence (not yet scheduled this step) back to the waiting queue,
  // freeing its blocks; it will be recomputed from its prompt and the tokens generated so far.
  void preempt_last() {
    std::unique_ptr<Sequence> victim = std::move(running.back());
    running.pop_back();
    free_blocks(*victim);
    waiting.push_front(std::move(victim));
    std::lock_guard<std::mutex> lock(mutex);
    stats.preempted_total += 1;
  }

  // Blocks so that positions [0, upto) have slots. Precondition: capacity(seq) covers them.
  void grow(Sequence& seq, int64_t upto) {
    const int64_t want = (upto + options.block_size - 1) / options.block_size - static_cast<int64_t>(seq.blocks.size());
    if (want <= 0) return;
    // The block after its last one (or its extent's first), to keep its blocks consecutive.
    const KvBlockId next = seq.blocks.empty() ? seq.extent : seq.blocks.back() + 1;
    auto got = blocks->allocate(want, next);
    seq.blocks.insert(seq.blocks.end(), got->begin(), got->end());
  }

  // Shares the cached full blocks the sequence starts with (never its last token: that one is
  // computed to get logits). Returns the tokens found.
  int64_t lookup_prefix(Sequence& seq) {
    if (!options.prefix_caching) return 0;
    const int64_t bs = options.block_size;
    const int64_t full = (static_cast<int64_t>(seq.tokens.size()) - 1) / bs;
    uint64_t parent = 0;
    for (int64_t b = 0; b < full; ++b) {
      auto hit = blocks->lookup(parent, seq.tokens.data() + b * bs, seq.salt);
      if (!hit) break;
      parent = kv_block_hash(parent, seq.tokens.data() + b * bs, bs, seq.salt);
      seq.blocks.push_back(*hit);
      seq.block_hashes.push_back(parent);
      seq.computed += bs;
    }
    return seq.computed;
  }

  // Tokens the sequence could take now: what its blocks and the available ones hold.
  int64_t capacity(const Sequence& seq) const {
    return (static_cast<int64_t>(seq.blocks.size()) + blocks->available()) * options.block_size - seq.computed;
  }

  std::vector<Scheduled> schedule() {
    std::vector<Scheduled> batch;
    std::unordered_set<const Sequence*> scheduled;
    int64_t budget = options.max_step_tokens;
    bool preempted = false;
    // Decodes first (one token each), then prefill chunks of running sequences, oldest first.
    // When the pool runs dry the newest running sequences not yet in this step's batch are
    // preempted; when that is the sequence itself, it is preempted.
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < running.size() && budget > 0;) {
        Sequence& seq = *running[i];
        const bool decoding = seq.needed() == 1;
        if (decoding != (pass == 0)) {
          ++i;
          continue;
        }
        while (capacity(seq) < 1 && running.size() > i + 1 && scheduled.count(running.back().get()) == 0) {
          preempt_last();
          preempted = true;
        }
        if (capacity(seq) < 1) {
          if (running.size() == i + 1) {
            preempt_last();  // the newest left is itself
            preempted = true;
            break;
          }
          ++i;  // the sequences after it are in the batch: wait for them to finish
          continue;
        }
        const int64_t chunk = std::min({seq.needed(), budget, capacity(seq)});
        grow(seq, seq.computed + chunk);
        batch.push_back({&seq, chunk});
        scheduled.insert(&seq);
        budget -= chunk;
        ++i;
      }
    }
    // Then new (or preempted) requests, first come first served, while the budget and the pool
    // last; not in a step that had to preempt (the preempted would come straight back).
    while (!preempted && !waiting.empty() && budget > 0 &&
           static_cast<int64_t>(running.size()) < options.max_running) {
      Sequence& seq = *waiting.front();
      const bool first = seq.cached_prompt_tokens < 0;
      const int64_t hit = lookup_prefix(seq);
      if (hit == 0) {
        // Room to grow to its longest in consecutive blocks, when the pool has it.
        const int64_t longest = seq.prompt_length + seq.request.max_tokens - 1;
        seq.extent = blocks->reserve_extent((longest + options.block_size - 1) / options.block_size).value_or(-1);
      }
      const int64_t chunk = std::min({seq.needed(), budget, capacity(seq)});
      if (chunk < 1) {
        free_blocks(seq);
        break;
      }
      grow(seq, seq.computed + chunk);
      if (first) {
        seq.cached_prompt_tokens = std::min(hit, seq.prompt_length);
        std::lock_guard<std::mutex> lock(mutex);
        stats.prefix_cache_queried_tokens += static_cast<uint64_t>(seq.prompt_length);
        stats.prefix_cache_hit_tokens += static_cast<uint64_t>(seq.cached_prompt_tokens);
      }
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
      batch.push_back({running.back().get(), chunk});
      budget -= chunk;
    }
    return batch;
  }

  // ---- the forward pass ----

  Result<at::Tensor> forward(const std::vector<Scheduled>& batch, std::vector<Sequence*>& sampled) {
    const int64_t bs = options.block_size;
    std::vector<int64_t> ids, positions, new_slots, gather_slots, logit_rows;
    PagedBatch paged;
    paged.pool = &pool;
    std::map<Adapter*, std::pair<std::vector<int64_t>, std::vector<int64_t>>> adapter_rows;
    const auto long_options = at::TensorOptions().dtype(at::kLong);
    for (const Scheduled& item : batch) {
      Sequence& seq = *item.seq;
      PagedSequence ps;
      ps.token_offset = static_cast<int64_t>(ids.size());
      ps.length = item.chunk;
      ps.past = seq.computed;
      const int64_t total = seq.computed + item.chunk;
      const int64_t used_blocks = (total + bs - 1) / bs;
      bool consecutive = true;
      for (int64_t b = 1; b < used_blocks && consecutive; ++b) consecutive = seq.blocks[b] == seq.blocks[0] + b;
      if (consecutive) {
        ps.pool_offset = static_cast<int64_t>(seq.blocks[0]) * bs;
      } else {
        ps.gather_offset = static_cast<int64_t>(gather_slots.size());
        for (int64_t p = 0; p < total; ++p) gather_slots.push_back(seq.blocks[p / bs] * bs + p % bs);
      }
      for (int64_t p = seq.computed; p < total; ++p) {
        ids.push_back(seq.tokens[p]);
        positions.push_back(p);
        new_slots.push_back(seq.blocks[p / bs] * bs + p % bs);
      }
      paged.sequences.push_back(ps);
      const bool needs_logits = total == static_cast<int64_t>(seq.tokens.size());
      if (seq.adapter) {
        auto& rows = adapter_rows[seq.adapter.get()];
        for (int64_t r = 0; r < item.chunk; ++r) rows.first.push_back(paged.sequences.back().token_offset + r);
        if (needs_logits) rows.second.push_back(static_cast<int64_t>(logit_rows.size()));
      }
      if (needs_logits) {
        logit_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
        sampled.push_back(&seq);
      }
    }
    const at::Device device = model->device();
    paged.input_ids = at::tensor(ids, long_options).to(device);
    paged.positions = at::tensor(positions, long_options).to(device);
    paged.new_slots = at::tensor(new_slots, long_options).to(device);
    paged.gather_slots = at::tensor(gather_slots, long_options).to(device);
    paged.logit_rows = at::tensor(logit_rows, long_options).to(device);
    for (auto& [adapter, rows] : adapter_rows) {
      PagedAdapterRows a;
      a.linears = &adapter->linears;
      a.rows = at::tensor(rows.first, long_options).to(device);
      a.logit_rows = at::tensor(rows.second, long_options).to(device);
      paged.adapters.push_back(std::move(a));
    }
    return model->forward_paged(paged);
  }

  // ---- sampling ----

  // The row's logits with the request's penalties and min_p applied (the row itself when none).
  at::Tensor processed_logits(const Sequence& seq, const at::Tensor& row) const {
    const SamplingOptions& s = seq.request.sampling;
    const bool repetition = s.repetition_penalty != 1.0;
    const bool additive = s.presence_penalty != 0.0 || s.frequency_penalty != 0.0;
    const bool min_p = s.min_p > 0 && s.temperature > 0;
    if (!repetition && !additive && !min_p) return row;
    at::Tensor out = row.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    if (repetition && !seq.seen.empty()) {
      std::vector<int64_t> ids(seq.seen.begin(), seq.seen.end());
      at::Tensor index = at::tensor(ids, at::kLong).to(out.device());
      at::Tensor values = out.index_select(0, index);
      values = at::where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty);
      out.index_copy_(0, index, values);
    }
    if (additive && !seq.output_counts.empty()) {
      std::vector<int64_t> ids;
      std::vector<float> amounts;
      for (const auto& [id, count] : seq.output_counts) {
        ids.push_back(id);
        amounts.push_back(static_cast<float>(s.frequency_penalty * static_cast<double>(count) + s.presence_penalty));
      }
      out.index_add_(0, at::tensor(ids, at::kLong).to(out.device()), at::tensor(amounts).to(out.device()), -1);
    }
    if (min_p) {
      // p_i >= min_p * p_max  <=>  l_i >= l_max + temperature * ln(min_p).
      const double threshold = out.max().item<double>() + s.temperature * std::log(s.min_p);
      out.masked_fill_(out < threshold, -std::numeric_limits<float>::infinity());
    }
    return out;
  }

  // Samples the sequence's next token from its logits row and delivers it; ends the sequence when
  // it is done. Returns false when it ended.
  // Greedy without penalties: the row's argmax, which step() computes for all rows at once.
  static bool plain_greedy(const Sequence& seq) {
    const SamplingOptions& s = seq.request.sampling;
    return s.temperature == 0 && s.repetition_penalty == 1.0 && s.presence_penalty == 0.0 &&
           s.frequency_penalty == 0.0;
  }

  // `argmax`: the row's argmax when plain_greedy(seq) (what the Sampler would pick), else unused.
  bool take_token(Sequence& seq, const at::Tensor& row, int64_t argmax) {
    Result<int64_t> token = plain_greedy(seq) ? Result<int64_t>(argmax) : seq.sampler.sample(processed_logits(seq, row));
    if (!token.ok()) {
      finish(seq, "error", token.status());
      return false;
    }
    const int64_t id = *token;
    TokenEvent event;
    event.request_id = seq.id;
    event.token_id = id;
    event.logprob = std::numeric_limits<double>::quiet_NaN();
    if (seq.request.logprobs > 0) {
      at::Tensor logprobs = at::log_softmax(row.to(at::kFloat), 0).cpu();
      event.logprob = logprobs[id].item<double>();
      auto [values, ids] = at::topk(logprobs, std::min<int64_t>(seq.request.logprobs, logprobs.numel()));
      for (int64_t i = 0; i < values.numel(); ++i) {
        TopLogprob top;
        top.token_id = ids[i].item<int64_t>();
        top.logprob = values[i].item<double>();
        if (tokenizer) top.text = tokenizer->decode({static_cast<int32_t>(top.token_id)});
        event.top_logprobs.push_back(std::move(top));
      }
    }
    seq.tokens.push_back(id);
    seq.output_counts[id] += 1;
    seq.seen.insert(id);
    {
      std::lock_guard<std::mutex> lock(mutex);
      stats.generation_tokens_total += 1;
    }
    const auto& stop_ids = seq.request.stop_token_ids;
    const bool is_stop_id = std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end();
    const bool is_eos = !seq.request.ignore_eos && eos.count(id) != 0;
    if (!is_stop_id && !is_eos && special_ids.count(id) == 0) event.text = seq.text.add(id);
    emit(seq, event);
    if (is_stop_id || is_eos || seq.text.stopped()) {
      finish(seq, "stop");
      return false;
    }
    if (seq.generated() >= seq.request.max_tokens) {
      finish(seq, "length");
      return false;
    }
    return true;
  }

  // Publishes the sequence's newly completed full blocks to the prefix cache.
  void publish_blocks(Sequence& seq) {
    if (!options.prefix_caching) return;
    const int64_t bs = options.block_size;
    for (int64_t b = static_cast<int64_t>(seq.block_hashes.size()); (b + 1) * bs <= seq.computed; ++b) {
      const uint64_t parent = b == 0 ? 0 : seq.block_hashes[b - 1];
      seq.block_hashes.push_back(blocks->publish(seq.blocks[b], parent, seq.tokens.data() + b * bs, seq.salt));
    }
  }

  // Removes finished sequences (null entries) from the running list, keeping the order.
  void compact_running() {
    running.erase(std::remove(running.begin(), running.end(), nullptr), running.end());
  }

  bool step() {
    at::InferenceMode inference;
    std::set<uint64_t> cancelled;
    std::optional<Status> abort;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (auto& seq : inbox) waiting.push_back(std::move(seq));
      inbox.clear();
      cancelled.swap(cancels);
      abort.swap(abort_reason);
      notified = false;
    }
    const auto now = std::chrono::steady_clock::now();
    for (auto& seq : running) {
      if (auto reason = end_reason(*seq, cancelled, abort, now)) {
        finish(*seq, reason->first, reason->second);
        seq.reset();
      }
    }
    compact_running();
    for (auto& seq : waiting) {
      if (auto reason = end_reason(*seq, cancelled, abort, now)) {
        finish(*seq, reason->first, reason->second);
        seq.reset();
      }
    }
    waiting.erase(std::remove(waiting.begin(), waiting.end(), nullptr), waiting.end());

    std::vector<Scheduled> batch = schedule();
    if (!batch.empty()) {
      std::vector<Sequence*> sampled;
      Result<at::Tensor> logits = Status::ok_status();
      {
        std::lock_guard<std::mutex> lock(model_mutex);
        try {
          logits = forward(batch, sampled);
        } catch (...) {
          logits = detail::current_exception_status("inference engine: step");
        }
      }
      std::set<Sequence*> ended;
      if (!logits.ok()) {
        for (const Scheduled& item : batch) {
          finish(*item.seq, "error", logits.status());
          ended.insert(item.seq);
        }
      } else {
        for (const Scheduled& item : batch) {
          item.seq->computed += item.chunk;
          publish_blocks(*item.seq);
        }
        try {
          at::Tensor rows = *logits;
          // One argmax over all rows for the greedy requests instead of one per row.
          at::Tensor argmax = at::argmax(rows, 1).cpu();
          const int64_t* best = argmax.data_ptr<int64_t>();
          for (size_t r = 0; r < sampled.size(); ++r) {
            if (!take_token(*sampled[r], rows[static_cast<int64_t>(r)], best[r])) ended.insert(sampled[r]);
          }
        } catch (...) {
          Status failure = detail::current_exception_status("inference engine: sampling");
          for (Sequence* seq : sampled) {
            if (ended.insert(seq).second) finish(*seq, "error", failure);
          }
        }
      }
      for (auto& seq : running) {
        if (ended.count(seq.get()) != 0) seq.reset();
      }
      compact_running();
    }
    std::lock_guard<std::mutex> lock(mutex);
    stats.steps_total += 1;
    publish_stats_locked();
    return !running.empty() || !waiting.empty() || !inbox.empty();
  }

  void publish_stats_locked() {
    stats.running = static_cast<int64_t>(running.size());
    stats.waiting = static_cast<int64_t>(waiting.size() + inbox.size());
    stats.kv_blocks_used = blocks->used();
    stats.kv_blocks_cached = blocks->cached();
    stats.kv_usage = static_cast<double>(stats.kv_blocks_used) / static_cast<double>(stats.kv_blocks_total);
  }

  Status validate(const EngineRequest& r, std::shared_ptr<Adapter>* adapter) const {
    if (r.prompt_ids.empty()) return error(Code::invalid_argument, "the prompt is empty");
    for (int64_t id : r.prompt_ids) {
      if (id < 0 || id >= config.vocab_size) {
        return error(Code::invalid_argument, "prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                                 std::to_string(config.vocab_size) + ")");
      }
    }
    if (r.max_tokens < 1) {
      return error(Code::invalid_argument, "max_tokens " + std::to_string(r.max_tokens) + ": must be at least 1");
    }
    const int64_t prompt = static_cast<int64_t>(r.prompt_ids.size());
    if (prompt + r.max_tokens > config.max_position_embeddings) {
      return error(Code::invalid_argument, "the prompt's " + std::to_string(prompt) + " tokens + max_tokens " +
                                               std::to_string(r.max_tokens) + " exceed the model's context of " +
                                               std::to_string(config.max_position_embeddings) + " tokens");
    }
    // The last token is never fed back, so it needs no slot.
    const int64_t needed = (prompt + r.max_tokens - 1 + options.block_size - 1) / options.block_size;
    if (needed > blocks->num_blocks()) {
      return error(Code::invalid_argument, "the prompt's " + std::to_string(prompt) + " tokens + max_tokens " +
                                               std::to_string(r.max_tokens) + " need " + std::to_string(needed) +
                                               " KV blocks; the whole cache holds " +
                                               std::to_string(blocks->num_blocks()));
    }
    if (r.logprobs < 0 || r.logprobs > kMaxLogprobs) {
      return error(Code::invalid_argument, "logprobs " + std::to_string(r.logprobs) + ": must be in [0, 20]");
    }
    CAIRN_RETURN_IF_ERROR(validate_sampling_options(r.sampling));
    if (!r.stop.empty() && !tokenizer) {
      return error(Code::invalid_argument, "stop strings need a tokenizer; this model has none");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) return error(Code::invalid_argument, "stop strings must not be empty");
    }
    if (!r.adapter.empty()) {
      auto found = adapters.find(r.adapter);
      if (found == adapters.end()) return error(Code::not_found, "adapter \"" + r.adapter + "\" is not loaded");
      *adapter = found->second;
    }
    return Status::ok_status();
  }
};

InferenceEngine::InferenceEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InferenceEngine::~InferenceEngine() = default;

Result<std::unique_ptr<InferenceEngine>> InferenceEngine::create(std::unique_ptr<LlamaModel> model,
                                                                 std::optional<Tokenizer> tokenizer,
                                                                 const EngineOptions& options) {
  if (!model) return error(Code::invalid_argument, "inference engine: no model");
  if (model->training()) {
    return error(Code::invalid_argument, "inference engine: the model is in training mode; set_training(false)");
  }
  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  impl->tokenizer = std::move(tokenizer);
  auto chat = ChatTemplate::parse(std::string(chatml_template()));
  if (!chat.ok()) return chat.status();
  impl->chat = std::move(*chat);
  CAIRN_RETURN_IF_ERROR(impl->init(options));
  return std::unique_ptr<InferenceEngine>(new InferenceEngine(std::move(impl)));
}

Result<std::unique_ptr<InferenceEngine>> InferenceEngine::load(const std::string& model_dir,
                                                               const ModelOptions& model_options,
                                                               const EngineOptions& options) {
  CAIRN_RETURN_IF_ERROR(options.validate());
  auto model = load_llama(model_dir, model_options);
  if (!model.ok()) return model.status();
  auto tokenizer = Tokenizer::load(model_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  auto source = load_chat_template(model_dir);
  if (!source.ok()) return source.status();
  auto chat = ChatTemplate::parse(*source);
  if (!chat.ok()) return chat.status().with_context(model_dir + "/tokenizer_config.json");
  auto engine = create(std::make_unique<LlamaModel>(std::move(*model)), std::move(*tokenizer), options);
  if (!engine.ok()) return engine.status();
  (*engine)->impl_->chat = std::move(*chat);
  return engine;
}

Status InferenceEngine::load_adapter(const std::string& name, const std::string& dir) {
  Impl& m = *impl_;
  if (name.empty()) return error(Code::invalid_argument, "adapter name is empty");
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if (m.adapters.count(name) != 0) return error(Code::already_exists, "adapter \"" + name + "\" is already loaded");
  }
  auto adapter = std::make_shared<Adapter>();
  adapter->name = name;
  // Salted per load, so blocks cached under an earlier adapter of the same name never match.
  adapter->salt = kv_block_salt(name + "#" + std::to_string(m.adapter_loads.fetch_add(1)));
  {
    // load_lora attaches to the model's layers; take the weights off again so the base stays bare
    // and each request chooses its adapter.
    std::lock_guard<std::mutex> lock(m.model_mutex);
    auto loaded = load_lora(*m.model, dir);
    if (!loaded.ok()) return loaded.status();
    auto linears = m.model->linear_layers();
    adapter->weights.reserve(linears.size());
    std::vector<int64_t> index(linears.size(), -1);
    for (size_t i = 0; i < linears.size(); ++i) {
      if (!linears[i].second->lora()) continue;
      index[i] = static_cast<int64_t>(adapter->weights.size());
      adapter->weights.push_back(*linears[i].second->lora());
    }
    Status detached = detach_lora(*m.model);
    if (!detached.ok()) return detached;
    for (size_t i = 0; i < linears.size(); ++i) {
      adapter->linears.push_back(index[i] < 0 ? nullptr : &adapter->weights[static_cast<size_t>(index[i])]);
    }
  }
  std::lock_guard<std::mutex> lock(m.mutex);
  if (m.adapters.count(name) != 0) return error(Code::already_exists, "adapter \"" + name + "\" is already loaded");
  m.adapters.emplace(name, std::move(adapter));
  return Status::ok_status();
}

Status InferenceEngine::unload_adapter(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto found = impl_->adapters.find(name);
  if (found == impl_->adapters.end()) return error(Code::not_found, "adapter \"" + name + "\" is not loaded");
  found->second->unloaded = true;
  impl_->adapters.erase(found);
  impl_->work.notify_all();
  return Status::ok_status();
}

std::vector<std::string> InferenceEngine::adapters() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  std::vector<std::string> out;
  for (const auto& [name, adapter] : impl_->adapters) out.push_back(name);
  return out;
}

Result<uint64_t> InferenceEngine::submit(EngineRequest request) {
  Impl& m = *impl_;
  std::shared_ptr<Adapter> adapter;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    Status valid = m.validate(request, &adapter);
    if (!valid.ok()) return valid;
  }
  std::vector<std::string> stop = request.stop;
  auto seq = std::make_unique<Sequence>(request.sampling, m.tokenizer ? &*m.tokenizer : nullptr, std::move(stop));
  seq->adapter = adapter;
  seq->salt = adapter ? adapter->salt : 0;
  seq->tokens = request.prompt_ids;
  seq->prompt_length = static_cast<int64_t>(request.prompt_ids.size());
  if (request.sampling.repetition_penalty != 1.0) seq->seen.insert(seq->tokens.begin(), seq->tokens.end());
  seq->request = std::move(request);
  std::lock_guard<std::mutex> lock(m.mutex);
  seq->id = m.next_id++;
  const uint64_t id = seq->id;
  m.inbox.push_back(std::move(seq));
  m.stats.waiting += 1;
  m.work.notify_all();
  return id;
}

void InferenceEngine::cancel(uint64_t request_id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->cancels.insert(request_id);
  impl_->work.notify_all();
}

void InferenceEngine::abort_all(const Status& reason) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->abort_reason = reason;
  impl_->work.notify_all();
}

bool InferenceEngine::step() { return impl_->step(); }

void InferenceEngine::wait_for_work(std::chrono::milliseconds timeout) {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lock(m.mutex);
  m.work.wait_for(lock, timeout, [&] {
    return m.notified || !m.inbox.empty() || !m.cancels.empty() || m.abort_reason.has_value() ||
           m.stats.running > 0 || m.stats.waiting > 0;
  });
  m.notified = false;
}

void InferenceEngine::notify() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->notified = true;
  impl_->work.notify_all();
}

EngineStats InferenceEngine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

const LlamaConfig& InferenceEngine::config() const { return impl_->config; }
const EngineOptions& InferenceEngine::options() const { return impl_->options; }
const Tokenizer* InferenceEngine::tokenizer() const { return impl_->tokenizer ? &*impl_->tokenizer : nullptr; }
const ChatTemplate& InferenceEngine::chat_template() const { return *impl_->chat; }

Result<std::string> InferenceEngine::render_chat(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  ChatTemplateVars vars;
  vars.bos_token = impl_->bos_text;
  vars.eos_token = impl_->eos_text;
  vars.add_generation_prompt = add_generation_prompt;
  return impl_->chat->render(messages, vars);
}

}  // namespace cairn
