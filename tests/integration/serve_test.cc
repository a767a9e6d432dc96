// Serving in a real node: `cairn node --serve tiny=<fixture>` answers OpenAI's HTTP API and the
// infer.* protocol ops, streams tokens both ways, batches 64 concurrent requests with the same
// output as one at a time, frees a disconnected client's KV blocks, refuses past its queue with 429,
// rejects bad requests with clear 4xx in OpenAI's shape, and swaps versions under load when the
// served alias moves without failing a request.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <functional>
#include <map>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/messages/infer.h"
#include "runtime/messages/registry.h"
#include "test_util.h"

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kIo = 30s;

std::string fixture_dir() { return std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama"; }

// A plain blocking TCP client for HTTP, so a test can read part of a stream and hang up.
class Socket {
 public:
  static Result<std::unique_ptr<Socket>> connect(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status(Code::io_error, "socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return Status(Code::unavailable, "connect to port " + std::to_string(port) + ": " + std::strerror(errno));
    }
    auto s = std::unique_ptr<Socket>(new Socket);
    s->fd_ = fd;
    return s;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status write(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return Status(Code::io_error, "send failed");
      done += static_cast<size_t>(n);
    }
    return Status::ok_status();
  }
  // Appends what arrives to `text` until it contains `marker` (true), the peer closes or the deadline.
  bool read_until(std::string& text, const std::string& marker, Clock::time_point deadline) {
    while (text.find(marker) == std::string::npos) {
      if (poll_one(fd_, POLLIN, deadline) <= 0) return false;
      char buffer[16384];
      ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return text.find(marker) != std::string::npos;
      text.append(buffer, static_cast<size_t>(n));
    }
    return true;
  }
  std::string read_to_end(Clock::time_point deadline) {
    std::string text;
    read_until(text, std::string(1, '\0') + "never", deadline);
    return text;
  }

 private:
  Socket() = default;
  int fd_ = -1;
};

// Decodes a chunked body ("<hex>\r\n<data>\r\n ... 0\r\n\r\n").
std::string dechunk(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t size = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
    if (size == 0) break;
    out += body.substr(eol + 2, size);
    pos = eol + 2 + size + 2;
  }
  return out;
}

struct HttpResult {
  int status = 0;
  std::string headers;
  std::string body;  // de-chunked
  Json json;         // discarded when the body is not JSON
};

std::string http_request_text(const std::string& method, const std::string& path, const std::string& body,
                              const std::string& token) {
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!token.empty()) request += "Authorization: Bearer " + token + "\r\n";
  if (!body.empty()) request += "Content-Type: application/json\r\n";
  request += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  return request;
}

Result<HttpResult> http(uint16_t port, const std::string& method, const std::string& path, const std::string& body,
                        const std::string& token) {
  auto socket = Socket::connect(port);
  if (!socket.ok()) return socket.status();
  CAIRN_RETURN_IF_ERROR((*socket)->write(http_request_text(method, path, body, token)));
  std::string text = (*socket)->read_to_end(Clock::now() + kIo);
  const auto header_end = text.find("\r\n\r\n");
  if (text.rfind("HTTP/1.1 ", 0) != 0 || header_end == std::string::npos) {
    return Status(Code::bad_frame, "not an HTTP response: " + text.substr(0, 200));
  }
  HttpResult out;
  out.status = std::atoi(text.c_str() + 9);
  out.headers = text.substr(0, header_end);
  std::transform(out.headers.begin(), out.headers.end(), out.headers.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  out.body = text.substr(header_end + 4);
  if (out.headers.find("transfer-encoding: chunked") != std::string::npos) out.body = dechunk(out.body);
  out.json = Json::parse(out.body, nullptr, /*allow_exceptions=*/false);
  return out;
}

// The JSON payloads of an SSE body ("data: {...}\n\n"), and whether it ended with [DONE].
std::vector<Json> sse_events(const std::string& body, bool* done) {
  std::vector<Json> events;
  *done = false;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    size_t end = body.find("\n\n", pos);
    std::string payload = body.substr(pos + 6, end - pos - 6);
    pos = end == std::string::npos ? body.size() : end + 2;
    if (payload == "[DONE]") {
      *done = true;
      continue;
    }
    events.push_back(Json::parse(payload, nullptr, false));
  }
  return events;
}

// The status of a call whose reply body does not matter.
Status call_status(Client& client, std::string_view op, std::string body) {
  auto reply = client.call(op, std::move(body), 60s);
  return reply.ok() ? Status::ok_status() : reply.status();
}

msg::CompletionRequest greedy(const std::string& prompt, int64_t max_tokens) {
  msg::CompletionRequest r;
  r.model = "tiny";
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.temperature = 0;
  r.ignore_eos = true;
  return r;
}

Result<msg::InferStatsReply> stats(Client& client) {
  return client.call_as<msg::InferStatsReply>(msg::kInferStats, msg::Empty{});
}

// Waits until `predicate(stats of model)` holds; false at the deadline.
bool wait_stats(Client& client, const std::string& model, const std::function<bool(const msg::InferModelStats&)>& pred,
                std::chrono::milliseconds timeout, msg::InferModelStats* last) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto s = stats(client);
    if (s.ok()) {
      for (const auto& m : s->models) {
        if (m.name != model) continue;
        *last = m;
        if (pred(m)) return true;
      }
    }
    std::this_thread::sleep_for(10ms);  // the engine frees blocks on its own thread, at its next step
  }
  return false;
}

