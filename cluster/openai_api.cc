#include "cluster/openai_api.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <variant>
#include <chrono>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/call.h"
#include "runtime/protocol.h"
#include "runtime/wire.h"

namespace cairn {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kClientName = "openai-http";
constexpr std::string_view kTimeoutHeader = "x-cairn-timeout-ms";

enum class Api { completions, chat };

// ---- errors ----

struct ErrorShape {
  int status;
  const char* type;
  const char* code;  // nullptr: null
};

ErrorShape error_shape(Code code) {
  switch (code) {
    case Code::bad_request:
    case Code::bad_frame:
    case Code::invalid_argument:
    case Code::frame_too_large: return {400, "invalid_request_error", nullptr};
    case Code::unauthenticated: return {401, "authentication_error", "invalid_api_key"};
    case Code::permission_denied: return {403, "permission_error", nullptr};
    case Code::not_found: return {404, "invalid_request_error", "model_not_found"};
    case Code::already_exists: return {409, "invalid_request_error", nullptr};
    case Code::overloaded: return {429, "rate_limit_error", "overloaded"};
    case Code::timeout: return {504, "timeout_error", "timeout"};
    case Code::unavailable:
    case Code::shutting_down: return {503, "server_error", nullptr};
    default: return {500, "server_error", nullptr};
  }
}

Json error_json(const Status& status, const std::string& param) {
  ErrorShape shape = error_shape(status.code());
  return {{"error",
           {{"message", status.message()},
            {"type", shape.type},
            {"param", param.empty() ? Json(nullptr) : Json(param)},
            {"code", shape.code == nullptr ? Json(nullptr) : Json(shape.code)}}}};
}

// A request field with the wrong type or value: 400 naming it.
struct FieldError {
  std::string param;
  std::string message;
};

HttpResponse json_response(int status, const Json& body) {
  HttpResponse response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return response;
}

// ---- request mapping ----

std::string type_name(const Json& j) { return j.is_null() ? "null" : j.type_name(); }

template <class T>
std::optional<FieldError> read_number(const Json& body, const char* key, T& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) return FieldError{key, std::string(key) + ": expected a boolean, got " + type_name(*it)};
    out = it->get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer() || (std::is_unsigned_v<T> && it->get<int64_t>() < 0)) {
      return FieldError{key, std::string(key) + ": expected " + (std::is_unsigned_v<T> ? "a non-negative " : "an ") +
                                 "integer, got " + it->dump()};
    }
    out = it->get<T>();
  } else {
    if (!it->is_number()) return FieldError{key, std::string(key) + ": expected a number, got " + it->dump()};
    out = it->get<T>();
  }
  return std::nullopt;
}

// A string or a list of strings (stop).
std::optional<FieldError> read_strings(const Json& body, const char* key, std::vector<std::string>& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) {
    out.push_back(it->get<std::string>());
    return std::nullopt;
  }
  if (it->is_array()) {
    for (const auto& item : *it) {
      if (!item.is_string()) return FieldError{key, std::string(key) + ": expected strings, got " + item.dump()};
      out.push_back(item.get<std::string>());
    }
    return std::nullopt;
  }
  return FieldError{key, std::string(key) + ": expected a string or a list of strings, got " + type_name(*it)};
}

std::optional<FieldError> read_ids(const Json& j, const char* key, std::vector<int64_t>& out) {
  for (const auto& item : j) {
    if (!item.is_number_integer()) return FieldError{key, std::string(key) + ": expected token ids, got " + item.dump()};
    out.push_back(item.get<int64_t>());
  }
  return std::nullopt;
}

struct MappedRequest {
  msg::CompletionRequest request;
  bool include_usage = false;
  bool chat_logprobs = false;
};

#define CAIRN_FIELD(expr)            \
  do {                               \
    if (auto e = (expr)) return *e;  \
  } while (0)

