// The node's HTTP/1.1 endpoint (`--http`): /health, the MLflow- and OpenAI-compatible APIs and
// Prometheus /metrics register routes here. Runs on the caller's Asio io_context. A response is
// either one message or a stream (server-sent events); while a request is being answered the
// connection watches for the client going away and reports it through DisconnectSignal.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/status.h"

namespace boost::asio {
class io_context;
}

namespace cairn {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string
  std::string query;   // after '?', undecoded
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::map<std::string, std::string> headers;
};

// Fires its hooks once, when the client of an exchange goes away before the response is complete
// (the connection closed or reset), so the work behind it can be cancelled. Thread-safe.
class DisconnectSignal {
 public:
  // Runs `hook` when the signal fires, on the connection's thread; at once, on this thread, when
  // it already has.
  void on_disconnect(std::function<void()> hook);
  void fire();
  bool fired() const;

 private:
  mutable std::mutex mutex_;  // guards fired_ and hooks_
  bool fired_ = false;
  std::vector<std::function<void()>> hooks_;
};

// A response written in pieces after its head (server-sent events). Thread-safe; pieces go out in
// the order write() is called, each as soon as the connection can take it. Destroying the stream
// ends it.
class HttpStream {
 public:
  virtual ~HttpStream() = default;
  // Queues `data` as the next piece of the body. false (and nothing sent) once the client has gone
  // or end() was called.
  virtual bool write(std::string data) = 0;
  // Completes the body; the connection then serves its next request. Idempotent.
  virtual void end() = 0;
  // Bytes accepted by write() that the connection has not sent yet.
  virtual uint64_t unsent_bytes() const { return 0; }
};

// Answers one request exactly once, from any thread: with one response (respond) or with a stream
// (start_stream). Copies share the same exchange.
class HttpResponder {
 public:
  using SendFn = std::function<void(HttpResponse)>;
  using StartStreamFn = std::function<std::shared_ptr<HttpStream>(HttpResponse head)>;
  // `start_stream` may be null: then start_stream() gathers the pieces and sends them through
  // `send` as one response at end() (tests, and transports without streaming). `disconnect` may be
  // null: the client's departure is then never reported.
  explicit HttpResponder(SendFn send, StartStreamFn start_stream = nullptr,
                         std::shared_ptr<DisconnectSignal> disconnect = nullptr);
  void respond(HttpResponse response) const;
  // Sends `head`'s status and headers (its body is ignored) and returns the stream for the body:
  // chunked transfer on HTTP/1.1, close-delimited on HTTP/1.0. Counts as the answer: respond()
  // does nothing afterwards, and a second start_stream() returns a stream that accepts nothing.
  std::shared_ptr<HttpStream> start_stream(HttpResponse head) const;
  // Runs `hook` once if the client goes away before the response is complete.
  void on_disconnect(std::function<void()> hook) const;

 private:
  struct Exchange {
    Exchange(SendFn s, StartStreamFn st, std::shared_ptr<DisconnectSignal> d)
        : send(std::move(s)), start_stream(std::move(st)), disconnect(std::move(d)) {}
    ~Exchange();
    bool claim();  // true for the first answer only
    SendFn send;
    StartStreamFn start_stream;
    std::shared_ptr<DisconnectSignal> disconnect;
    std::atomic<bool> done{false};
  };
  std::shared_ptr<Exchange> exchange_;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponder)>;

struct HttpOptions {
  HostPort listen;
  size_t max_body_bytes = 16u << 20;
  uint32_t request_timeout_ms = 30000;  // reading one request, and idle keep-alive
};

// Routes are exact (method, path) pairs, registered before start().
class HttpRouter {
 public:
  void add(std::string method, std::string path, HttpHandler handler);
  // Calls the handler, or answers 404 / 405 in JSON.
  void handle(const HttpRequest& request, HttpResponder responder) const;

 private:
  std::map<std::string, std::map<std::string, HttpHandler>> routes_;  // path -> method -> handler
};

class HttpServer {
 public:
  // `router` must outlive the server.
  static Result<std::unique_ptr<HttpServer>> start(boost::asio::io_context& io, const HttpOptions& options,
                                                    const HttpRouter& router);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  HostPort bound() const;
  // Stops accepting; open exchanges finish. Thread-safe.
  void stop();

  struct Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// {"error": {"code": ..., "message": ...}} with the HTTP status that fits the code.
HttpResponse json_error(int http_status, std::string_view code, std::string_view message);

}  // namespace cairn
