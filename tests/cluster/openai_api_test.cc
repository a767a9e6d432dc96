// The OpenAI HTTP layer without a node: routes against a fake Dispatcher that records each Call's
// decoded request and answers it with canned stream items, a final reply or an error. Responders
// here have no streaming transport, so a stream arrives as one gathered body. Also the Prometheus
// text of infer.stats.
#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/openai_api.h"
#include "runtime/call.h"
#include "runtime/messages/infer.h"

namespace cairn {
namespace {

using Json = nlohmann::json;

const std::string kClientToken = "a-client-token-for-openai-tests-0123456789";

// Records each Call and runs `answer` on it inside dispatch().
class FakeDispatcher final : public Dispatcher {
 public:
  void dispatch(CallPtr call) override {
    calls.push_back(call);
    if (answer) answer(*call);
  }
  std::vector<CallPtr> calls;
  std::function<void(Call&)> answer;
};

class OpenAiApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tokens = TokenStore::parse("client " + kClientToken + "\n", "test tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status().to_string();
    tokens_.emplace(std::move(tokens).value());
    register_openai_routes(routes_, dispatcher_, *tokens_);
    register_metrics_route(routes_, dispatcher_, [] { return std::string("cairn:node_uptime_seconds 1\n"); });
    register_health_route(routes_, dispatcher_, /*serves_models=*/true, [this] {
      NodeHealth health;
      health.stopping = stopping_;
      health.fields = {{"node", "n1"}};
      return health;
    });
  }
  HttpResponse request(const std::string& method, const std::string& path, const std::string& body,
                       const std::string& token = kClientToken) {
    HttpRequest r;
    r.method = method;
    r.path = path;
    r.body = body;
    if (!token.empty()) r.headers["authorization"] = "Bearer " + token;
    std::optional<HttpResponse> out;
    routes_.handle(r, HttpResponder([&](HttpResponse response) { out = std::move(response); }));
    EXPECT_TRUE(out.has_value()) << path << " was not answered";
    return out.value_or(HttpResponse{});
  }
  msg::CompletionRequest last_request() {
    EXPECT_FALSE(dispatcher_.calls.empty());
    auto decoded = dispatcher_.calls.back()->body<msg::CompletionRequest>();
    EXPECT_TRUE(decoded.ok()) << decoded.status().to_string();
    return decoded.ok() ? *decoded : msg::CompletionRequest{};
  }

  HttpRouter routes_;
  FakeDispatcher dispatcher_;
  std::optional<TokenStore> tokens_;
  bool stopping_ = false;
};

msg::CompletionReply canned_reply() {
  msg::CompletionReply reply;
  reply.id = "cmpl-node-1";
  reply.model = "tiny";
  reply.version = "3";
  reply.created = 1700000000;
  reply.text = "Hello there";
  reply.token_ids = {5, 6};
  reply.finish_reason = "stop";
  reply.usage = {4, 2, 6, 0};
  return reply;
}

TEST_F(OpenAiApiTest, CompletionFieldsMapToTheCatalogueRequest) {
  dispatcher_.answer = [](Call& call) { call.reply(canned_reply()); };
  auto response = request("POST", "/v1/completions",
                          R"({"model": "tiny", "prompt": ["Say hi"], "max_tokens": 7, "temperature": 0.5,
                              "top_p": 0.9, "top_k": 40, "seed": 11, "stop": "\n", "presence_penalty": 0.1,
                              "frequency_penalty": 0.2, "repetition_penalty": 1.1, "logprobs": 2, "user": "u",
                              "timeout_ms": 1500})");
  ASSERT_EQ(response.status, 200) << response.body;
  ASSERT_EQ(dispatcher_.calls.size(), 1u);
  EXPECT_EQ(dispatcher_.calls[0]->op(), "infer.completions");
  EXPECT_EQ(dispatcher_.calls[0]->role(), Role::client);
  auto r = last_request();
  EXPECT_EQ(r.model, "tiny");
  EXPECT_EQ(r.prompt, "Say hi");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_DOUBLE_EQ(r.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.top_p, 0.9);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_EQ(r.seed, 11u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_DOUBLE_EQ(r.repetition_penalty, 1.1);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.timeout_ms, 1500u);
  EXPECT_FALSE(r.stream);
  Json j = Json::parse(response.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["text"], "Hello there");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"], Json({{"prompt_tokens", 4}, {"completion_tokens", 2}, {"total_tokens", 6}}));
  EXPECT_EQ(j["system_fingerprint"], "version-3");
}

