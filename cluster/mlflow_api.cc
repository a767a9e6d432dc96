#include "cluster/mlflow_api.h"

#include <atomic>
#include <cctype>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cluster/detail/mlflow_json.h"
#include "runtime/call.h"
#include "runtime/messages/registry.h"
#include "runtime/protocol.h"
#include "runtime/wire.h"

namespace cairn {
namespace {

using mlflow_json::DecodeOptions;
using mlflow_json::Json;

// The client name Calls from this API carry (audit records: "client:mlflow-http").
constexpr std::string_view kClientName = "mlflow-http";
// Sent with every 401, as HTTP asks.
constexpr std::string_view kAuthChallenge = "Bearer realm=\"cairn\", Basic realm=\"cairn\"";
// Where get-download-uri points: `cairn models download NAME/VERSION` fetches it.
constexpr std::string_view kDownloadUriScheme = "cairn://";
// MLflow's stage for versions outside every stage; Cairn has no stages, so every version is here.
constexpr std::string_view kNoStage = "None";

// ---- MLflow request shapes with no catalogue struct of their own ----

struct ExperimentNameRequest {
  std::string experiment_name;
  template <class V>
  void fields(V& v) { v("experiment_name", experiment_name); }
};

struct LogMetricRequest {
  std::string run_id;
  std::string key;
  double value = 0;
  int64_t timestamp = 0;
  int64_t step = 0;
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v("key", key);
    v("value", value);
    v("timestamp", timestamp);
    v.optional("step", step);
  }
};

// log-parameter and set-tag.
struct RunKeyValueRequest {
  std::string run_id;
  std::string key;
  std::string value;
  template <class V>
  void fields(V& v) {
    v("run_id", run_id);
    v("key", key);
    v("value", value);
  }
};

struct LatestVersionsRequest {
  std::string name;
  std::vector<std::string> stages;  // ignored: Cairn has no stages (docs/MLFLOW.md)
  template <class V>
  void fields(V& v) {
    v("name", name);
    v.optional("stages", stages);
  }
};

struct VersionKeyRequest {
  std::string name;
  std::string version;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("version", version);
  }
};

// registered-models/set-tag and delete-tag (value unused by delete-tag).
struct ModelTagRequest {
  std::string name;
  std::string key;
  std::string value;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("key", key);
    v.optional("value", value);
  }
};

// model-versions/set-tag and delete-tag (value unused by delete-tag).
struct VersionTagRequest {
  std::string name;
  std::string version;
  std::string key;
  std::string value;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("version", version);
    v("key", key);
    v.optional("value", value);
  }
};

// ---- replies ----

// Fields MLflow's clients read that the catalogue does not carry.
struct MlflowExtras {
  // Clients before MLflow 1.x's run_id read the run's id from run_uuid.
  void operator()(const msg::RunInfo& info, Json& out) const { out["run_uuid"] = info.run_id; }
  void operator()(const msg::ModelVersion&, Json& out) const { out["current_stage"] = kNoStage; }
  template <class T>
  void operator()(const T&, Json&) const {}
};

// ---- endpoints ----

// Reads an endpoint's parameters into the op's encoded request body.
using RequestEncoder = std::function<Result<std::string>(const Json&, const DecodeOptions&)>;
// Turns the op's encoded reply into the endpoint's response body.
using ReplyDecoder = std::function<Result<Json>(std::string_view)>;

// One MLflow endpoint and the registry op that serves it.
struct Endpoint {
  std::string method;
  std::string path;  // after kMlflowApiPrefix
  std::string op;
  RequestEncoder encode_request;
  ReplyDecoder decode_reply;
};

// Parameters of MLflow shape `In`, turned into a catalogue request by `adapt(In&&)`.
template <class In, class Adapt>
RequestEncoder adapted_request(Adapt adapt) {
  return [adapt](const Json& params, const DecodeOptions& options) -> Result<std::string> {
    auto in = mlflow_json::decode<In>(params, options);
    if (!in.ok()) return in.status();
    return wire::encode(adapt(std::move(in).value()));
  };
}

// Parameters that are the catalogue request, key for key.
template <class Request>
RequestEncoder same_request() {
  return adapted_request<Request>([](Request request) { return request; });
}