class ServeTest : public SharedNodeTest {
 protected:
  static void SetUpTestSuite() {
    NodeOptions options;
    options.extra_args = {"--serve", "tiny=" + fixture_dir()};
    start_node(options);
  }
  void SetUp() override {
    SharedNodeTest::SetUp();
    if (HasFatalFailure()) return;
    auto client = Client::connect(node_->client_options(Role::client));
    ASSERT_TRUE(client.ok()) << client.status().to_string();
    client_ = std::move(client).value();
    // Requests that arrive while --serve models load wait for them: one such request and the model is ready.
    CAIRN_ASSERT_OK(call_status(*client_, msg::kInferCompletions, wire::encode(greedy("warm up", 1))));
  }
  HttpResult post(const std::string& path, const Json& body) {
    auto reply = http(node_->http_port(), "POST", path, body.dump(), node_->client_token());
    EXPECT_TRUE(reply.ok()) << reply.status().to_string() << node_->diagnostics();
    return reply.ok() ? std::move(reply).value() : HttpResult{};
  }
  msg::CompletionReply complete(const msg::CompletionRequest& request, const std::string& op = "infer.completions") {
    auto reply = client_->call_as<msg::CompletionReply>(op, request, 60s);
    EXPECT_TRUE(reply.ok()) << reply.status().to_string() << node_->diagnostics();
    return reply.ok() ? std::move(reply).value() : msg::CompletionReply{};
  }

  std::unique_ptr<Client> client_;
};

TEST_F(ServeTest, ModelsAreListedOverHttpAndProtocol) {
  auto models = http(node_->http_port(), "GET", "/v1/models", "", node_->client_token());
  ASSERT_TRUE(models.ok()) << models.status().to_string();
  ASSERT_EQ(models->status, 200) << models->body;
  EXPECT_EQ(models->json["object"], "list");
  ASSERT_EQ(models->json["data"].size(), 1u) << models->body;
  EXPECT_EQ(models->json["data"][0]["id"], "tiny");
  EXPECT_EQ(models->json["data"][0]["max_model_len"], 256);
  auto listed = client_->call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{});
  ASSERT_TRUE(listed.ok()) << listed.status().to_string();
  ASSERT_EQ(listed->models.size(), 1u);
  EXPECT_EQ(listed->models[0].state, "ready");
}

TEST_F(ServeTest, CompletionAndChatOverHttpEqualTheProtocolsAnswer) {
  const auto reference = complete(greedy("The quick brown fox", 12));
  ASSERT_EQ(reference.token_ids.size(), 12u);
  EXPECT_EQ(reference.finish_reason, "length");
  EXPECT_GT(reference.usage.prompt_tokens, 0);

  auto http_reply = post("/v1/completions", {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 12},
                                             {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(http_reply.status, 200) << http_reply.body;
  EXPECT_EQ(http_reply.json["object"], "text_completion");
  EXPECT_EQ(http_reply.json["choices"][0]["text"], reference.text);
  EXPECT_EQ(http_reply.json["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(http_reply.json["usage"]["completion_tokens"], 12);
  EXPECT_EQ(http_reply.json["usage"]["prompt_tokens"], reference.usage.prompt_tokens);

  msg::CompletionRequest chat;
  chat.model = "tiny";
  chat.messages = {{"system", "You are terse."}, {"user", "Say hi"}};
  chat.max_tokens = 8;
  chat.temperature = 0;
  chat.ignore_eos = true;
  const auto chat_reference = complete(chat, "infer.chat");
  ASSERT_EQ(chat_reference.token_ids.size(), 8u);
  auto chat_http = post("/v1/chat/completions",
                        {{"model", "tiny"},
                         {"messages", {{{"role", "system"}, {"content", "You are terse."}}, {{"role", "user"}, {"content", "Say hi"}}}},
                         {"max_tokens", 8},
                         {"temperature", 0},
                         {"ignore_eos", true},
                         {"logprobs", true},
                         {"top_logprobs", 2}});
  ASSERT_EQ(chat_http.status, 200) << chat_http.body;
  EXPECT_EQ(chat_http.json["object"], "chat.completion");
  EXPECT_EQ(chat_http.json["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat_http.json["choices"][0]["message"]["content"], chat_reference.text);
  const Json& content = chat_http.json["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 8u) << chat_http.body;
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_LE(content[0]["logprob"].get<double>(), 0.0);
}

TEST_F(ServeTest, StreamsOverSseAndOverTheProtocol) {
  const auto reference = complete(greedy("Once upon a time", 20));
  auto streamed = post("/v1/completions", {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 20},
                                           {"temperature", 0}, {"ignore_eos", true}, {"stream", true},
                                           {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_NE(streamed.headers.find("content-type: text/event-stream"), std::string::npos) << streamed.headers;
  bool done = false;
  auto events = sse_events(streamed.body, &done);
  EXPECT_TRUE(done) << streamed.body;
  ASSERT_GE(events.size(), 3u) << streamed.body;
  std::string text;
  std::string finish;
  for (const auto& e : events) {
    ASSERT_FALSE(e.is_discarded()) << streamed.body;
    EXPECT_EQ(e["id"], events.front()["id"]);
    if (!e["choices"].empty()) {
      text += e["choices"][0]["text"].get<std::string>();
      if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
    }
  }
  EXPECT_EQ(text, reference.text);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 20) << streamed.body;

  // The protocol: a delta per token, then the final reply with usage.
  auto request = greedy("Once upon a time", 20);
  request.stream = true;
  std::mutex mutex;
  std::string deltas;
  size_t items = 0;
  auto subscription = client_->subscribe(msg::kInferCompletions, wire::encode(request), [&](const std::string& body) {
    auto delta = wire::decode_bytes<msg::CompletionDelta>(body);
    std::lock_guard<std::mutex> lock(mutex);
    if (delta.ok()) deltas += delta->text;
    ++items;
  });
  CAIRN_ASSERT_OK(subscription->wait(60s));
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(deltas, reference.text);
  EXPECT_GE(items, 20u);

  // Chat streams start with the assistant role.
  auto chat = post("/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "hello"}}}},
                                            {"max_tokens", 5}, {"temperature", 0}, {"stream", true}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  auto chat_events = sse_events(chat.body, &done);
  EXPECT_TRUE(done);
  ASSERT_FALSE(chat_events.empty());
  EXPECT_EQ(chat_events[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(chat_events[0]["choices"][0]["delta"]["role"], "assistant");
}

TEST_F(ServeTest, SixtyFourConcurrentRequestsEqualTheirSingleRequestReference) {
  const std::vector<std::string> prompts = {"a", "The cat", "In the beginning", "1 2 3 4", "hello world",
                                            "Llamas are", "Once", "Tell me about the sea"};
  std::vector<msg::CompletionReply> references;
  for (size_t i = 0; i < prompts.size(); ++i) {
    references.push_back(complete(greedy(prompts[i], 8 + static_cast<int64_t>(i) * 3)));
  }
  constexpr size_t kRequests = 64;
  std::vector<std::future<Result<std::string>>> futures;
  for (size_t i = 0; i < kRequests; ++i) {
    const size_t p = i % prompts.size();
    futures.push_back(client_->call_future(msg::kInferCompletions,
                                           wire::encode(greedy(prompts[p], 8 + static_cast<int64_t>(p) * 3)), 120s));
  }
  for (size_t i = 0; i < kRequests; ++i) {
    auto body = futures[i].get();
    ASSERT_TRUE(body.ok()) << "request " << i << ": " << body.status().to_string();
    auto reply = wire::decode_bytes<msg::CompletionReply>(*body);
    ASSERT_TRUE(reply.ok());
    EXPECT_EQ(reply->token_ids, references[i % prompts.size()].token_ids) << "request " << i;
    EXPECT_EQ(reply->text, references[i % prompts.size()].text) << "request " << i;
  }
}

TEST_F(ServeTest, ClientThatDisconnectsMidStreamFreesItsBlocks) {
  msg::InferModelStats before;
  ASSERT_TRUE(wait_stats(*client_, "tiny", [](const auto& m) { return m.running == 0; }, 30s, &before));
  const uint64_t cancelled_before = before.requests_cancelled_total;
  {
    auto socket = Socket::connect(node_->http_port());
    ASSERT_TRUE(socket.ok());
    Json body = {{"model", "tiny"}, {"prompt", "Stream for a long while"}, {"max_tokens", 240},
                 {"temperature", 0}, {"ignore_eos", true}, {"stream", true}};
    CAIRN_ASSERT_OK((*socket)->write(http_request_text("POST", "/v1/completions", body.dump(), node_->client_token())));
    std::string text;
    ASSERT_TRUE((*socket)->read_until(text, "data: ", Clock::now() + kIo)) << text;
    msg::InferModelStats during;
    ASSERT_TRUE(wait_stats(*client_, "tiny", [](const auto& m) { return m.kv_blocks_used > 0; }, 10s, &during))
        << "the request finished before the client hung up";
  }  // hangs up
  msg::InferModelStats after;
  EXPECT_TRUE(wait_stats(
      *client_, "tiny",
      [&](const auto& m) {
        return m.running == 0 && m.kv_blocks_used == before.kv_blocks_used && m.requests_cancelled_total > cancelled_before;
      },
      30s, &after))
      << "running " << after.running << ", kv blocks used " << after.kv_blocks_used << " (baseline "
      << before.kv_blocks_used << "), cancelled " << after.requests_cancelled_total;
}

TEST_F(ServeTest, BadRequestsGetClear4xxInOpenAisShape) {
  auto expect_error = [](const HttpResult& r, int status, const std::string& needle) {
    EXPECT_EQ(r.status, status) << r.body;
    ASSERT_TRUE(r.json.is_object()) << r.body;
    ASSERT_TRUE(r.json.contains("error")) << r.body;
    for (const char* key : {"message", "type", "param", "code"}) EXPECT_TRUE(r.json["error"].contains(key)) << key;
    EXPECT_NE(r.json["error"]["message"].get<std::string>().find(needle), std::string::npos) << r.body;
  };
  auto malformed = http(node_->http_port(), "POST", "/v1/completions", "{\"model\": \"tiny\", ", node_->client_token());
  ASSERT_TRUE(malformed.ok());
  expect_error(*malformed, 400, "malformed JSON");
  expect_error(post("/v1/completions", {{"model", "nope"}, {"prompt", "x"}}), 404, "no model named \"nope\"");
  expect_error(post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 0}}), 400, "max_tokens");
  expect_error(post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 100000}}), 400,
               "context of 256");
  std::vector<int64_t> long_prompt(300, 5);
  expect_error(post("/v1/completions", {{"model", "tiny"}, {"prompt", long_prompt}, {"max_tokens", 1}}), 400,
               "prompt: 300 tokens");
  expect_error(post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"n", 2}}), 400, "n: only 1");
  expect_error(post("/v1/chat/completions", {{"model", "tiny"}, {"messages", "hi"}}), 400, "messages");
  auto unauthorized = http(node_->http_port(), "POST", "/v1/completions", "{}", "wrong-token");
  ASSERT_TRUE(unauthorized.ok());
  expect_error(*unauthorized, 401, "invalid token");
  EXPECT_EQ(post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 1}}).status, 200);
}