TEST_F(OpenAiApiTest, ChatStreamsAsServerSentEventsEndingWithDone) {
  dispatcher_.answer = [](Call& call) {
    call.more(msg::CompletionDelta{"Hel", {5}, {}});
    call.more(msg::CompletionDelta{"", {9}, {}});  // held-back text: no chunk
    call.more(msg::CompletionDelta{"lo", {6}, {}});
    auto reply = canned_reply();
    reply.text.clear();
    call.reply(reply);
  };
  auto response = request("POST", "/v1/chat/completions",
                          R"({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                              "stream": true, "stream_options": {"include_usage": true}, "max_completion_tokens": 3})");
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(response.content_type, "text/event-stream");
  auto r = last_request();
  EXPECT_EQ(dispatcher_.calls.back()->op(), "infer.chat");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].content, "hi");
  EXPECT_EQ(r.max_tokens, 3);
  EXPECT_TRUE(r.stream);
  std::vector<Json> events;
  size_t pos = 0;
  std::string last;
  while ((pos = response.body.find("data: ", pos)) != std::string::npos) {
    size_t end = response.body.find("\n\n", pos);
    last = response.body.substr(pos + 6, end - pos - 6);
    if (last != "[DONE]") events.push_back(Json::parse(last));
    pos = end + 2;
  }
  EXPECT_EQ(last, "[DONE]");
  ASSERT_EQ(events.size(), 5u) << response.body;  // role, "Hel", "lo", finish, usage
  EXPECT_EQ(events[0]["choices"][0]["delta"], Json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(events[1]["choices"][0]["delta"]["content"], "Hel");
  EXPECT_EQ(events[2]["choices"][0]["delta"]["content"], "lo");
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(events[4]["choices"].empty());
  EXPECT_EQ(events[4]["usage"]["total_tokens"], 6);
  for (const auto& e : events) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], events[0]["id"]);
  }
}

TEST_F(OpenAiApiTest, ErrorsHaveOpenAisShapeAndStatus) {
  auto expect = [&](const HttpResponse& r, int status, const char* type, const Json& code, const Json& param) {
    EXPECT_EQ(r.status, status) << r.body;
    Json j = Json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_EQ(j["error"]["type"], type) << r.body;
    EXPECT_EQ(j["error"]["code"], code) << r.body;
    EXPECT_EQ(j["error"]["param"], param) << r.body;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  };
  expect(request("POST", "/v1/completions", "{\"model\": "), 400, "invalid_request_error", nullptr, nullptr);
  expect(request("POST", "/v1/completions", "[1]"), 400, "invalid_request_error", nullptr, nullptr);
  expect(request("POST", "/v1/completions", R"({"prompt": "x"})"), 400, "invalid_request_error", nullptr, "model");
  expect(request("POST", "/v1/completions", R"({"model": "m", "prompt": "x", "n": 3})"), 400,
         "invalid_request_error", nullptr, "n");
  expect(request("POST", "/v1/completions", R"({"model": "m", "prompt": "x", "temperature": "hot"})"), 400,
         "invalid_request_error", nullptr, "temperature");
  expect(request("POST", "/v1/completions", R"({"model": "m", "prompt": ["a", "b"]})"), 400,
         "invalid_request_error", nullptr, "prompt");
  expect(request("POST", "/v1/completions", R"({"model": "m", "prompt": "x"})", ""), 401, "authentication_error",
         "invalid_api_key", nullptr);
  expect(request("POST", "/v1/completions", R"({"model": "m", "prompt": "x"})", "wrong"), 401,
         "authentication_error", "invalid_api_key", nullptr);
  EXPECT_TRUE(dispatcher_.calls.empty()) << "nothing bad reaches the batcher";

  const std::pair<Code, int> cases[] = {{Code::bad_request, 400}, {Code::not_found, 404}, {Code::overloaded, 429},
                                        {Code::timeout, 504},     {Code::unavailable, 503}, {Code::internal, 500}};
  for (auto [code, status] : cases) {
    dispatcher_.answer = [code = code](Call& call) { call.fail(Status(code, "from the batcher")); };
    auto r = request("POST", "/v1/completions", R"({"model": "m", "prompt": "x", "stream": true})");
    EXPECT_EQ(r.status, status) << code_name(code) << ": an error before the first token is a plain HTTP error";
  }
}

TEST_F(OpenAiApiTest, AnErrorAfterTheFirstTokenEndsTheStreamWithAnErrorEvent) {
  dispatcher_.answer = [](Call& call) {
    call.more(msg::CompletionDelta{"partial", {1}, {}});
    call.fail(Status(Code::timeout, "infer.completions: the request's deadline passed"));
  };
  auto r = request("POST", "/v1/completions", R"({"model": "m", "prompt": "x", "stream": true})");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"text\":\"partial\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("data: {\"error\":{\"code\":\"timeout\""), std::string::npos) << r.body;
  EXPECT_EQ(r.body.substr(r.body.size() - 14), "data: [DONE]\n\n");
}

