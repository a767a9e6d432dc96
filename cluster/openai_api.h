// OpenAI's HTTP API (/v1/models, /v1/completions, /v1/chat/completions) and Prometheus /metrics on
// the node's HTTP endpoint, served by the inference batcher through the same Dispatcher as the
// msgpack protocol (infer.* ops, runtime/messages/infer.h).
//
// Each /v1 route authenticates the request (`Authorization: Bearer <token>`, the OpenAI SDK's
// apiKey, checked against the node's TokenStore), maps the OpenAI JSON body to a
// msg::CompletionRequest, and dispatches a Call with the token's role. Without `stream` the final
// reply becomes OpenAI's JSON response. With `stream: true` the response is server-sent events: one
// `data: {chunk}` per piece of text, a last chunk with finish_reason, a usage chunk when
// stream_options.include_usage, and `data: [DONE]`. The stream starts with the first token, so an
// error found before it (bad field, unknown model, overloaded) is still a plain HTTP error; one
// after it is sent as `data: {"error": {...}}` before the stream ends. A client that disconnects
// cancels its Call, which frees the request's KV blocks.
//
// Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}:
//   malformed JSON, bad field values, prompt longer than the context  400 invalid_request_error
//   missing or unknown token                                          401 authentication_error
//   unknown model                                                     404 invalid_request_error, code model_not_found
//   the model's queue is full (serve.max_queue)                        429 rate_limit_error, code overloaded
//   the request's timeout passed before it finished                   504 timeout_error, code timeout
//   the inference role is not running, the model failed to load       503 server_error
//
// Extensions beyond OpenAI's fields: top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos
// (as vLLM names them), and a per-request timeout, as the body field `timeout_ms` or the header
// `X-Cairn-Timeout-Ms`.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cluster/auth.h"
#include "cluster/http_server.h"
#include "cluster/server.h"
#include "runtime/messages/infer.h"

namespace cairn {

// Adds the /v1 routes to `routes` (before the HTTP server starts). `dispatcher` and `tokens` must
// outlive every request the routes serve.
void register_openai_routes(HttpRouter& routes, Dispatcher& dispatcher, const TokenStore& tokens);

// Adds GET /metrics (no authentication, as Prometheus scrapes it): the per-model series from
// infer.stats (none when the inference role is not running) followed by `node_metrics()`, the
// node's own series in Prometheus text (may be null).
void register_metrics_route(HttpRouter& routes, Dispatcher& dispatcher, std::function<std::string()> node_metrics);

// What GET /health reports about the node itself; called on an HTTP thread per request.
struct NodeHealth {
  bool stopping = false;  // the node is shutting down: 503 "stopping"
  // Shown as string members of the body (node, node_id, version).
  std::vector<std::pair<std::string, std::string>> fields;
};

// Adds GET /health (no authentication, as load balancers and Kubernetes probes call it). Like
// vLLM's, it answers 200 only once the node can serve what it was configured to serve: when
// `serves_models` (the inference role runs), every startup model (msg::InferModel::startup) must
// be ready. Otherwise 503, with a body naming why:
//   {"status": "ok" | "loading" | "failed" | "unavailable" | "stopping", <node fields>,
//    "models": {"ready": [names], "loading": [names], "failed": [names]},   // startup models
//    "errors": {name: why}}                                                 // of loading/failed ones
// "loading" counts models still loading or retrying an unresolved registry source; "failed" is
// reported once none is loading; "unavailable" when the inference role does not answer (it is
// restarting). Models loaded at run time (infer.load) never make the node unhealthy.
void register_health_route(HttpRouter& routes, Dispatcher& dispatcher, bool serves_models,
                           std::function<NodeHealth()> node_health);
// The /health response for `node` and infer.models' reply (or its error); nullptr: no models role.
HttpResponse health_response(const NodeHealth& node, const Result<msg::InferModelsReply>* models);

// The Prometheus text exposition of `stats` (vLLM's metric names under the cairn: prefix, label
// model="<name>").
std::string prometheus_text(const msg::InferStatsReply& stats);

// The OpenAI error response for `status` (see the table above); `param` names the field, "" none.
HttpResponse openai_error(const Status& status, const std::string& param = {});

}  // namespace cairn