TEST_F(ServeTest, RequestsPastTheirTimeoutEndWithTimeout) {
  auto request = greedy("slow", 250);
  request.timeout_ms = 1;
  auto status = call_status(*client_, msg::kInferCompletions, wire::encode(request));
  EXPECT_EQ(status.code(), Code::timeout) << status.to_string();
  auto socket = Socket::connect(node_->http_port());
  ASSERT_TRUE(socket.ok());
  Json body = {{"model", "tiny"}, {"prompt", "slow"}, {"max_tokens", 250}, {"ignore_eos", true}};
  std::string text = http_request_text("POST", "/v1/completions", body.dump(), node_->client_token());
  text.insert(text.find("\r\n") + 2, "X-Cairn-Timeout-Ms: 1\r\n");
  CAIRN_ASSERT_OK((*socket)->write(text));
  std::string reply = (*socket)->read_to_end(Clock::now() + kIo);
  EXPECT_EQ(reply.rfind("HTTP/1.1 504", 0), 0u) << reply;
  EXPECT_NE(reply.find("\"code\":\"timeout\""), std::string::npos) << reply;
}

TEST_F(ServeTest, MetricsArePrometheusTextPerModel) {
  complete(greedy("metrics", 4));
  auto metrics = http(node_->http_port(), "GET", "/metrics", "", "");
  ASSERT_TRUE(metrics.ok());
  ASSERT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->headers.find("content-type: text/plain"), std::string::npos);
  for (const char* series :
       {"cairn:num_requests_running{model=\"tiny\"}", "cairn:num_requests_waiting{model=\"tiny\"}",
        "cairn:kv_cache_usage_perc{model=\"tiny\"}", "cairn:prompt_tokens_total{model=\"tiny\"}",
        "cairn:generation_tokens_total{model=\"tiny\"}", "# TYPE cairn:time_to_first_token_seconds histogram",
        "cairn:time_per_output_token_seconds_bucket{model=\"tiny\",le=\"+Inf\"}",
        "cairn:e2e_request_latency_seconds_count{model=\"tiny\"}", "cairn:node_uptime_seconds"}) {
    EXPECT_NE(metrics->body.find(series), std::string::npos) << series << "\n" << metrics->body;
  }
}

