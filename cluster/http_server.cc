#include "cluster/http_server.h"

#include <atomic>
#include <cstdio>
#include <deque>
#include <sstream>

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

void DisconnectSignal::on_disconnect(std::function<void()> hook) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!fired_) {
      hooks_.push_back(std::move(hook));
      return;
    }
  }
  hook();
}

void DisconnectSignal::fire() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (fired_) return;
    fired_ = true;
    hooks.swap(hooks_);
  }
  for (auto& hook : hooks) hook();
}

bool DisconnectSignal::fired() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fired_;
}

namespace {

// start_stream() where the transport has none: the pieces become one response at end().
class GatheredStream final : public HttpStream {
 public:
  GatheredStream(HttpResponse head, HttpResponder::SendFn send) : head_(std::move(head)), send_(std::move(send)) {
    head_.body.clear();
  }
  ~GatheredStream() override { end(); }
  bool write(std::string data) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return false;
    head_.body += data;
    return true;
  }
  void end() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return;
    ended_ = true;
    send_(std::move(head_));
  }

 private:
  std::mutex mutex_;  // guards everything below
  HttpResponse head_;
  HttpResponder::SendFn send_;
  bool ended_ = false;
};

// What a second start_stream() gets.
class RefusingStream final : public HttpStream {
 public:
  bool write(std::string) override { return false; }
  void end() override {}
};

}  // namespace

HttpResponder::HttpResponder(SendFn send, StartStreamFn start_stream, std::shared_ptr<DisconnectSignal> disconnect)
    : exchange_(std::make_shared<Exchange>(std::move(send), std::move(start_stream), std::move(disconnect))) {}

HttpResponder::Exchange::~Exchange() {
  // A handler that forgot to answer must not leave the client hanging.
  if (!done.load() && send) send(json_error(500, "internal", "the request was dropped without a response"));
}

bool HttpResponder::Exchange::claim() { return !done.exchange(true); }

void HttpResponder::respond(HttpResponse response) const {
  if (!exchange_->claim()) return;
  exchange_->send(std::move(response));
}

std::shared_ptr<HttpStream> HttpResponder::start_stream(HttpResponse head) const {
  if (!exchange_->claim()) return std::make_shared<RefusingStream>();
  if (exchange_->start_stream) return exchange_->start_stream(std::move(head));
  return std::make_shared<GatheredStream>(std::move(head), exchange_->send);
}

