#include "cluster/http_server.h"

#include <atomic>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cluster/detail/endpoint.h"

namespace cairn {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

HttpResponse json_error(int http_status, std::string_view code, std::string_view message) {
  nlohmann::json body = {{"error", {{"code", code}, {"message", message}}}};
  HttpResponse response;
  response.status = http_status;
  response.body = body.dump();
  return response;
}

HttpResponder::Send::~Send() {
  // A handler that forgot to answer must not leave the client hanging.
  if (!done && fn) fn(json_error(500, "internal", "the request was dropped without a response"));
}

void HttpResponder::respond(HttpResponse response) const {
  if (send_->done) return;
  send_->done = true;
  send_->fn(std::move(response));
}

void HttpRouter::add(std::string method, std::string path, HttpHandler handler) {
  routes_[std::move(path)][std::move(method)] = std::move(handler);
}

void HttpRouter::handle(const HttpRequest& request, HttpResponder responder) const {
  auto by_path = routes_.find(request.path);
  if (by_path == routes_.end()) {
    responder.respond(json_error(404, "not_found", "no such endpoint: " + request.path));
    return;
  }
  auto handler = by_path->second.find(request.method);
  if (handler == by_path->second.end()) {
    std::string allowed;
    for (const auto& [method, _] : by_path->second) allowed += (allowed.empty() ? "" : ", ") + method;
    auto response = json_error(405, "method_not_allowed", request.method + " is not allowed on " + request.path +
                                                              " (allowed: " + allowed + ")");
    response.headers["allow"] = allowed;
    responder.respond(std::move(response));
    return;
  }
  try {
    handler->second(request, responder);
  } catch (const std::exception& e) {
    spdlog::error("http {} {}: handler threw: {}", request.method, request.path, e.what());
    responder.respond(json_error(500, "internal", e.what()));
  }
}

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  Impl(asio::io_context& io_context, const HttpOptions& opts, const HttpRouter& r)
      : io(io_context), options(opts), router(r), acceptor(io_context) {}
  void accept_next();

  asio::io_context& io;
  const HttpOptions options;
  const HttpRouter& router;
  tcp::acceptor acceptor;
  HostPort bound;
};

namespace {

// One HTTP connection: read a request, let the router answer, write, repeat while keep-alive.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<HttpServer::Impl> server, tcp::socket socket)
      : server_(std::move(server)), stream_(std::move(socket)) {}

  void start() { read_next(); }

 private:
  void read_next() {
    parser_.emplace();
    parser_->body_limit(server_->options.max_body_bytes);
    stream_.expires_after(std::chrono::milliseconds(server_->options.request_timeout_ms));
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::eof) {
      close();
      return;
    }
    if (ec) {
      int status = ec == http::error::body_limit ? 413 : 400;
      auto response = json_error(status, status == 413 ? "payload_too_large" : "bad_request",
                                 "cannot read the HTTP request: " + ec.message());
      keep_alive_ = false;
      write(std::move(response));
      return;
    }
    auto& message = parser_->get();
    HttpRequest request;
    request.method = std::string(message.method_string());
    std::string target(message.target());
    auto q = target.find('?');
    request.path = target.substr(0, q);
    if (q != std::string::npos) request.query = target.substr(q + 1);
    for (const auto& field : message) {
      std::string name(field.name_string());
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      request.headers[name] = std::string(field.value());
    }
    request.body = std::move(message.body());
    keep_alive_ = message.keep_alive();
    version_ = message.version();
    stream_.expires_never();
    auto executor = stream_.get_executor();
    HttpResponder responder([self = shared_from_this(), executor](HttpResponse response) {
      asio::dispatch(executor, [self, response = std::move(response)]() mutable { self->write(std::move(response)); });
    });
    server_->router.handle(request, std::move(responder));
  }

  void write(HttpResponse response) {
    auto message = std::make_shared<http::response<http::string_body>>();
    message->version(version_);
    message->result(static_cast<http::status>(response.status));
    message->set(http::field::server, "cairn");
    message->set(http::field::content_type, response.content_type);
    for (auto& [name, value] : response.headers) message->set(name, value);
    message->body() = std::move(response.body);
    message->keep_alive(keep_alive_);
    message->prepare_payload();
    stream_.expires_after(std::chrono::milliseconds(server_->options.request_timeout_ms));
    http::async_write(stream_, *message, [self = shared_from_this(), message](beast::error_code ec, size_t) {
      if (ec || !self->keep_alive_) {
        self->close();
        return;
      }
      self->read_next();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.close();
  }

  const std::shared_ptr<HttpServer::Impl> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
};

}  // namespace

void HttpServer::Impl::accept_next() {
  acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
    if (!ec) std::make_shared<HttpSession>(self, std::move(socket))->start();
    self->accept_next();
  });
}

Result<std::unique_ptr<HttpServer>> HttpServer::start(asio::io_context& io, const HttpOptions& options,
                                                      const HttpRouter& router) {
  auto impl = std::make_shared<Impl>(io, options, router);
  auto bound = detail::listen_on(impl->acceptor, io, options.listen, "node.http");
  if (!bound.ok()) return bound.status();
  impl->bound = *bound;
  impl->accept_next();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { stop(); }
HostPort HttpServer::bound() const { return impl_->bound; }

void HttpServer::stop() {
  asio::post(impl_->io, [impl = impl_]() {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
}

}  // namespace cairn