TEST_F(ServeTest, LoraAdaptersLoadedAtRunTimeAreSelectedPerRequest) {
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node_->client_options(Role::admin)));
  msg::InferLoadRequest load;
  load.name = "tl";
  load.source = fixture_dir();
  load.adapters = {{"lora", std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama-lora"}};
  auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, load, 60s);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string() << node_->diagnostics();
  EXPECT_EQ(loaded->adapters, std::vector<std::string>{"lora"});
  auto request = greedy("Adapters change", 16);
  request.model = "tl";
  const auto base = complete(request);
  request.model = "tl:lora";
  const auto by_name = complete(request);
  request.model = "tl";
  request.adapter = "lora";
  const auto by_field = complete(request);
  EXPECT_EQ(by_name.token_ids, by_field.token_ids);
  EXPECT_NE(base.token_ids, by_name.token_ids) << "the adapter changed nothing";
  request.adapter = "nope";
  auto unknown = call_status(*client_, msg::kInferCompletions, wire::encode(request));
  EXPECT_EQ(unknown.code(), Code::not_found) << unknown.to_string();
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferUnload, wire::encode(msg::InferUnloadRequest{"tl"})));
}

TEST(ServeOverload, PastTheQueueRequestsGet429AtOnce) {
  NodeOptions options;
  options.extra_args = {"--serve", "tiny=" + fixture_dir()};
  options.config_yaml = "serve:\n  max_running: 1\n  max_queue: 1\n";
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node->client_options(Role::client)));
  CAIRN_ASSERT_OK(call_status(*client, msg::kInferCompletions, wire::encode(greedy("warm up", 1))));  // loaded
  // Two long requests fill the batch (1) and the queue (1); the third is refused.
  std::vector<std::future<Result<std::string>>> busy;
  for (int i = 0; i < 2; ++i) {
    busy.push_back(client->call_future(msg::kInferCompletions, wire::encode(greedy("x", 250)), 120s));
  }
  auto refused = call_status(*client, msg::kInferCompletions, wire::encode(greedy("y", 4)));
  EXPECT_EQ(refused.code(), Code::overloaded) << refused.to_string();
  auto http_refused = http(node->http_port(), "POST", "/v1/completions",
                           Json{{"model", "tiny"}, {"prompt", "z"}, {"max_tokens", 2}}.dump(), node->client_token());
  ASSERT_TRUE(http_refused.ok());
  EXPECT_EQ(http_refused->status, 429) << http_refused->body;
  EXPECT_EQ(http_refused->json["error"]["code"], "overloaded") << http_refused->body;
  for (auto& f : busy) {
    auto r = f.get();
    EXPECT_TRUE(r.ok()) << r.status().to_string();
  }
  // Once they are done there is room again.
  EXPECT_TRUE(client->call(msg::kInferCompletions, wire::encode(greedy("y", 4)), 60s).ok());
}

// A copy of the fixture with every weight negated: a second, different version.
Status write_negated_copy(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) fs::copy_file(entry.path(), to + "/" + entry.path().filename().string());
  std::string bytes = read_file(to + "/model.safetensors");
  if (bytes.size() < 8) return Status(Code::data_loss, "short safetensors");
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  for (size_t i = 8 + header; i + 3 < bytes.size(); i += 4) bytes[i + 3] = static_cast<char>(bytes[i + 3] ^ 0x80);
  return write_file(to + "/model.safetensors", bytes);
}

std::string register_version(const NodeProcess& node, const std::string& model, const std::string& dir,
                             const std::string& out, const std::string& base_model = "") {
  std::vector<std::string> args = {CAIRN_BINARY, "models", "register", model, "--from", dir, "--connect", node.address(),
                                   "--token", node.admin_token(), "--json"};
  if (!base_model.empty()) args.insert(args.end(), {"--base-model", base_model});
  auto code = run_program(args, out, 60s);
  if (!code.ok() || *code != 0) return "";
  auto json = Json::parse(read_file(out), nullptr, false);
  if (json.is_discarded()) return "";
  if (json.contains("model_version")) return json["model_version"]["version"];
  return json.value("version", "");
}