void HttpResponder::on_disconnect(std::function<void()> hook) const {
  if (exchange_->disconnect) exchange_->disconnect->on_disconnect(std::move(hook));
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

// Pipelined request bytes the connection reads ahead while it answers; past this it stops
// watching for the client going away until the answer is written.
constexpr size_t kMaxReadAheadBytes = 64 * 1024;
constexpr size_t kWatchReadBytes = 4096;

// One HTTP connection: read a request, let the router answer, write, repeat while keep-alive.
// Every member is touched only on the connection's strand. While an answer is pending, a read on
// the raw socket (the "watch") notices the client closing the connection; bytes it reads are a
// pipelined next request and stay in buffer_ for the parser.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<HttpServer::Impl> server, tcp::socket socket)
      : server_(std::move(server)), stream_(std::move(socket)) {}

  void start() { read_next(); }

  // ---- streamed responses (called on the strand) ----
  // A message with the status line and headers of `response` (not its body) for this connection's
  // HTTP version: what whole and streamed responses share.
  template <class Body>
  http::response<Body> message_head(const HttpResponse& response) const {
    http::response<Body> message;
    message.version(version_);
    message.result(static_cast<http::status>(response.status));
    message.set(http::field::server, "cairn");
    message.set(http::field::content_type, response.content_type);
    for (const auto& [name, value] : response.headers) message.set(name, value);
    return message;
  }

  void stream_head(HttpResponse head) {
    auto message = message_head<http::empty_body>(head);
    chunked_ = version_ >= 11;
    if (chunked_) {
      message.chunked(true);
    } else {
      keep_alive_ = false;  // HTTP/1.0: the body ends when the connection closes
    }
    message.keep_alive(keep_alive_);
    std::ostringstream text;
    text << message.base();
    enqueue(text.str());
  }

  void stream_piece(std::string data) {
    if (data.empty() || closed_) return;
    if (!chunked_) {
      enqueue(std::move(data));
      return;
    }
    char size[24];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    std::string chunk(size);
    chunk += data;
    chunk += "\r\n";
    enqueue(std::move(chunk));
  }

  void stream_end() {
    if (stream_ended_ || closed_) return;
    stream_ended_ = true;
    if (chunked_) enqueue("0\r\n\r\n");
    if (!writing_) after_answer_written();
  }

  uint64_t unsent_bytes() const { return unsent_bytes_.load(std::memory_order_relaxed); }
  bool closed() const { return closed_flag_.load(std::memory_order_acquire); }

 private:
  void read_next() {
    if (closed_) return;
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
    answering_ = true;
    stream_ended_ = false;
    disconnect_ = std::make_shared<DisconnectSignal>();
    auto executor = stream_.get_executor();
    HttpResponder::SendFn send = [self = shared_from_this(), executor](HttpResponse response) {
      asio::dispatch(executor, [self, response = std::move(response)]() mutable { self->write(std::move(response)); });
    };
    HttpResponder::StartStreamFn start_stream = [self = shared_from_this(), executor](HttpResponse head) {
      return make_stream(self, executor, std::move(head));
    };
    HttpResponder responder(std::move(send), std::move(start_stream), disconnect_);
    watch_peer();
    server_->router.handle(request, std::move(responder));
  }

  // Reads on the raw socket (not through stream_, whose timer governs writes) while an answer is
  // pending: an error means the client has gone.
  void watch_peer() {
    if (watching_ || closed_ || buffer_.size() >= kMaxReadAheadBytes) return;
    watching_ = true;
    stream_.socket().async_read_some(buffer_.prepare(kWatchReadBytes),
                                     [self = shared_from_this()](beast::error_code ec, size_t n) {
                                       self->on_watch(ec, n);
                                     });
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (closed_) return;
    if (!ec) buffer_.commit(n);
    if (!ec || ec == asio::error::operation_aborted) {
      if (answering_) {
        watch_peer();
      } else {
        read_next();  // the answer went out meanwhile (and cancelled this read)
      }
      return;
    }
    // End of file, reset, ...: nobody will read the rest of the answer.
    close();
  }

  // A whole response: its bytes go through the same queue as streamed pieces.
  void write(HttpResponse response) {
    if (closed_) return;
    auto message = message_head<http::string_body>(response);
    message.body() = std::move(response.body);
    message.keep_alive(keep_alive_);
    message.prepare_payload();
    std::ostringstream text;
    text << message;
    stream_ended_ = true;
    enqueue(text.str());
  }

  void enqueue(std::string bytes) {
    if (closed_) return;
    unsent_bytes_.fetch_add(bytes.size(), std::memory_order_relaxed);
    out_.push_back(std::move(bytes));
    if (!writing_) write_front();
  }

  void write_front() {
    writing_ = true;
    stream_.expires_after(std::chrono::milliseconds(server_->options.request_timeout_ms));
    asio::async_write(stream_, asio::buffer(out_.front()), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_written(ec);
    });
  }

  void on_written(beast::error_code ec) {
    writing_ = false;
    unsent_bytes_.fetch_sub(out_.front().size(), std::memory_order_relaxed);
    out_.pop_front();
    if (ec) {
      close();
      return;
    }
    if (!out_.empty()) {
      write_front();
      return;
    }
    stream_.expires_never();
    if (stream_ended_) after_answer_written();
  }

  void after_answer_written() {
    answering_ = false;
    if (!keep_alive_) {
      close();
      return;
    }
    if (watching_) {
      // The watch's handler continues with read_next once the cancel lands.
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
      return;
    }
    read_next();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    closed_flag_.store(true, std::memory_order_release);
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.close();
    if (answering_ && disconnect_) disconnect_->fire();
  }

  class SessionStream;
  static std::shared_ptr<HttpStream> make_stream(std::shared_ptr<HttpSession> session, asio::any_io_executor executor,
                                                 HttpResponse head);

  const std::shared_ptr<HttpServer::Impl> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
  bool answering_ = false;      // a request is being answered (handler running or answer being written)
  bool stream_ended_ = false;   // the answer is complete (whole response queued, or stream ended)
  bool chunked_ = false;        // the streamed answer uses chunked transfer
  bool watching_ = false;       // a watch read is pending
  bool writing_ = false;        // an async_write is pending
  bool closed_ = false;
  std::deque<std::string> out_;  // bytes to write, in order
  std::shared_ptr<DisconnectSignal> disconnect_;  // of the request being answered
  std::atomic<uint64_t> unsent_bytes_{0};         // read from any thread
  std::atomic<bool> closed_flag_{false};          // closed_, for other threads
};

// The HttpStream a handler writes to: hops onto the session's strand.
class HttpSession::SessionStream final : public HttpStream {
 public:
  SessionStream(std::shared_ptr<HttpSession> session, asio::any_io_executor executor, HttpResponse head)
      : session_(std::move(session)), executor_(std::move(executor)) {
    asio::dispatch(executor_, [s = session_, head = std::move(head)]() mutable { s->stream_head(std::move(head)); });
  }
  ~SessionStream() override { end(); }

  bool write(std::string data) override {
    if (ended_.load() || session_->closed()) return false;
    asio::dispatch(executor_, [s = session_, data = std::move(data)]() mutable { s->stream_piece(std::move(data)); });
    return true;
  }
  void end() override {
    if (ended_.exchange(true)) return;
    asio::dispatch(executor_, [s = session_] { s->stream_end(); });
  }
  uint64_t unsent_bytes() const override { return session_->unsent_bytes(); }

 private:
  const std::shared_ptr<HttpSession> session_;
  const asio::any_io_executor executor_;
  std::atomic<bool> ended_{false};
};

std::shared_ptr<HttpStream> HttpSession::make_stream(std::shared_ptr<HttpSession> session,
                                                     asio::any_io_executor executor, HttpResponse head) {
  return std::make_shared<SessionStream>(std::move(session), std::move(executor), std::move(head));
}

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