// The reply decoded as `Reply` and shaped by `shape(const Reply&) -> Json`.
template <class Reply, class Shape>
ReplyDecoder shaped_reply(Shape shape) {
  return [shape](std::string_view body) -> Result<Json> {
    auto reply = wire::decode_bytes<Reply>(body);
    if (!reply.ok()) {
      return Status(Code::internal, "the registry's reply does not decode: " + reply.status().message());
    }
    return shape(*reply);
  };
}

// The reply is the MLflow response, key for key.
template <class Reply>
ReplyDecoder same_reply() {
  return shaped_reply<Reply>([](const Reply& reply) { return mlflow_json::encode(reply, MlflowExtras{}); });
}

// MLflow answers {} (whatever the op replied).
ReplyDecoder empty_reply() {
  return [](std::string_view) -> Result<Json> { return Json::object(); };
}

msg::LogBatchRequest one_metric(LogMetricRequest in) {
  msg::LogBatchRequest out;
  out.run_id = std::move(in.run_id);
  out.metrics.push_back({std::move(in.key), in.value, in.timestamp, in.step});
  return out;
}

msg::LogBatchRequest one_param(RunKeyValueRequest in) {
  msg::LogBatchRequest out;
  out.run_id = std::move(in.run_id);
  out.params.push_back({std::move(in.key), std::move(in.value)});
  return out;
}

msg::LogBatchRequest one_tag(RunKeyValueRequest in) {
  msg::LogBatchRequest out;
  out.run_id = std::move(in.run_id);
  out.tags.push_back({std::move(in.key), std::move(in.value)});
  return out;
}

msg::GetVersionRequest version_by_number(VersionKeyRequest in) {
  msg::GetVersionRequest out;
  out.name = std::move(in.name);
  out.version = std::move(in.version);
  return out;
}