TEST(ServeHotSwap, AliasMoveUnderLoadSwapsVersionsWithoutFailingARequest) {
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, inference]\nserve:\n  alias_poll_ms: 50\n";
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
  TempDir dir;
  CAIRN_ASSERT_OK(write_negated_copy(fixture_dir(), dir.path("v2")));
  const std::string v1 = register_version(*node, "tiny", fixture_dir(), dir.path("out1"));
  const std::string v2 = register_version(*node, "tiny", dir.path("v2"), dir.path("out2"));
  ASSERT_FALSE(v1.empty()) << read_file(dir.path("out1")) << node->diagnostics();
  ASSERT_FALSE(v2.empty()) << read_file(dir.path("out2"));
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
  CAIRN_ASSERT_OK(call_status(*admin, msg::kSetAlias, wire::encode(msg::SetAliasRequest{"tiny", "production", v1})));

  // Load at run time: the alias, and each version under its own name for the references.
  for (auto [name, source] : {std::pair<std::string, std::string>{"tiny", "tiny@production"},
                              {"tiny-v1", "tiny/" + v1}, {"tiny-v2", "tiny/" + v2}}) {
    msg::InferLoadRequest load;
    load.name = name;
    load.source = source;
    auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, load, 60s);
    ASSERT_TRUE(loaded.ok()) << name << ": " << loaded.status().to_string() << node->diagnostics();
    EXPECT_EQ(loaded->state, "ready");
  }
  auto reference = [&](const std::string& model) {
    auto request = greedy("swap me", 60);
    request.model = model;
    auto reply = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, request, 60s);
    EXPECT_TRUE(reply.ok()) << reply.status().to_string();
    return reply.ok() ? reply->token_ids : std::vector<int64_t>{};
  };
  const auto ref1 = reference("tiny-v1");
  const auto ref2 = reference("tiny-v2");
  ASSERT_NE(ref1, ref2) << "the two versions generate the same tokens; the swap would go unseen";

  // Keep at least 16 requests in flight while the alias moves, and until the new version serves.
  std::vector<std::future<Result<std::string>>> futures;
  auto fire = [&] { futures.push_back(admin->call_future(msg::kInferCompletions, wire::encode(greedy("swap me", 60)), 120s)); };
  for (int i = 0; i < 16; ++i) fire();
  CAIRN_ASSERT_OK(call_status(*admin, msg::kSetAlias, wire::encode(msg::SetAliasRequest{"tiny", "production", v2})));
  const auto deadline = Clock::now() + 60s;
  bool swapped = false;
  // Bounded: a steady 32 in flight, well within the admission limit, however long the load takes.
  auto in_flight = [&] {
    return std::count_if(futures.begin(), futures.end(), [](auto& f) {
      return f.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
    });
  };
  while (!swapped && Clock::now() < deadline) {
    if (in_flight() < 32) fire();
    auto models = admin->call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{});
    ASSERT_TRUE(models.ok());
    for (const auto& m : models->models) swapped |= m.name == "tiny" && m.version == v2;
  }
  ASSERT_TRUE(swapped) << node->diagnostics();
  for (int i = 0; i < 16; ++i) fire();

  size_t on_v1 = 0, on_v2 = 0;
  for (size_t i = 0; i < futures.size(); ++i) {
    auto body = futures[i].get();
    ASSERT_TRUE(body.ok()) << "request " << i << " failed across the swap: " << body.status().to_string();
    auto reply = wire::decode_bytes<msg::CompletionReply>(*body);
    ASSERT_TRUE(reply.ok());
    if (reply->version == v1) {
      ++on_v1;
      EXPECT_EQ(reply->token_ids, ref1) << "request " << i;
    } else {
      ++on_v2;
      EXPECT_EQ(reply->version, v2);
      EXPECT_EQ(reply->token_ids, ref2) << "request " << i;
    }
  }
  EXPECT_GE(on_v1, 16u);
  EXPECT_GE(on_v2, 16u);
  auto after = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy("swap me", 60), 60s);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->version, v2);
  EXPECT_EQ(after->token_ids, ref2);
  auto s = admin->call_as<msg::InferStatsReply>(msg::kInferStats, msg::Empty{});
  ASSERT_TRUE(s.ok());
  for (const auto& m : s->models) {
    if (m.name == "tiny") EXPECT_EQ(m.swaps_total, 1u);
  }

  // Unload frees the name.
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferUnload, wire::encode(msg::InferUnloadRequest{"tiny-v1"})));
  auto gone = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, [] {
    auto r = greedy("x", 2);
    r.model = "tiny-v1";
    return r;
  }());
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), Code::not_found);
}


// ---- readiness, retries, persistence and adapter versions ----

HttpResult post_json(const NodeProcess& node, const std::string& path, const Json& body) {
  auto reply = http(node.http_port(), "POST", path, body.dump(), node.admin_token());
  EXPECT_TRUE(reply.ok()) << reply.status().to_string() << node.diagnostics();
  return reply.ok() ? std::move(reply).value() : HttpResult{};
}

// Polls `predicate` until it holds or `timeout` passes (the node changes state on its own threads).
bool eventually(const std::function<bool()>& predicate, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return predicate();
}

Result<msg::InferModel> served_model(Client& client, const std::string& name) {
  auto models = client.call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{});
  if (!models.ok()) return models.status();
  for (const auto& m : models->models) {
    if (m.name == name) return m;
  }
  return Status(Code::not_found, name + " is not served");
}

// Kills the inference actor and waits until the supervisor has restarted it (restart number `nth`).
Status restart_inference(Client& admin, uint64_t nth) {
  CAIRN_RETURN_IF_ERROR(call_status(admin, msg::kKillActor, wire::encode(msg::KillActor{"inference"})));
  bool restarted = eventually([&] {
    auto status = admin.call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{});
    const msg::ActorStatus* actor = status.ok() ? find_actor(*status, "inference") : nullptr;
    return actor != nullptr && actor->restarts >= nth && actor->state == "running";
  }, 30s);
  return restarted ? Status::ok_status() : Status(Code::timeout, "the inference actor was not restarted");
}

msg::CompletionRequest greedy_for(const std::string& model, const std::string& prompt, int64_t max_tokens) {
  auto r = greedy(prompt, max_tokens);
  r.model = model;
  return r;
}

