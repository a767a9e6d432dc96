// The inference batcher (role "inference"): serves the infer.* ops (runtime/messages/infer.h,
// docs/PROTOCOL.md) over the models it has loaded, each an InferenceEngine (model/engine.h) doing
// continuous batching over a paged KV cache.
//
// Contracts:
// - One actor owns the table of served models (name -> source, the version serving new requests,
//   the versions still finishing requests). Each loaded version runs its engine's step() loop on a
//   thread of its own, never on the actor system's threads; the loop sleeps while the engine is
//   idle. Token events become Call::more() (stream) and the final reply on that thread.
// - Loading is done by a loader thread per model: it resolves the source (a local Hugging Face
//   folder, or `model/version` or `model@alias` from the node's registry, asked in-process through
//   the registry actor), copies a registry version's artifacts from the BlobStore into
//   <cache_dir>/<model>/<version>/, and loads the engine. Requests that arrive while a model loads
//   wait (up to max_running + max_queue of them) and start when it is ready.
// - Hot swap: for an alias source the loader polls the alias every alias_poll. When it names a new
//   version, that version is loaded in the background, new requests go to it once it is ready, and
//   the old version finishes its requests in flight and is then freed. No request fails across
//   the swap.
// - Startup models (serve.models / --serve, and the models restored from the store, below) are the
//   ones readiness counts. Their load is retried: a registry source that cannot be resolved yet
//   (no such alias or version, registry unavailable) is state "retrying" and is tried again with
//   exponential backoff (load_retry_initial doubling to load_retry_max; an alias is also picked up
//   at the next alias_poll once it exists); a version or folder that resolves but fails to load is
//   "failed" (an alias source keeps following its alias, so moving the alias recovers it).
//   Requests to a model that is not ready fail at once with `unavailable` naming the model and why.
//   A model loaded at run time (infer.load) is not retried: its first failure is infer.load's error.
// - Adapter versions: a registry version holding a PEFT adapter (adapter_config.json, no
//   config.json) is served on its base model: the version's base_model lineage ("name/version",
//   "name@alias" or a folder), else adapter_config.json's base_model_name_or_path, is loaded as the
//   engine and the adapter is loaded on it under the served name, which requests select by naming
//   the served model. An adapter version served without infer.load `adapters` of its own whose
//   base folder (a registry base materializes to <cache_dir>/<model>/<version>) is already loaded
//   by another served name (or its own previous version) attaches its adapter to that engine
//   instead of loading the base again (infer.models' engine_id shows the sharing); the engine is
//   freed when its last served version goes. infer.unload of a name sharing an engine cancels only
//   its own requests. Served names sharing an engine report the engine's running/waiting/KV stats.
// - Persistence: the models loaded with infer.load are recorded in the node's store (family "node",
//   keys "serve.loaded/<name>") and forgotten by infer.unload. When the actor starts it reloads the
//   records written during this boot of the node (so a supervisor restart of the actor keeps them)
//   and those loaded with `persist`; the others, from an earlier run of the node, are dropped:
//   like vLLM, a node restart serves only its configured models unless a load asked to persist.
// - Admission: a version holds at most max_running + max_queue requests; past it a request is
//   refused at once with `overloaded`. Each request ends with `timeout` when its timeout passes
//   (the request's timeout_ms, else request_timeout). A cancelled Call (client gone, explicit
//   cancel) cancels its engine request, which frees its KV blocks at the next step.
// - infer.unload and the actor's exit end the model's requests in flight (cancelled /
//   shutting_down) and free its engines once they have delivered their final events.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/all.hpp>

#include "actors/directory.h"
#include "model/engine.h"
#include "runtime/messages/infer.h"
#include "runtime/messages/node.h"

namespace cairn {

namespace storage {
class BlobStore;
class KvStore;
}

struct InferenceOptions {
  // Where registry versions are materialized: <cache_dir>/<model>/<version>/. Must be set to serve
  // registry sources (the node uses <data_dir>/serve-cache).
  std::string cache_dir;
  ModelOptions model;
  // Batching and KV cache of every engine (serve.kv_cache_bytes, serve.block_size, ...).
  EngineOptions engine;
  // Requests per version beyond max_running waiting for a place; more are refused with
  // `overloaded`. Also bounds the requests waiting for a model that is still loading. Default 256.
  int64_t max_queue = 256;
  // Default per-request timeout; 0 = none. Default 10 minutes.
  std::chrono::milliseconds request_timeout{600000};
  // How often an alias source's alias is read from the registry. Default 1 s.
  std::chrono::milliseconds alias_poll{1000};
  // How long one registry call of a loader may take. Default 30 s.
  std::chrono::milliseconds registry_timeout{30000};
  // Backoff between attempts to load a startup model whose registry source cannot be resolved:
  // the first wait, doubled after each failure up to the second. Defaults 1 s and 30 s.
  std::chrono::milliseconds load_retry_initial{1000};
  std::chrono::milliseconds load_retry_max{30000};
  // Models to load at start, as (name, source).
  std::vector<std::pair<std::string, std::string>> models;
};

// What the batcher works with. The directory (to reach the registry actor) and the blob store are
// owned by the node and outlive the actor system; either may be null when the node serves local
// folders only.
struct InferenceContext {
  const Directory* directory = nullptr;
  const storage::BlobStore* blobs = nullptr;
  // Where the models loaded at run time are recorded (family "node"); null: nothing is recorded,
  // and an actor restart forgets them. Owned by the node; outlives the actor system.
  storage::KvStore* store = nullptr;
  // The node's boot count (storage/node_identity.h): records of an earlier boot without `persist`
  // are dropped at start.
  uint64_t boot_count = 0;
  InferenceOptions options;
};

struct InferenceOp {
  std::string_view name;
  Role min_role;
};
// Every op the batcher serves: generation, listing and stats for clients; load and unload for admins.
const std::vector<InferenceOp>& inference_ops();

// Splits "NAME=SOURCE" (serve.models, `cairn node --serve`). invalid_argument quoting the text when
// there is no "=" or either side is empty, or NAME is not letters, digits, ".", "-", "_".
Result<std::pair<std::string, std::string>> parse_served_model(std::string_view spec);

caf::actor spawn_inference_batcher(caf::actor_system& system, const InferenceContext& context);

// Waits until every startup model of the batcher registered as "inference" in `directory` has
// loaded, failed, or failed once and is retrying, and returns infer.models' reply then. Asks again
// every `poll` and gives up with `cancelled` when `give_up()` (called between asks) says so.
// unavailable when the batcher is not running or stops meanwhile. For the node's ready line.
Result<msg::InferModelsReply> await_startup_models(caf::actor_system& system, const Directory& directory,
                                                   std::chrono::milliseconds poll,
                                                   const std::function<bool()>& give_up);

}  // namespace cairn