std::vector<Endpoint> mlflow_endpoints() {
  using namespace msg;
  const auto by_id = [](ExperimentIdRequest in) {
    GetExperimentRequest out;
    out.experiment_id = std::move(in.experiment_id);
    return out;
  };
  const auto by_name = [](ExperimentNameRequest in) {
    GetExperimentRequest out;
    out.experiment_name = std::move(in.experiment_name);
    return out;
  };
  const auto latest = [](LatestVersionsRequest in) { return ModelNameRequest{std::move(in.name)}; };
  const auto by_alias = [](AliasRequest in) {
    GetVersionRequest out;
    out.name = std::move(in.name);
    out.alias = std::move(in.alias);
    return out;
  };
  const auto set_model_tag = [](ModelTagRequest in) {
    UpdateModelRequest out;
    out.name = std::move(in.name);
    out.set_tags.push_back({std::move(in.key), std::move(in.value)});
    return out;
  };
  const auto delete_model_tag = [](ModelTagRequest in) {
    UpdateModelRequest out;
    out.name = std::move(in.name);
    out.delete_tags.push_back(std::move(in.key));
    return out;
  };
  const auto set_version_tag = [](VersionTagRequest in) {
    UpdateVersionRequest out;
    out.name = std::move(in.name);
    out.version = std::move(in.version);
    out.set_tags.push_back({std::move(in.key), std::move(in.value)});
    return out;
  };
  const auto delete_version_tag = [](VersionTagRequest in) {
    UpdateVersionRequest out;
    out.name = std::move(in.name);
    out.version = std::move(in.version);
    out.delete_tags.push_back(std::move(in.key));
    return out;
  };
  const auto download_uri = [](const VersionReply& reply) {
    const auto& v = reply.model_version;
    return Json{{"artifact_uri", std::string(kDownloadUriScheme) + v.name + "/" + v.version}};
  };

  std::vector<Endpoint> e;
  auto add = [&e](std::string method, std::string path, std::string_view op, RequestEncoder request,
                  ReplyDecoder reply) {
    e.push_back({std::move(method), std::move(path), std::string(op), std::move(request), std::move(reply)});
  };
  // Experiments.
  add("POST", "/experiments/create", kCreateExperiment, same_request<CreateExperimentRequest>(),
      same_reply<CreateExperimentReply>());
  add("GET", "/experiments/get", kGetExperiment, adapted_request<ExperimentIdRequest>(by_id),
      same_reply<ExperimentReply>());
  add("GET", "/experiments/get-by-name", kGetExperiment, adapted_request<ExperimentNameRequest>(by_name),
      same_reply<ExperimentReply>());
  for (const char* method : {"POST", "GET"}) {
    add(method, "/experiments/search", kSearchExperiments, same_request<SearchExperimentsRequest>(),
        same_reply<SearchExperimentsReply>());
  }
  add("POST", "/experiments/delete", kDeleteExperiment, same_request<ExperimentIdRequest>(), empty_reply());
  // Runs and metrics. The single-item writes are one-item log_batch requests, so they share its
  // validation and group commit.
  add("POST", "/runs/create", kCreateRun, same_request<CreateRunRequest>(), same_reply<RunReply>());
  add("GET", "/runs/get", kGetRun, same_request<RunIdRequest>(), same_reply<RunReply>());
  add("POST", "/runs/update", kUpdateRun, same_request<UpdateRunRequest>(), same_reply<UpdateRunReply>());
  add("POST", "/runs/delete", kDeleteRun, same_request<RunIdRequest>(), empty_reply());
  add("POST", "/runs/search", kSearchRuns, same_request<SearchRunsRequest>(), same_reply<SearchRunsReply>());
  add("POST", "/runs/log-batch", kLogBatch, same_request<LogBatchRequest>(), empty_reply());
  add("POST", "/runs/log-metric", kLogBatch, adapted_request<LogMetricRequest>(one_metric), empty_reply());
  add("POST", "/runs/log-parameter", kLogBatch, adapted_request<RunKeyValueRequest>(one_param), empty_reply());
  add("POST", "/runs/set-tag", kLogBatch, adapted_request<RunKeyValueRequest>(one_tag), empty_reply());
  add("GET", "/metrics/get-history", kGetMetricHistory, same_request<GetMetricHistoryRequest>(),
      same_reply<MetricHistoryReply>());
  // Registered models and aliases.
  add("POST", "/registered-models/create", kCreateModel, same_request<CreateModelRequest>(), same_reply<ModelReply>());
  add("GET", "/registered-models/get", kGetModel, same_request<ModelNameRequest>(), same_reply<ModelReply>());
  add("GET", "/registered-models/search", kSearchModels, same_request<SearchModelsRequest>(),
      same_reply<SearchModelsReply>());
  add("PATCH", "/registered-models/update", kUpdateModel, same_request<UpdateModelRequest>(), same_reply<ModelReply>());
  add("DELETE", "/registered-models/delete", kDeleteModel, same_request<ModelNameRequest>(), empty_reply());
  for (const char* method : {"POST", "GET"}) {
    add(method, "/registered-models/get-latest-versions", kGetLatestVersions,
        adapted_request<LatestVersionsRequest>(latest), same_reply<LatestVersionsReply>());
  }
  add("POST", "/registered-models/set-tag", kUpdateModel, adapted_request<ModelTagRequest>(set_model_tag),
      empty_reply());
  add("DELETE", "/registered-models/delete-tag", kUpdateModel, adapted_request<ModelTagRequest>(delete_model_tag),
      empty_reply());
  add("POST", "/registered-models/alias", kSetAlias, same_request<SetAliasRequest>(), empty_reply());
  add("DELETE", "/registered-models/alias", kDeleteAlias, same_request<AliasRequest>(), empty_reply());
  add("GET", "/registered-models/alias", kGetVersion, adapted_request<AliasRequest>(by_alias),
      same_reply<VersionReply>());
  // Model versions.
  add("POST", "/model-versions/create", kCreateVersion, same_request<CreateVersionRequest>(),
      same_reply<VersionReply>());
  add("GET", "/model-versions/get", kGetVersion, adapted_request<VersionKeyRequest>(version_by_number),
      same_reply<VersionReply>());
  add("PATCH", "/model-versions/update", kUpdateVersion, same_request<UpdateVersionRequest>(),
      same_reply<VersionReply>());
  add("GET", "/model-versions/search", kSearchVersions, same_request<SearchVersionsRequest>(),
      same_reply<SearchVersionsReply>());
  add("GET", "/model-versions/get-download-uri", kGetVersion, adapted_request<VersionKeyRequest>(version_by_number),
      shaped_reply<VersionReply>(download_uri));
  add("POST", "/model-versions/set-tag", kUpdateVersion, adapted_request<VersionTagRequest>(set_version_tag),
      empty_reply());
  add("DELETE", "/model-versions/delete-tag", kUpdateVersion, adapted_request<VersionTagRequest>(delete_version_tag),
      empty_reply());
  return e;
}

