// The node's HTTP/1.1 endpoint (`--http`): /health now; later the MLflow-, OpenAI-compatible and
// Prometheus endpoints register routes here. Runs on the caller's Asio io_context.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

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

// Answers one request exactly once, from any thread. Copies share the same exchange.
class HttpResponder {
 public:
  explicit HttpResponder(std::function<void(HttpResponse)> send) : send_(std::make_shared<Send>(std::move(send))) {}
  void respond(HttpResponse response) const;

 private:
  struct Send {
    explicit Send(std::function<void(HttpResponse)> f) : fn(std::move(f)) {}
    ~Send();
    std::function<void(HttpResponse)> fn;
    bool done = false;
  };
  std::shared_ptr<Send> send_;
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