TEST(ServeReadiness, HealthWaitsForStartupModelsAndNamesTheBrokenAndTheMissingOnes) {
  TempDir dir;
  fs::create_directories(dir.path("broken"));
  CAIRN_ASSERT_OK(write_file(dir.path("broken/config.json"), "{\"model_type\": \"llama\", \"hidden_size\": \"big\"}"));
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, inference]\nserve:\n  alias_poll_ms: 50\n"
                        "  load_retry_initial_ms: 50\n  load_retry_max_ms: 200\n";
  options.extra_args = {"--serve", "tiny=" + fixture_dir(), "--serve", "broken=" + dir.path("broken"), "--serve",
                        "later=tiny@production"};
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options, 60s));
  // The ready line comes once every startup model has loaded, failed, or failed once and retries.
  const std::string& line = node->ready_line();
  EXPECT_NE(line.find("tiny:ready"), std::string::npos) << line;
  EXPECT_NE(line.find("broken:failed"), std::string::npos) << line;
  EXPECT_NE(line.find("later:retrying"), std::string::npos) << line;

  // Not healthy while "later" waits for its alias: 503 naming it and why.
  auto health = http(node->http_port(), "GET", "/health", "", "");
  ASSERT_TRUE(health.ok()) << health.status().to_string();
  EXPECT_EQ(health->status, 503) << health->body;
  EXPECT_EQ(health->json["status"], "loading") << health->body;
  EXPECT_EQ(health->json["models"]["ready"], Json::array({"tiny"})) << health->body;
  EXPECT_EQ(health->json["models"]["loading"], Json::array({"later"})) << health->body;
  EXPECT_EQ(health->json["models"]["failed"], Json::array({"broken"})) << health->body;
  EXPECT_NE(health->json["errors"]["later"].get<std::string>().find("production"), std::string::npos) << health->body;
  EXPECT_NE(health->json["errors"]["broken"].get<std::string>().find("hidden_size"), std::string::npos) << health->body;

  // The ready model serves; the others fail at once, naming the model and the reason.
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferCompletions, wire::encode(greedy("ready", 2))));
  auto later = call_status(*admin, msg::kInferCompletions, wire::encode(greedy_for("later", "x", 2)));
  EXPECT_EQ(later.code(), Code::unavailable) << later.to_string();
  EXPECT_NE(later.message().find("\"later\" is not loaded yet"), std::string::npos) << later.to_string();
  EXPECT_NE(later.message().find("tiny@production"), std::string::npos) << later.to_string();
  auto broken = post_json(*node, "/v1/completions", {{"model", "broken"}, {"prompt", "x"}});
  EXPECT_EQ(broken.status, 503) << broken.body;
  EXPECT_NE(broken.json["error"]["message"].get<std::string>().find("\"broken\" failed to load"), std::string::npos)
      << broken.body;

  // `cairn status` lists the models with their states.
  auto code = run_program({CAIRN_BINARY, "status", "--connect", node->address(), "--token", node->admin_token(), "--json"},
                          dir.path("status.json"), 30s);
  ASSERT_TRUE(code.ok()) << code.status().to_string();
  auto status = Json::parse(read_file(dir.path("status.json")), nullptr, false);
  ASSERT_TRUE(status.is_object()) << read_file(dir.path("status.json"));
  std::map<std::string, std::string> states;
  for (const auto& m : status["models"]) states[m["name"]] = m["state"];
  EXPECT_EQ(states, (std::map<std::string, std::string>{{"broken", "failed"}, {"later", "retrying"}, {"tiny", "ready"}}))
      << status.dump();

  // The alias appears: the retrying model picks it up; only the broken one keeps the node unhealthy.
  const std::string v1 = register_version(*node, "tiny", fixture_dir(), dir.path("out1"));
  ASSERT_FALSE(v1.empty()) << read_file(dir.path("out1"));
  CAIRN_ASSERT_OK(call_status(*admin, msg::kSetAlias, wire::encode(msg::SetAliasRequest{"tiny", "production", v1})));
  ASSERT_TRUE(eventually([&] {
    auto m = served_model(*admin, "later");
    return m.ok() && m->state == "ready";
  }, 60s)) << node->diagnostics();
  auto reply = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy_for("later", "picked up", 4), 60s);
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->version, v1);
  health = http(node->http_port(), "GET", "/health", "", "");
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 503) << health->body;
  EXPECT_EQ(health->json["status"], "failed") << health->body;

  // Without the broken model the node is healthy; a model loaded at run time does not count.
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferUnload, wire::encode(msg::InferUnloadRequest{"broken"})));
  health = http(node->http_port(), "GET", "/health", "", "");
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 200) << health->body;
  EXPECT_EQ(health->json["status"], "ok") << health->body;
}

TEST(ServeReadiness, AnUnreachableRegistryIsRetriedWithBackoff) {
  NodeOptions options;
  // No registry role: every attempt to resolve the version fails with unavailable.
  options.config_yaml = "node:\n  roles: [echo, inference]\nserve:\n  load_retry_initial_ms: 50\n"
                        "  load_retry_max_ms: 200\n";
  options.extra_args = {"--serve", "pinned=tiny/1"};
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options, 60s));
  EXPECT_NE(node->ready_line().find("models=pinned:retrying"), std::string::npos) << node->ready_line();
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node->client_options(Role::client)));
  // The waits double from 50 ms and stay at the 200 ms cap.
  std::string error;
  EXPECT_TRUE(eventually([&] {
    auto m = served_model(*client, "pinned");
    error = m.ok() ? m->error : m.status().to_string();
    return m.ok() && m->state == "retrying" && error.find("next in 200 ms") != std::string::npos &&
           error.find("attempt 1,") == std::string::npos;
  }, 30s)) << error;
  EXPECT_NE(error.find("tiny/1"), std::string::npos) << error;
  EXPECT_NE(error.find("registry"), std::string::npos) << error;
  auto request = call_status(*client, msg::kInferCompletions, wire::encode(greedy_for("pinned", "x", 2)));
  EXPECT_EQ(request.code(), Code::unavailable) << request.to_string();
  EXPECT_NE(request.message().find("\"pinned\" is not loaded yet"), std::string::npos) << request.to_string();
}