TEST_F(OpenAiApiTest, ModelsListInOpenAisShape) {
  dispatcher_.answer = [](Call& call) {
    msg::InferModelsReply reply;
    msg::InferModel m;
    m.name = "tiny";
    m.source = "tiny@production";
    m.version = "2";
    m.state = "ready";
    m.created = 1700000000;
    m.max_context = 256;
    reply.models.push_back(m);
    call.reply(reply);
  };
  auto r = request("GET", "/v1/models", "");
  ASSERT_EQ(r.status, 200) << r.body;
  Json j = Json::parse(r.body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["owned_by"], "cairn");
  EXPECT_EQ(j["data"][0]["max_model_len"], 256);
}

TEST_F(OpenAiApiTest, MetricsArePrometheusTextWithoutAuthentication) {
  dispatcher_.answer = [](Call& call) {
    msg::InferStatsReply stats;
    msg::InferModelStats m;
    m.name = "tiny";
    m.running = 3;
    m.kv_usage = 0.25;
    m.generation_tokens_total = 42;
    m.time_to_first_token = {{0.1, 1.0}, {2, 5}, 3.5, 6};
    stats.models.push_back(m);
    call.reply(stats);
  };
  auto r = request("GET", "/metrics", "", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type.rfind("text/plain", 0), 0u);
  for (const char* line : {"# TYPE cairn:num_requests_running gauge\ncairn:num_requests_running{model=\"tiny\"} 3\n",
                           "cairn:kv_cache_usage_perc{model=\"tiny\"} 0.25\n",
                           "# TYPE cairn:generation_tokens_total counter\ncairn:generation_tokens_total{model=\"tiny\"} 42\n",
                           "cairn:time_to_first_token_seconds_bucket{model=\"tiny\",le=\"0.1\"} 2\n",
                           "cairn:time_to_first_token_seconds_bucket{model=\"tiny\",le=\"1\"} 5\n",
                           "cairn:time_to_first_token_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 6\n",
                           "cairn:time_to_first_token_seconds_sum{model=\"tiny\"} 3.5\n",
                           "cairn:time_to_first_token_seconds_count{model=\"tiny\"} 6\n",
                           "cairn:node_uptime_seconds 1\n"}) {
    EXPECT_NE(r.body.find(line), std::string::npos) << line << "\n" << r.body;
  }
  // Without the inference role the node's own series still come.
  dispatcher_.answer = [](Call& call) { call.fail(Status(Code::unavailable, "no inference actor")); };
  auto bare = request("GET", "/metrics", "", "");
  EXPECT_EQ(bare.status, 200);
  EXPECT_EQ(bare.body, "cairn:node_uptime_seconds 1\n");
}

msg::InferModel model(const std::string& name, const std::string& state, bool startup, const std::string& error = {}) {
  msg::InferModel m;
  m.name = name;
  m.state = state;
  m.startup = startup;
  m.error = error;
  return m;
}

TEST_F(OpenAiApiTest, HealthIs200OnlyWhenEveryStartupModelIsReady) {
  msg::InferModelsReply reply;
  dispatcher_.answer = [&reply](Call& call) { call.reply(reply); };
  auto health = [&]() {
    auto r = request("GET", "/health", "", "");
    return std::make_pair(r.status, Json::parse(r.body, nullptr, false));
  };
  // Still loading: 503 naming it; a model loaded at run time (not startup) does not count.
  reply.models = {model("a", "ready", true), model("b", "loading", true), model("c", "loading", false)};
  auto [status, body] = health();
  EXPECT_EQ(status, 503) << body.dump();
  EXPECT_EQ(body["status"], "loading");
  EXPECT_EQ(body["node"], "n1");
  EXPECT_EQ(body["models"]["ready"], Json::array({"a"}));
  EXPECT_EQ(body["models"]["loading"], Json::array({"b"}));
  // Retrying counts as loading, with its reason; failed only once nothing loads.
  reply.models = {model("a", "failed", true, "bad config"), model("b", "retrying", true, "no alias")};
  std::tie(status, body) = health();
  EXPECT_EQ(status, 503);
  EXPECT_EQ(body["status"], "loading");
  EXPECT_EQ(body["errors"]["b"], "no alias");
  EXPECT_EQ(body["models"]["failed"], Json::array({"a"}));
  reply.models = {model("a", "failed", true, "bad config"), model("b", "ready", true)};
  std::tie(status, body) = health();
  EXPECT_EQ(status, 503);
  EXPECT_EQ(body["status"], "failed");
  EXPECT_EQ(body["errors"]["a"], "bad config");
  reply.models = {model("b", "ready", true), model("c", "failed", false, "broken")};
  std::tie(status, body) = health();
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["status"], "ok");
  // The inference actor not answering (restarting), and a stopping node.
  dispatcher_.answer = [](Call& call) { call.fail(Status(Code::unavailable, "the inference actor is restarting")); };
  std::tie(status, body) = health();
  EXPECT_EQ(status, 503);
  EXPECT_EQ(body["status"], "unavailable");
  stopping_ = true;
  std::tie(status, body) = health();
  EXPECT_EQ(status, 503);
  EXPECT_EQ(body["status"], "stopping");
}

}  // namespace
}  // namespace cairn