// The OpenAI body as a CompletionRequest, or the first bad field.
std::variant<MappedRequest, FieldError> map_request(Api api, const Json& body, const HttpRequest& http) {
  MappedRequest out;
  msg::CompletionRequest& r = out.request;
  auto model = body.find("model");
  if (model == body.end() || !model->is_string()) {
    return FieldError{"model", "model: required, a string naming a served model (GET /v1/models lists them)"};
  }
  r.model = model->get<std::string>();
  if (api == Api::completions) {
    auto prompt = body.find("prompt");
    if (prompt == body.end() || prompt->is_null()) return FieldError{"prompt", "prompt: required"};
    const Json* p = &*prompt;
    if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
      CAIRN_FIELD(read_ids(*p, "prompt", r.prompt_ids));
    } else if (p->is_array() && p->size() > 1) {
      return FieldError{"prompt", "prompt: one prompt per request is supported, got " + std::to_string(p->size())};
    } else {
      return FieldError{"prompt", "prompt: expected a string or a list of token ids, got " + p->dump()};
    }
    auto logprobs = body.find("logprobs");
    if (logprobs != body.end() && !logprobs->is_null()) {
      if (!logprobs->is_number_integer()) {
        return FieldError{"logprobs", "logprobs: expected an integer from 0 to 20, got " + logprobs->dump()};
      }
      r.logprobs = logprobs->get<int64_t>();
    }
    bool echo = false;
    CAIRN_FIELD(read_number(body, "echo", echo));
    if (echo) return FieldError{"echo", "echo: not supported"};
    auto best_of = body.find("best_of");
    if (best_of != body.end() && !best_of->is_null() && *best_of != 1) {
      return FieldError{"best_of", "best_of: only 1 is supported"};
    }
    auto suffix = body.find("suffix");
    if (suffix != body.end() && !suffix->is_null()) return FieldError{"suffix", "suffix: not supported"};
  } else {
    auto messages = body.find("messages");
    if (messages == body.end() || !messages->is_array() || messages->empty()) {
      return FieldError{"messages", "messages: required, a non-empty list of {role, content}"};
    }
    for (size_t i = 0; i < messages->size(); ++i) {
      const Json& m = (*messages)[i];
      const std::string where = "messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return FieldError{where + ".role", where + ".role: required, a string"};
      }
      msg::InferChatMessage message;
      message.role = m["role"].get<std::string>();
      auto content = m.find("content");
      if (content == m.end() || content->is_null()) {
        message.content = "";
      } else if (content->is_string()) {
        message.content = content->get<std::string>();
      } else if (content->is_array()) {  // content parts: text only
        for (const auto& part : *content) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
              !part["text"].is_string()) {
            return FieldError{where + ".content", where + ".content: only text parts are supported"};
          }
          message.content += part["text"].get<std::string>();
        }
      } else {
        return FieldError{where + ".content", where + ".content: expected a string, got " + type_name(*content)};
      }
      r.messages.push_back(std::move(message));
    }
    CAIRN_FIELD(read_number(body, "logprobs", out.chat_logprobs));
    int64_t top = 0;
    CAIRN_FIELD(read_number(body, "top_logprobs", top));
    if (out.chat_logprobs) r.logprobs = std::max<int64_t>(top, 1);
    if (body.contains("max_completion_tokens") && !body["max_completion_tokens"].is_null()) {
      int64_t max = 0;
      CAIRN_FIELD(read_number(body, "max_completion_tokens", max));
      r.max_tokens = max;
    }
  }
  if (body.contains("max_tokens") && !body["max_tokens"].is_null()) {
    int64_t max = 0;
    CAIRN_FIELD(read_number(body, "max_tokens", max));
    r.max_tokens = max;
  }
  CAIRN_FIELD(read_number(body, "temperature", r.temperature));
  CAIRN_FIELD(read_number(body, "top_p", r.top_p));
  CAIRN_FIELD(read_number(body, "top_k", r.top_k));
  CAIRN_FIELD(read_number(body, "min_p", r.min_p));
  CAIRN_FIELD(read_number(body, "presence_penalty", r.presence_penalty));
  CAIRN_FIELD(read_number(body, "frequency_penalty", r.frequency_penalty));
  CAIRN_FIELD(read_number(body, "repetition_penalty", r.repetition_penalty));
  if (body.contains("seed") && !body["seed"].is_null()) {
    int64_t seed = 0;
    CAIRN_FIELD(read_number(body, "seed", seed));
    r.seed = static_cast<uint64_t>(seed);
  }
  CAIRN_FIELD(read_strings(body, "stop", r.stop));
  if (body.contains("stop_token_ids") && body["stop_token_ids"].is_array()) {
    CAIRN_FIELD(read_ids(body["stop_token_ids"], "stop_token_ids", r.stop_token_ids));
  }
  CAIRN_FIELD(read_number(body, "ignore_eos", r.ignore_eos));
  CAIRN_FIELD(read_number(body, "n", r.n));
  if (r.n != 1) return FieldError{"n", "n: only 1 choice per request is supported, got " + std::to_string(r.n)};
  CAIRN_FIELD(read_number(body, "stream", r.stream));
  auto options = body.find("stream_options");
  if (options != body.end() && options->is_object()) {
    CAIRN_FIELD(read_number(*options, "include_usage", out.include_usage));
  }
  CAIRN_FIELD(read_number(body, "timeout_ms", r.timeout_ms));
  auto header = http.headers.find(std::string(kTimeoutHeader));
  if (header != http.headers.end()) {
    try {
      r.timeout_ms = std::stoull(header->second);
    } catch (const std::exception&) {
      return FieldError{"X-Cairn-Timeout-Ms", "X-Cairn-Timeout-Ms: expected milliseconds, got \"" + header->second + "\""};
    }
  }
  return out;
}