TEST(ServePersistence, RunTimeLoadsSurviveAnActorRestartAndPersistentOnesANodeRestart) {
  TempDir dir;
  NodeOptions options;
  options.data_dir = dir.path("data");
  options.config_yaml = "node:\n  roles: [echo, registry, inference]\n";
  std::string admin_token, client_token;
  {
    std::unique_ptr<NodeProcess> node;
    CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
    std::unique_ptr<Client> admin;
    CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
    msg::InferLoadRequest load;
    load.name = "session";
    load.source = fixture_dir();
    auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, load, 60s);
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string() << node->diagnostics();
    // The other through the command, as an admin would.
    auto code = run_program({CAIRN_BINARY, "serve", "load", "kept", fixture_dir(), "--adapter",
                             "lora=" + std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama-lora",
                             "--persist", "--connect", node->address(), "--token", node->admin_token()},
                            dir.path("load.out"), 60s);
    ASSERT_TRUE(code.ok() && *code == 0) << read_file(dir.path("load.out")) << node->diagnostics();
    auto before = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy_for("session", "restart", 6), 60s);
    ASSERT_TRUE(before.ok()) << before.status().to_string();

    // The supervisor restarts a killed batcher, which loads both again.
    CAIRN_ASSERT_OK(restart_inference(*admin, 1));
    ASSERT_TRUE(eventually([&] {
      auto a = served_model(*admin, "session");
      auto b = served_model(*admin, "kept");
      return a.ok() && a->state == "ready" && b.ok() && b->state == "ready";
    }, 60s)) << node->diagnostics();
    auto after = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy_for("session", "restart", 6), 60s);
    ASSERT_TRUE(after.ok()) << after.status().to_string();
    EXPECT_EQ(after->token_ids, before->token_ids);
    auto kept = served_model(*admin, "kept");
    ASSERT_TRUE(kept.ok());
    EXPECT_EQ(kept->adapters, std::vector<std::string>{"lora"});
    EXPECT_TRUE(kept->startup);  // restored: readiness counts it now
    admin_token = node->admin_token();
    client_token = node->client_token();
    ASSERT_TRUE(node->signal(SIGTERM));
    ASSERT_EQ(node->wait_exit(), 0) << node->diagnostics();
  }
  // A node restart serves only what asked to persist.
  options.admin_token = admin_token;
  options.client_token = client_token;
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options, 60s));
  EXPECT_NE(node->ready_line().find("models=kept:ready"), std::string::npos) << node->ready_line();
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
  auto models = admin->call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{});
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->models.size(), 1u);
  EXPECT_EQ(models->models[0].name, "kept");
  EXPECT_TRUE(models->models[0].persist);
  // Unloading forgets it for good.
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferUnload, wire::encode(msg::InferUnloadRequest{"kept"})));
  CAIRN_ASSERT_OK(restart_inference(*admin, 1));
  auto listed = admin->call_as<msg::InferModelsReply>(msg::kInferModels, msg::Empty{});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->models.empty());
}