// MLflow endpoints a client may reach for that Cairn does not serve, with what to do instead.
struct Unsupported {
  const char* method;
  const char* path;
  const char* why;
};
constexpr Unsupported kUnsupported[] = {
    {"POST", "/model-versions/transition-stage",
     "Cairn has no stages: point an alias at the version instead (POST /registered-models/alias)"},
    {"DELETE", "/model-versions/delete", "model versions are kept forever in Cairn's registry"},
    {"POST", "/registered-models/rename", "registered models cannot be renamed in Cairn"},
};

// ---- one exchange ----

HttpResponse json_response(int status, const Json& body) {
  HttpResponse response;
  response.status = status;
  response.body = mlflow_json::dump(body);
  return response;
}

// Answers the HTTP exchange of one Call with the Call's final reply. The Call holds its sink only
// weakly, so the sink keeps itself alive until that reply, which the Call guarantees (from its
// destructor, as `unavailable`, when nobody else sends it). Called from any thread, once.
class HttpReplySink final : public ReplySink {
 public:
  static std::shared_ptr<HttpReplySink> create(HttpResponder responder, std::shared_ptr<const Endpoint> endpoint) {
    auto sink = std::shared_ptr<HttpReplySink>(new HttpReplySink(std::move(responder), std::move(endpoint)));
    sink->self_ = sink;
    return sink;
  }

  void send_reply(uint64_t, protocol::ReplyKind kind, std::string body) override {
    if (kind == protocol::ReplyKind::more) return;  // no MLflow endpoint streams
    auto json = endpoint_->decode_reply(body);
    finish(json.ok() ? json_response(200, *json) : mlflow_error(json.status()));
  }

  void send_error(uint64_t, const Status& status) override { finish(mlflow_error(status)); }

 private:
  HttpReplySink(HttpResponder responder, std::shared_ptr<const Endpoint> endpoint)
      : responder_(std::move(responder)), endpoint_(std::move(endpoint)) {}

  void finish(HttpResponse response) {
    if (done_.exchange(true, std::memory_order_acq_rel)) return;
    responder_.respond(std::move(response));
    auto last_reference = std::move(self_);  // may destroy this sink when the scope ends
  }

  // Constant after construction.
  const HttpResponder responder_;
  const std::shared_ptr<const Endpoint> endpoint_;

  std::atomic<bool> done_{false};
  std::shared_ptr<HttpReplySink> self_;  // set by create(), released by the one finish()
};

// The token of `Authorization: Bearer <token>` or `Authorization: Basic base64(user:token)`.
Result<std::string> credentials(const HttpRequest& request) {
  auto header = request.headers.find("authorization");
  if (header == request.headers.end()) {
    return Status(Code::unauthenticated,
                  "missing credentials: send 'Authorization: Bearer <token>' (MLFLOW_TRACKING_TOKEN), or Basic "
                  "auth with the token as the password");
  }
  std::string_view value = header->second;
  const size_t space = value.find(' ');
  std::string scheme(value.substr(0, space));
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view rest = space == std::string_view::npos ? std::string_view() : value.substr(space + 1);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
  if (scheme == "bearer") return std::string(rest);
  if (scheme == "basic") {
    auto decoded = mlflow_json::base64_decode(rest);
    const size_t colon = decoded ? decoded->find(':') : std::string::npos;
    if (colon == std::string::npos) {
      return Status(Code::unauthenticated, "malformed Basic credentials: expected base64 of 'user:token'");
    }
    return decoded->substr(colon + 1);
  }
  return Status(Code::unauthenticated, "unsupported Authorization scheme '" + scheme + "': use Bearer or Basic");
}

// The request's parameters as JSON: the query string for GET (and for DELETE without a body, as
// MLflow's server reads it), the JSON body otherwise.
Result<Json> parameters(const HttpRequest& request, DecodeOptions& options) {
  const bool body_is_blank = request.body.find_first_not_of(" \t\r\n") == std::string::npos;
  if (request.method == "GET" || (request.method == "DELETE" && body_is_blank)) {
    options.from_query = true;
    return mlflow_json::parse_query(request.query);
  }
  if (body_is_blank) return Json::object();
  Json body;
  try {
    body = Json::parse(request.body);
  } catch (const Json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 9: ...": keep
    // what follows the tag, which names the line, column and what was read.
    std::string_view what = e.what();
    if (const size_t tag_end = what.find("] "); what.rfind('[', 0) == 0 && tag_end != std::string_view::npos) {
      what.remove_prefix(tag_end + 2);
    }
    return Status(Code::bad_frame, "malformed JSON request body at byte " + std::to_string(e.byte) + ": " +
                                       std::string(what));
  }
  if (!body.is_object()) {
    return Status(Code::bad_request, "the request body must be a JSON object, got " + std::string(body.type_name()));
  }
  // MLflow's clients send the deprecated run_uuid beside run_id; older ones send only run_uuid.
  if (!body.contains("run_id") && body.contains("run_uuid")) body["run_id"] = body["run_uuid"];
  return body;
}