#undef CAIRN_FIELD

// ---- response shapes ----

Json usage_json(const msg::InferUsage& usage) {
  Json j = {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.total_tokens}};
  if (usage.cached_prompt_tokens > 0) j["prompt_tokens_details"] = {{"cached_tokens", usage.cached_prompt_tokens}};
  return j;
}

Json bytes_of(const std::string& text) {
  Json bytes = Json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// Completions' legacy logprobs: parallel lists, starting at `offset` characters into the text.
Json completion_logprobs(const std::vector<msg::InferTokenLogprob>& logprobs, size_t offset) {
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(), offsets = Json::array();
  for (const auto& lp : logprobs) {
    tokens.push_back(lp.token);
    token_logprobs.push_back(lp.logprob);
    Json alternatives = Json::object();
    for (const auto& t : lp.top_logprobs) alternatives[t.token] = t.logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(offset);
    offset += lp.token.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

Json chat_logprobs(const std::vector<msg::InferTokenLogprob>& logprobs) {
  Json content = Json::array();
  for (const auto& lp : logprobs) {
    Json top = Json::array();
    for (const auto& t : lp.top_logprobs) top.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes_of(t.token)}});
    content.push_back({{"token", lp.token}, {"logprob", lp.logprob}, {"bytes", bytes_of(lp.token)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

std::string response_id(Api api, const std::string& id) {
  if (api == Api::chat && id.rfind("cmpl-", 0) == 0) return "chat" + id;
  return id;
}

Json full_response(Api api, const msg::CompletionReply& reply, bool want_logprobs) {
  Json choice = {{"index", 0}, {"finish_reason", reply.finish_reason}};
  if (api == Api::completions) {
    choice["text"] = reply.text;
    choice["logprobs"] = want_logprobs ? completion_logprobs(reply.logprobs, 0) : Json(nullptr);
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", reply.text}};
    choice["logprobs"] = want_logprobs ? chat_logprobs(reply.logprobs) : Json(nullptr);
  }
  return {{"id", response_id(api, reply.id)},
          {"object", api == Api::completions ? "text_completion" : "chat.completion"},
          {"created", reply.created},
          {"model", reply.model},
          {"system_fingerprint", reply.version.empty() ? Json(nullptr) : Json("version-" + reply.version)},
          {"choices", Json::array({choice})},
          {"usage", usage_json(reply.usage)}};
}

std::string sse(const Json& j) { return "data: " + j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n"; }

// Answers one HTTP exchange from its Call's replies: one JSON response, or server-sent events
// started at the first stream item. Keeps itself alive until the final reply, which the Call
// guarantees. Replies arrive from any thread, one at a time for a given call.
class OpenAiSink final : public ReplySink {
 public:
  static std::shared_ptr<OpenAiSink> create(Api api, HttpResponder responder, MappedRequest request) {
    auto sink = std::shared_ptr<OpenAiSink>(new OpenAiSink(api, std::move(responder), std::move(request)));
    sink->self_ = sink;
    return sink;
  }

  void send_reply(uint64_t, protocol::ReplyKind kind, std::string body) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (done_) return;
    if (kind == protocol::ReplyKind::more) {
      auto delta = wire::decode_bytes<msg::CompletionDelta>(body);
      if (delta.ok()) on_delta(*delta);
      return;
    }
    auto reply = wire::decode_bytes<msg::CompletionReply>(body);
    if (!reply.ok()) return finish_error(reply.status());
    // Every chunk of a stream carries the same id and time, fixed before the first token.
    reply->id = meta_.id;
    reply->created = meta_.created;
    if (!stream_) {
      if (request_.request.stream) {
        start_stream(*reply);
      } else {
        responder_.respond(json_response(200, full_response(api_, *reply, request_.request.logprobs > 0)));
        return finish();
      }
    }
    Json last = chunk(*reply);
    if (api_ == Api::completions) {
      last["choices"][0]["text"] = "";
    } else {
      last["choices"][0]["delta"] = Json::object();
    }
    last["choices"][0]["finish_reason"] = reply->finish_reason;
    stream_->write(sse(last));
    if (request_.include_usage) {
      Json usage = chunk(*reply);
      usage["choices"] = Json::array();
      usage["usage"] = usage_json(reply->usage);
      stream_->write(sse(usage));
    }
    stream_->write("data: [DONE]\n\n");
    finish();
  }

  void send_error(uint64_t, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!done_) finish_error(status);
  }

 private:
  OpenAiSink(Api api, HttpResponder responder, MappedRequest request)
      : api_(api), responder_(std::move(responder)), request_(std::move(request)) {
    static std::atomic<uint64_t> next{1};
    static const std::string prefix = [] {
      char text[24];
      std::snprintf(text, sizeof text, "cmpl-%08x", static_cast<unsigned>(std::random_device{}()));
      return std::string(text);
    }();
    meta_.id = prefix + "-" + std::to_string(next.fetch_add(1));
    meta_.model = request_.request.model;
    meta_.created =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

  // The fields every chunk shares; choices[0] without its delta.
  Json chunk(const msg::CompletionReply& meta) const {
    Json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    return {{"id", response_id(api_, meta.id)},
            {"object", api_ == Api::completions ? "text_completion" : "chat.completion.chunk"},
            {"created", meta.created},
            {"model", meta.model},
            {"choices", Json::array({choice})}};
  }

  void start_stream(const msg::CompletionReply& meta) {
    HttpResponse head;
    head.content_type = "text/event-stream";
    head.headers["cache-control"] = "no-cache";
    stream_ = responder_.start_stream(std::move(head));
    if (api_ == Api::chat) {
      Json first = chunk(meta_);
      first["choices"][0]["delta"] = {{"role", "assistant"}, {"content", ""}};
      stream_->write(sse(first));
    }
  }

  void on_delta(const msg::CompletionDelta& delta) {
    if (delta.text.empty() && delta.logprobs.empty()) return;
    if (!stream_) start_stream(meta_);
    Json c = chunk(meta_);
    if (api_ == Api::completions) {
      c["choices"][0]["text"] = delta.text;
      if (request_.request.logprobs > 0) c["choices"][0]["logprobs"] = completion_logprobs(delta.logprobs, text_offset_);
    } else {
      c["choices"][0]["delta"] = {{"content", delta.text}};
      if (request_.request.logprobs > 0) c["choices"][0]["logprobs"] = chat_logprobs(delta.logprobs);
    }
    text_offset_ += delta.text.size();
    stream_->write(sse(c));
  }

  void finish_error(const Status& status) {
    if (stream_) {
      stream_->write(sse(error_json(status, "")));
      stream_->write("data: [DONE]\n\n");
    } else {
      HttpResponse response = openai_error(status);
      responder_.respond(std::move(response));
    }
    finish();
  }

  void finish() {
    done_ = true;
    if (stream_) stream_->end();
    stream_.reset();
    auto last_reference = std::move(self_);  // may destroy this sink when the scope ends
  }

  const Api api_;
  const HttpResponder responder_;
  const MappedRequest request_;
  std::mutex mutex_;  // guards everything below
  bool done_ = false;
  std::shared_ptr<HttpStream> stream_;
  msg::CompletionReply meta_;  // id, model, created of the stream's chunks
  size_t text_offset_ = 0;
  std::shared_ptr<OpenAiSink> self_;  // set by create(), released by finish()
};

// ---- plumbing ----

// The role of the request's Bearer token, or the 401 to answer.
Result<Role> authenticate(const HttpRequest& request, const TokenStore& tokens) {
  auto header = request.headers.find("authorization");
  if (header == request.headers.end()) {
    return Status(Code::unauthenticated,
                  "missing credentials: send 'Authorization: Bearer <token>' (the OpenAI SDK's apiKey) with a token "
                  "from the node's token file");
  }
  std::string_view value = header->second;
  constexpr std::string_view kBearer = "bearer ";
  std::string scheme(value.substr(0, std::min(value.size(), kBearer.size())));
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != kBearer) return Status(Code::unauthenticated, "unsupported Authorization scheme: use Bearer");
  std::string_view token = value.substr(kBearer.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  Role role = tokens.authenticate(token);
  if (role == Role::none) return Status(Code::unauthenticated, "invalid token (the API key is not in the node's token file)");
  return role;
}

void respond_error(const HttpResponder& responder, const Status& status, const std::string& param = {}) {
  HttpResponse response = openai_error(status, param);
  if (status.code() == Code::unauthenticated) response.headers["www-authenticate"] = "Bearer realm=\"cairn\"";
  responder.respond(std::move(response));
}

void serve_generation(Api api, Dispatcher& dispatcher, const TokenStore& tokens, const HttpRequest& request,
                      const HttpResponder& responder) {
  auto role = authenticate(request, tokens);
  if (!role.ok()) return respond_error(responder, role.status());
  Json body;
  try {
    body = Json::parse(request.body);
  } catch (const Json::parse_error& e) {
    return respond_error(responder, Status(Code::bad_request, "malformed JSON body at byte " + std::to_string(e.byte) +
                                                                  ": " + e.what()));
  }
  if (!body.is_object()) {
    return respond_error(responder, Status(Code::bad_request, "the body must be a JSON object, got " + type_name(body)));
  }
  auto mapped = map_request(api, body, request);
  if (auto* error = std::get_if<FieldError>(&mapped)) {
    return respond_error(responder, Status(Code::bad_request, error->message), error->param);
  }
  auto& m = std::get<MappedRequest>(mapped);
  const std::string encoded = wire::encode(m.request);
  auto sink = OpenAiSink::create(api, responder, std::move(m));
  const std::string op(api == Api::completions ? msg::kInferCompletions : msg::kInferChat);
  auto call = make_call(next_local_call_id(), op, *role, encoded, sink, std::string(kClientName));
  if (!call.ok()) return sink->send_error(0, call.status());
  std::weak_ptr<Call> weak = *call;
  responder.on_disconnect([weak] {
    if (auto c = weak.lock()) c->cancel(Status(Code::cancelled, "the HTTP client disconnected"));
  });
  dispatcher.dispatch(std::move(call).value());
}

// A Call whose final reply goes to `done` (body or error), for the routes that are not streams.
class CallbackSink final : public ReplySink {
 public:
  static std::shared_ptr<CallbackSink> create(std::function<void(Result<std::string>)> done) {
    auto sink = std::shared_ptr<CallbackSink>(new CallbackSink(std::move(done)));
    sink->self_ = sink;
    return sink;
  }
  void send_reply(uint64_t, protocol::ReplyKind kind, std::string body) override {
    if (kind != protocol::ReplyKind::more) finish(Result<std::string>(std::move(body)));
  }
  void send_error(uint64_t, const Status& status) override { finish(Result<std::string>(status)); }

 private:
  explicit CallbackSink(std::function<void(Result<std::string>)> done) : done_(std::move(done)) {}
  void finish(Result<std::string> result) {
    std::shared_ptr<CallbackSink> last_reference;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (finished_) return;
      finished_ = true;
      last_reference = std::move(self_);
    }
    done_(std::move(result));
  }
  std::function<void(Result<std::string>)> done_;
  std::mutex mutex_;  // guards finished_ and self_
  bool finished_ = false;
  std::shared_ptr<CallbackSink> self_;
};

void dispatch_simple(Dispatcher& dispatcher, const std::string& op, Role role,
                     std::function<void(Result<std::string>)> done) {
  auto sink = CallbackSink::create(std::move(done));
  auto call = make_call(next_local_call_id(), op, role, wire::encode(msg::Empty{}), sink, std::string(kClientName));
  if (!call.ok()) return sink->send_error(0, call.status());
  dispatcher.dispatch(std::move(call).value());
}

void serve_models(Dispatcher& dispatcher, const TokenStore& tokens, const HttpRequest& request,
                  const HttpResponder& responder) {
  auto role = authenticate(request, tokens);
  if (!role.ok()) return respond_error(responder, role.status());
  dispatch_simple(dispatcher, std::string(msg::kInferModels), *role, [responder](Result<std::string> body) {
    if (!body.ok()) return respond_error(responder, body.status());
    auto reply = wire::decode_bytes<msg::InferModelsReply>(*body);
    if (!reply.ok()) return respond_error(responder, reply.status());
    Json data = Json::array();
    for (const auto& m : reply->models) {
      Json entry = {{"id", m.name}, {"object", "model"}, {"created", m.created}, {"owned_by", "cairn"},
                    {"root", m.source}, {"state", m.state}};
      if (!m.version.empty()) entry["version"] = m.version;
      if (m.max_context > 0) entry["max_model_len"] = m.max_context;
      data.push_back(std::move(entry));
    }
    responder.respond(json_response(200, {{"object", "list"}, {"data", data}}));
  });
}

// ---- Prometheus ----

std::string escape_label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.10g", value);
  return buffer;
}

}  // namespace

HttpResponse openai_error(const Status& status, const std::string& param) {
  return json_response(error_shape(status.code()).status, error_json(status, param));
}

std::string prometheus_text(const msg::InferStatsReply& stats) {
  std::ostringstream out;
  auto family = [&](const char* name, const char* type, const char* help, auto value_of) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
    for (const auto& m : stats.models) {
      out << name << "{model=\"" << escape_label(m.name) << "\"} " << number(static_cast<double>(value_of(m))) << "\n";
    }
  };
  using S = msg::InferModelStats;
  family("cairn:num_requests_running", "gauge", "Requests in a running batch.", [](const S& m) { return m.running; });
  family("cairn:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", [](const S& m) { return m.waiting; });
  family("cairn:kv_cache_usage_perc", "gauge", "Fraction of KV cache blocks in use (1 = all).",
         [](const S& m) { return m.kv_usage; });
  family("cairn:kv_cache_blocks_total", "gauge", "KV cache blocks of the serving version.",
         [](const S& m) { return m.kv_blocks_total; });
  family("cairn:kv_cache_blocks_used", "gauge", "KV cache blocks referenced by a sequence.",
         [](const S& m) { return m.kv_blocks_used; });
  family("cairn:prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
         [](const S& m) { return m.prompt_tokens_total; });
  family("cairn:generation_tokens_total", "counter", "Generated tokens.",
         [](const S& m) { return m.generation_tokens_total; });
  family("cairn:request_success_total", "counter", "Requests that finished (stop or length).",
         [](const S& m) { return m.requests_finished_total; });
  family("cairn:request_failure_total", "counter", "Requests that ended with an error or a timeout.",
         [](const S& m) { return m.requests_failed_total; });
  family("cairn:request_cancelled_total", "counter", "Requests cancelled (client gone or cancelled).",
         [](const S& m) { return m.requests_cancelled_total; });
  family("cairn:request_rejected_total", "counter", "Requests refused as overloaded (HTTP 429).",
         [](const S& m) { return m.requests_rejected_total; });
  family("cairn:num_preemptions_total", "counter", "Requests preempted for lack of KV blocks.",
         [](const S& m) { return m.preempted_total; });
  family("cairn:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
         [](const S& m) { return m.prefix_cache_queried_tokens; });
  family("cairn:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
         [](const S& m) { return m.prefix_cache_hit_tokens; });
  family("cairn:model_swaps_total", "counter", "Versions swapped in after the served alias moved.",
         [](const S& m) { return m.swaps_total; });
  auto histogram = [&](const char* name, const char* help, const msg::InferHistogram S::*field) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    for (const auto& m : stats.models) {
      const auto& h = m.*field;
      const std::string model = "model=\"" + escape_label(m.name) + "\"";
      for (size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) {
        out << name << "_bucket{" << model << ",le=\"" << number(h.bounds[i]) << "\"} " << h.counts[i] << "\n";
      }
      out << name << "_bucket{" << model << ",le=\"+Inf\"} " << h.count << "\n";
      out << name << "_sum{" << model << "} " << number(h.sum) << "\n";
      out << name << "_count{" << model << "} " << h.count << "\n";
    }
  };
  histogram("cairn:time_to_first_token_seconds", "Time from admission to the first generated token.",
            &S::time_to_first_token);
  histogram("cairn:time_per_output_token_seconds", "Time between consecutive generated tokens (inter-token latency).",
            &S::inter_token_latency);
  histogram("cairn:e2e_request_latency_seconds", "Time from admission to the end of a finished request.",
            &S::e2e_latency);
  return out.str();
}