TEST(ServeAdapterVersion, AnAdapterVersionIsServedOnTheBaseItsLineageNames) {
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, inference]\n";
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
  TempDir dir;
  const std::string lora_dir = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama-lora";
  const std::string base = register_version(*node, "tiny", fixture_dir(), dir.path("base"));
  ASSERT_FALSE(base.empty()) << read_file(dir.path("base"));
  // One adapter with the lineage set at registration, one naming its base in adapter_config.json.
  ASSERT_FALSE(register_version(*node, "tiny-ft", lora_dir, dir.path("ft"), "tiny/" + base).empty())
      << read_file(dir.path("ft"));
  fs::create_directories(dir.path("ft2"));
  fs::copy_file(lora_dir + "/adapter_model.safetensors", dir.path("ft2/adapter_model.safetensors"));
  auto config = Json::parse(read_file(lora_dir + "/adapter_config.json"));
  config["base_model_name_or_path"] = "tiny/" + base;
  CAIRN_ASSERT_OK(write_file(dir.path("ft2/adapter_config.json"), config.dump()));
  ASSERT_FALSE(register_version(*node, "tiny-ft2", dir.path("ft2"), dir.path("ft2.out")).empty())
      << read_file(dir.path("ft2.out"));

  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
  msg::InferLoadRequest reference;
  reference.name = "ref";
  reference.source = fixture_dir();
  reference.adapters = {{"lora", lora_dir}};
  for (const auto& [name, source] : {std::pair<std::string, std::string>{"ft", "tiny-ft/1"}, {"ft2", "tiny-ft2/1"}}) {
    msg::InferLoadRequest load;
    load.name = name;
    load.source = source;
    auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, load, 60s);
    ASSERT_TRUE(loaded.ok()) << name << ": " << loaded.status().to_string() << node->diagnostics();
    EXPECT_EQ(loaded->base_model, "tiny/" + base);
  }
  auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, reference, 60s);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  auto tokens = [&](const std::string& model) {
    auto reply = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy_for(model, "Adapters change", 16), 60s);
    EXPECT_TRUE(reply.ok()) << model << ": " << reply.status().to_string();
    return reply.ok() ? reply->token_ids : std::vector<int64_t>{};
  };
  const auto with_adapter = tokens("ref:lora");
  ASSERT_FALSE(with_adapter.empty());
  EXPECT_NE(with_adapter, tokens("ref")) << "the adapter changed nothing";
  EXPECT_EQ(tokens("ft"), with_adapter);
  EXPECT_EQ(tokens("ft2"), with_adapter);
  // Over OpenAI's API the adapter's served name is the model.
  auto http_reply = post_json(*node, "/v1/completions", {{"model", "ft"}, {"prompt", "Adapters change"}, {"max_tokens", 16},
                                                          {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(http_reply.status, 200) << http_reply.body;
  EXPECT_EQ(http_reply.json["model"], "ft");

  // An adapter that names no base is refused, saying how to fix it.
  fs::create_directories(dir.path("orphan"));
  fs::copy_file(lora_dir + "/adapter_model.safetensors", dir.path("orphan/adapter_model.safetensors"));
  fs::copy_file(lora_dir + "/adapter_config.json", dir.path("orphan/adapter_config.json"));
  ASSERT_FALSE(register_version(*node, "orphan", dir.path("orphan"), dir.path("orphan.out")).empty())
      << read_file(dir.path("orphan.out"));
  msg::InferLoadRequest orphan;
  orphan.name = "orphan";
  orphan.source = "orphan/1";
  auto refused = admin->call_as<msg::InferModel>(msg::kInferLoad, orphan, 60s);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("names no base model"), std::string::npos) << refused.status().to_string();
}

TEST(ServeAdapterVersion, AdapterVersionsOfOneBaseShareItsLoadedEngine) {
  NodeOptions options;
  options.config_yaml = "node:\n  roles: [echo, registry, inference]\nserve:\n  alias_poll_ms: 50\n";
  std::unique_ptr<NodeProcess> node;
  CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
  TempDir dir;
  const std::string lora_dir = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama-lora";
  const std::string base = register_version(*node, "tiny", fixture_dir(), dir.path("base"));
  ASSERT_FALSE(base.empty()) << read_file(dir.path("base"));
  // Two adapters of the base that differ: the fixture, and the fixture at twice its scale (lora_alpha).
  fs::create_directories(dir.path("strong"));
  fs::copy_file(lora_dir + "/adapter_model.safetensors", dir.path("strong/adapter_model.safetensors"));
  auto config = Json::parse(read_file(lora_dir + "/adapter_config.json"));
  config["lora_alpha"] = config["lora_alpha"].get<int>() * 2;
  CAIRN_ASSERT_OK(write_file(dir.path("strong/adapter_config.json"), config.dump()));
  // tiny-ft/1 is the fixture, tiny-ft/2 the strong one; tiny-strong/1 the strong one again.
  for (const auto& [model, from] : {std::pair<std::string, std::string>{"tiny-ft", lora_dir},
                                    {"tiny-ft", dir.path("strong")}, {"tiny-strong", dir.path("strong")}}) {
    ASSERT_FALSE(register_version(*node, model, from, dir.path("register.out"), "tiny/" + base).empty())
        << read_file(dir.path("register.out"));
  }
  std::unique_ptr<Client> admin;
  CAIRN_ASSERT_OK_AND_ASSIGN(admin, Client::connect(node->client_options(Role::admin)));
  CAIRN_ASSERT_OK(call_status(*admin, msg::kSetAlias, wire::encode(msg::SetAliasRequest{"tiny-ft", "production", "1"})));
  // The base, two adapter versions under two names, an alias-served adapter; and a reference engine
  // of its own (infer.load `adapters`) for the fixture adapter's output.
  for (const auto& [name, source] : {std::pair<std::string, std::string>{"base", "tiny/" + base},
                                     {"ft", "tiny-ft/1"}, {"strong", "tiny-strong/1"}, {"live", "tiny-ft@production"}}) {
    msg::InferLoadRequest load;
    load.name = name;
    load.source = source;
    auto loaded = admin->call_as<msg::InferModel>(msg::kInferLoad, load, 60s);
    ASSERT_TRUE(loaded.ok()) << name << ": " << loaded.status().to_string() << node->diagnostics();
  }
  msg::InferLoadRequest reference;
  reference.name = "ref";
  reference.source = fixture_dir();
  reference.adapters = {{"lora", lora_dir}};
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferLoad, wire::encode(reference)));

  auto engine_of = [&](const std::string& name) -> uint64_t {
    auto m = served_model(*admin, name);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    return m.ok() ? m->engine_id : 0;
  };
  const uint64_t shared = engine_of("base");
  ASSERT_NE(shared, 0u);
  EXPECT_EQ(engine_of("ft"), shared) << "the adapter version loaded its base again";
  EXPECT_EQ(engine_of("strong"), shared);
  EXPECT_EQ(engine_of("live"), shared);
  EXPECT_NE(engine_of("ref"), shared) << "a model with adapters of its own has an engine of its own";

  auto tokens = [&](const std::string& model) {
    auto reply = admin->call_as<msg::CompletionReply>(msg::kInferCompletions, greedy_for(model, "Adapters change", 16), 60s);
    EXPECT_TRUE(reply.ok()) << model << ": " << reply.status().to_string();
    return reply.ok() ? reply->token_ids : std::vector<int64_t>{};
  };
  const auto on_base = tokens("base");
  const auto on_ft = tokens("ft");
  const auto on_strong = tokens("strong");
  ASSERT_FALSE(on_base.empty());
  EXPECT_EQ(on_ft, tokens("ref:lora")) << "the attached adapter answers unlike the same adapter on an engine of its own";
  EXPECT_NE(on_ft, on_base);
  EXPECT_NE(on_strong, on_base);
  EXPECT_NE(on_strong, on_ft) << "the two adapters generate the same tokens; their sharing would go unseen";
  EXPECT_EQ(tokens("live"), on_ft);

  // The alias moves to the strong adapter under load: no request fails, each answers as its version.
  std::vector<std::future<Result<std::string>>> futures;
  auto fire = [&] {
    futures.push_back(admin->call_future(msg::kInferCompletions, wire::encode(greedy_for("live", "Adapters change", 16)), 120s));
  };
  for (int i = 0; i < 8; ++i) fire();
  CAIRN_ASSERT_OK(call_status(*admin, msg::kSetAlias, wire::encode(msg::SetAliasRequest{"tiny-ft", "production", "2"})));
  bool swapped = eventually([&] {
    if (futures.size() < 64) fire();  // well within the admission limit however long the swap takes
    auto m = served_model(*admin, "live");
    return m.ok() && m->version == "2";
  }, 60s);
  ASSERT_TRUE(swapped) << node->diagnostics();
  for (int i = 0; i < 8; ++i) fire();
  std::map<std::string, int> on_version;
  for (size_t i = 0; i < futures.size(); ++i) {
    auto body = futures[i].get();
    ASSERT_TRUE(body.ok()) << "request " << i << " failed across the swap: " << body.status().to_string();
    auto reply = wire::decode_bytes<msg::CompletionReply>(*body);
    ASSERT_TRUE(reply.ok());
    EXPECT_EQ(reply->token_ids, reply->version == "1" ? on_ft : on_strong) << "request " << i << " on " << reply->version;
    ++on_version[reply->version];
  }
  EXPECT_GE(on_version["1"], 8) << "the requests sent before the alias moved";
  EXPECT_GE(on_version["2"], 8) << "the requests sent after the swap";
  EXPECT_EQ(engine_of("live"), shared);
  EXPECT_EQ(tokens("live"), on_strong);

  // Unloading users of the engine keeps it for the others, whatever the order.
  for (const std::string gone : {"ft", "base", "live"}) {
    CAIRN_ASSERT_OK(call_status(*admin, msg::kInferUnload, wire::encode(msg::InferUnloadRequest{gone})));
    EXPECT_EQ(tokens("strong"), on_strong) << "after unloading " << gone;
    EXPECT_EQ(engine_of("strong"), shared);
  }
  // A base loaded again attaches to the engine the remaining adapter keeps.
  msg::InferLoadRequest again;
  again.name = "base";
  again.source = "tiny/" + base;
  CAIRN_ASSERT_OK(call_status(*admin, msg::kInferLoad, wire::encode(again)));
  EXPECT_EQ(engine_of("base"), shared);
  EXPECT_EQ(tokens("base"), on_base);
}

}  // namespace
}  // namespace cairn::testing