void serve(const std::shared_ptr<const Endpoint>& endpoint, Dispatcher& dispatcher, const TokenStore& tokens,
           const HttpRequest& request, const HttpResponder& responder) {
  auto token = credentials(request);
  Role role = token.ok() ? tokens.authenticate(*token) : Role::none;
  if (role == Role::none) {
    auto response = mlflow_error(token.ok() ? Status(Code::unauthenticated, "invalid token") : token.status());
    response.headers["www-authenticate"] = std::string(kAuthChallenge);
    responder.respond(std::move(response));
    return;
  }
  DecodeOptions options;
  auto params = parameters(request, options);
  if (!params.ok()) {
    responder.respond(mlflow_error(params.status()));
    return;
  }
  auto body = endpoint->encode_request(*params, options);
  if (!body.ok()) {
    responder.respond(mlflow_error(body.status()));
    return;
  }
  auto sink = HttpReplySink::create(responder, endpoint);
  auto call = make_call(next_local_call_id(), endpoint->op, role, *body, sink, std::string(kClientName));
  if (!call.ok()) {
    sink->send_error(0, call.status());
    return;
  }
  dispatcher.dispatch(std::move(call).value());
}

}  // namespace

HttpResponse mlflow_error(const Status& status) {
  struct Mapping {
    int http_status;
    std::string_view error_code;
  };
  const Mapping m = [&]() -> Mapping {
    switch (status.code()) {
      case Code::not_found: return {404, "RESOURCE_DOES_NOT_EXIST"};
      case Code::already_exists: return {400, "RESOURCE_ALREADY_EXISTS"};
      case Code::bad_request:
      case Code::invalid_argument: return {400, "INVALID_PARAMETER_VALUE"};
      case Code::bad_frame:
      case Code::frame_too_large:
      case Code::unsupported_version: return {400, "BAD_REQUEST"};
      case Code::unknown_op: return {404, "ENDPOINT_NOT_FOUND"};
      case Code::unauthenticated: return {401, "UNAUTHENTICATED"};
      case Code::permission_denied: return {403, "PERMISSION_DENIED"};
      case Code::overloaded:
      case Code::unavailable:
      case Code::shutting_down: return {503, "TEMPORARILY_UNAVAILABLE"};
      case Code::timeout: return {504, "DEADLINE_EXCEEDED"};
      case Code::cancelled: return {499, "CANCELLED"};
      case Code::data_loss: return {500, "DATA_LOSS"};
      case Code::ok:
      case Code::io_error:
      case Code::internal: break;
    }
    return {500, "INTERNAL_ERROR"};
  }();
  return json_response(m.http_status, Json{{"error_code", m.error_code}, {"message", status.message()}});
}

void register_mlflow_routes(HttpRouter& routes, Dispatcher& dispatcher, const TokenStore& tokens) {
  const std::string prefix(kMlflowApiPrefix);
  for (auto& endpoint : mlflow_endpoints()) {
    auto shared = std::make_shared<const Endpoint>(std::move(endpoint));
    routes.add(shared->method, prefix + shared->path,
               [shared, &dispatcher, &tokens](const HttpRequest& request, HttpResponder responder) {
                 serve(shared, dispatcher, tokens, request, responder);
               });
  }
  for (const auto& unsupported : kUnsupported) {
    const std::string message = std::string(unsupported.path) + " is not supported: " + unsupported.why;
    routes.add(unsupported.method, prefix + unsupported.path, [message](const HttpRequest&, HttpResponder responder) {
      responder.respond(json_response(501, Json{{"error_code", "NOT_IMPLEMENTED"}, {"message", message}}));
    });
  }
}

}  // namespace cairn