void register_openai_routes(HttpRouter& routes, Dispatcher& dispatcher, const TokenStore& tokens) {
  routes.add("GET", "/v1/models", [&dispatcher, &tokens](const HttpRequest& request, HttpResponder responder) {
    serve_models(dispatcher, tokens, request, responder);
  });
  routes.add("POST", "/v1/completions", [&dispatcher, &tokens](const HttpRequest& request, HttpResponder responder) {
    serve_generation(Api::completions, dispatcher, tokens, request, responder);
  });
  routes.add("POST", "/v1/chat/completions",
             [&dispatcher, &tokens](const HttpRequest& request, HttpResponder responder) {
               serve_generation(Api::chat, dispatcher, tokens, request, responder);
             });
}

void register_metrics_route(HttpRouter& routes, Dispatcher& dispatcher, std::function<std::string()> node_metrics) {
  routes.add("GET", "/metrics", [&dispatcher, node_metrics](const HttpRequest&, HttpResponder responder) {
    dispatch_simple(dispatcher, std::string(msg::kInferStats), Role::client,
                    [responder, node_metrics](Result<std::string> body) {
                      HttpResponse response;
                      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
                      if (body.ok()) {
                        auto stats = wire::decode_bytes<msg::InferStatsReply>(*body);
                        if (stats.ok()) response.body = prometheus_text(*stats);
                      }
                      if (node_metrics) response.body += node_metrics();
                      responder.respond(std::move(response));
                    });
  });
}

HttpResponse health_response(const NodeHealth& node, const Result<msg::InferModelsReply>* models) {
  Json body = Json::object();
  body["status"] = "ok";
  for (const auto& [key, value] : node.fields) body[key] = value;
  std::string status = "ok";
  if (models != nullptr) {
    Json ready = Json::array(), loading = Json::array(), failed = Json::array(), errors = Json::object();
    if (!models->ok()) {
      status = "unavailable";
      body["error"] = models->status().message();
    } else {
      for (const auto& m : (*models)->models) {
        if (!m.startup) continue;
        if (m.state == "ready") {
          ready.push_back(m.name);
          continue;
        }
        (m.state == "failed" ? failed : loading).push_back(m.name);
        if (!m.error.empty()) errors[m.name] = m.error;
      }
      if (!loading.empty()) {
        status = "loading";
      } else if (!failed.empty()) {
        status = "failed";
      }
    }
    body["models"] = {{"ready", ready}, {"loading", loading}, {"failed", failed}};
    if (!errors.empty()) body["errors"] = errors;
  }
  if (node.stopping) status = "stopping";
  body["status"] = status;
  return json_response(status == "ok" ? 200 : 503, body);
}

void register_health_route(HttpRouter& routes, Dispatcher& dispatcher, bool serves_models,
                           std::function<NodeHealth()> node_health) {
  routes.add("GET", "/health", [&dispatcher, serves_models, node_health](const HttpRequest&, HttpResponder responder) {
    NodeHealth node = node_health ? node_health() : NodeHealth{};
    if (!serves_models || node.stopping) return responder.respond(health_response(node, nullptr));
    dispatch_simple(dispatcher, std::string(msg::kInferModels), Role::client,
                    [responder, node](Result<std::string> body) {
                      Result<msg::InferModelsReply> models =
                          body.ok() ? wire::decode_bytes<msg::InferModelsReply>(*body)
                                    : Result<msg::InferModelsReply>(body.status());
                      responder.respond(health_response(node, &models));
                    });
  });
}

}  // namespace cairn
