#include "cluster/server.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <spdlog/spdlog.h>

#include "cluster/detail/endpoint.h"
#include "runtime/version.h"

namespace cairn {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kInitialReadBuffer = 64 * 1024;
constexpr size_t kMinReadSpace = 16 * 1024;

// Closing a connection, for every reason, goes through these strings so logs read the same.
std::string peer_name(const tcp::socket& socket) {
  boost::system::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  if (ec) return "unknown peer";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

}  // namespace

class ConnectionBase : public ReplySink, public std::enable_shared_from_this<ConnectionBase> {
 public:
  // Answers what is in flight with `why`, flushes and closes. Thread-safe.
  virtual void shut_down(const Status& why) = 0;
};

struct ProtocolServer::Impl : std::enable_shared_from_this<ProtocolServer::Impl> {
  Impl(asio::io_context& io_context, const ServerOptions& opts, const TokenStore& token_store, Dispatcher& disp)
      : io(io_context), options(opts), tokens(token_store), dispatcher(disp), acceptor(io_context) {}

  void accept_next();
  template <class Stream, class... Args>
  void adopt(tcp::socket socket, Args&&... args);
  void track(const std::shared_ptr<ConnectionBase>& connection);

  // Constant after start().
  asio::io_context& io;
  const ServerOptions options;
  const TokenStore& tokens;
  Dispatcher& dispatcher;
  std::unique_ptr<asio::ssl::context> ssl;
  HostPort bound;

  tcp::acceptor acceptor;  // used on the io_context only (accept loop, then a posted close)
  std::atomic<size_t> connections{0};
  std::atomic<int64_t> inflight{0};
  std::atomic<bool> shutting_down{false};
  std::mutex live_mutex;  // guards live
  std::vector<std::weak_ptr<ConnectionBase>> live;
};

namespace {

// One client connection. Everything but the ReplySink entry points runs on the connection's strand
// (the executor of its socket), so the members below need no lock.
template <class Stream>
class Connection final : public ConnectionBase {
 public:
  using Server = ProtocolServer::Impl;

  template <class... Args>
  Connection(std::shared_ptr<Server> server, tcp::socket socket, Args&&... stream_args)
      : server_(std::move(server)),
        peer_(peer_name(socket)),
        stream_(std::move(socket), std::forward<Args>(stream_args)...),
        read_timer_(stream_.get_executor()),
        write_timer_(stream_.get_executor()),
        in_(kInitialReadBuffer) {}

  ~Connection() override { server_->connections.fetch_sub(1, std::memory_order_relaxed); }

  void start(std::optional<Status> reject) {
    if constexpr (std::is_same_v<Stream, tcp::socket>) {
      boost::system::error_code ec;
      stream_.non_blocking(true, ec);  // write_now() must never block the I/O thread
      if (ec) {
        spdlog::info("connection from {} closed: cannot make the socket non-blocking: {}", peer_, ec.message());
        close_now();
        return;
      }
    }
    arm_read_deadline(server_->options.handshake_timeout_ms, "no handshake within the time allowed");
    if (reject) {
      fail_connection(*reject);
      return;
    }
    if constexpr (std::is_same_v<Stream, tcp::socket>) {
      do_read();
    } else {
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = self()](const boost::system::error_code& ec) {
                                if (ec) {
                                  spdlog::info("connection from {} closed: TLS handshake failed: {}", self->peer_,
                                               ec.message());
                                  self->close_now();
                                  return;
                                }
                                self->do_read();
                              });
    }
  }

  void send_reply(uint64_t id, protocol::ReplyKind kind, std::string body) override {
    posted_bytes_.fetch_add(body.size(), std::memory_order_relaxed);
    queue_reply(IncomingReply{id, kind, std::move(body), Status()});
  }

  void send_error(uint64_t id, const Status& status) override {
    queue_reply(IncomingReply{id, protocol::ReplyKind::error, {}, status});
  }

  uint64_t unsent_bytes() const override {
    return posted_bytes_.load(std::memory_order_relaxed) + output_bytes_.load(std::memory_order_relaxed);
  }

  void shut_down(const Status& why) override {
    asio::dispatch(stream_.get_executor(), [self = self(), why]() {
      if (self->closing_) return;
      self->cancel_inflight(why);
      self->fail_connection(why);
    });
  }

 private:
  // A reply handed over by another thread (an actor), waiting for the strand.
  struct IncomingReply {
    uint64_t id;
    protocol::ReplyKind kind;  // error: `error` is the reply, `body` is empty
    std::string body;
    Status error;
  };

  std::shared_ptr<Connection> self() { return std::static_pointer_cast<Connection>(shared_from_this()); }

  // Any thread. Replies that arrive while the strand is busy, or together, are taken by one
  // handler and leave in one send(): one hand-over to the strand per burst, not one per reply.
  void queue_reply(IncomingReply reply) {
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(incoming_mutex_);
      first = incoming_.empty();
      incoming_.push_back(std::move(reply));
    }
    if (first) asio::dispatch(stream_.get_executor(), [self = self()] { self->take_replies(); });
  }

  void take_replies() {
    std::vector<IncomingReply> taken;
    {
      std::lock_guard<std::mutex> lock(incoming_mutex_);
      taken.swap(incoming_);
    }
    for (auto& reply : taken) {
      posted_bytes_.fetch_sub(reply.body.size(), std::memory_order_relaxed);
      if (!settle(reply.id, reply.kind != protocol::ReplyKind::more)) continue;
      if (reply.kind == protocol::ReplyKind::error) {
        protocol::append_error(out_pending_, reply.id, reply.error);
      } else {
        protocol::append_reply(out_pending_, reply.id, reply.kind, reply.body);
      }
    }
    after_output();
  }

  const ServerOptions& options() const { return server_->options; }

  auto& socket() { return stream_.lowest_layer(); }

  size_t pending_output() const { return out_pending_.size() + out_writing_.size(); }

  // Reading pauses while too many requests are unanswered or too many reply bytes are unsent:
  // back-pressure reaches the client through TCP instead of through our memory.
  bool paused() const {
    return inflight_.size() >= options().max_inflight || pending_output() > 2ull * options().max_frame_bytes;
  }

  void do_read() {
    if (reading_ || closing_ || paused()) return;
    if (in_.size() - in_end_ < kMinReadSpace) make_room(kMinReadSpace);
    reading_ = true;
    stream_.async_read_some(asio::buffer(in_.data() + in_end_, in_.size() - in_end_),
                            [self = self()](const boost::system::error_code& ec, size_t n) { self->on_read(ec, n); });
  }

  // Makes sure `space` bytes fit after the unread data, moving it to the front or growing.
  void make_room(size_t space) {
    if (in_begin_ > 0) {
      std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
      in_end_ -= in_begin_;
      in_begin_ = 0;
    }
    if (in_.size() - in_end_ < space) in_.resize(in_end_ + space);
  }

  void on_read(const boost::system::error_code& ec, size_t n) {
    reading_ = false;
    if (closing_) return;
    if (ec) {
      if (ec == asio::error::eof || ec == asio::error::connection_reset) {
        spdlog::debug("connection from {} closed by the peer", peer_);
      } else {
        spdlog::info("connection from {} closed: read failed: {}", peer_, ec.message());
      }
      close_now();
      return;
    }
    in_end_ += n;
    process_frames();
    do_read();
  }

  // Handles every complete frame that has been read, then writes all their replies at once.
  void process_frames() {
    if (processing_) return;  // a reply queued by a frame must not re-enter the loop it came from
    processing_ = true;
    process_frames_unguarded();
    processing_ = false;
    start_write();
  }

  void process_frames_unguarded() {
    while (!closing_) {
      size_t available = in_end_ - in_begin_;
      if (available < protocol::kHeaderBytes) break;
      uint32_t length = protocol::read_length(in_.data() + in_begin_);
      if (length > options().max_frame_bytes) {
        fail_connection(Status(Code::frame_too_large, "frame of " + std::to_string(length) +
                                                          " bytes exceeds the limit of " +
                                                          std::to_string(options().max_frame_bytes)));
        return;
      }
      size_t frame_bytes = protocol::kHeaderBytes + length;
      if (available < frame_bytes) {
        if (in_.size() - in_begin_ < frame_bytes) make_room(frame_bytes - (in_end_ - in_begin_));
        break;
      }
      if (paused()) break;
      const char* body = in_.data() + in_begin_ + protocol::kHeaderBytes;
      in_begin_ += frame_bytes;
      ++frames_done_;
      if (length == 0) {
        queue_error(protocol::kConnectionId, Status(Code::bad_frame, "empty frame (length 0)"));
      } else {
        handle_frame(body, length);
      }
    }
    if (in_begin_ == in_end_) in_begin_ = in_end_ = 0;
    if (!authenticated_ || closing_) return;
    if (in_end_ > in_begin_ && !paused()) {
      if (!frame_deadline_armed_) {
        frame_deadline_armed_ = true;
        frames_at_arm_ = frames_done_;
        arm_read_deadline(options().frame_timeout_ms, "");
      }
    } else if (frame_deadline_armed_) {
      frame_deadline_armed_ = false;
      ++read_timer_generation_;
      read_timer_.cancel();
    }
  }

  // One timer serves the handshake deadline and the "a started frame must finish" deadline.
  void arm_read_deadline(uint32_t ms, std::string reason) {
    uint64_t generation = ++read_timer_generation_;
    read_timer_.expires_after(std::chrono::milliseconds(ms));
    read_timer_.async_wait([self = self(), generation, reason = std::move(reason), ms](const boost::system::error_code& ec) {
      if (ec || generation != self->read_timer_generation_ || self->closing_) return;
      if (!self->authenticated_) {
        spdlog::info("connection from {} closed: {}", self->peer_, reason);
        self->fail_connection(Status(Code::unauthenticated, reason));
        return;
      }
      if (self->frames_done_ != self->frames_at_arm_) {  // progress: the pending bytes are a newer frame
        self->frame_deadline_armed_ = false;
        self->process_frames();
        return;
      }
      spdlog::info("connection from {} closed: a frame was not completed within {} ms", self->peer_, ms);
      self->fail_connection(Status(Code::timeout, "frame not completed within " + std::to_string(ms) + " ms"));
    });
  }

  void handle_frame(const char* data, uint32_t length) {
    auto handle = wire::unpack_map(data, length);
    if (!handle.ok()) {
      if (!authenticated_) {
        fail_connection(Status(Code::unauthenticated, "the first frame must be a hello handshake (" +
                                                          handle.status().message() + ")"));
      } else {
        queue_error(protocol::kConnectionId, handle.status());
      }
      return;
    }
    uint64_t id = protocol::kConnectionId;
    auto request = protocol::parse_request(handle->get(), id);
    if (!authenticated_) {
      handle_hello(request);
      return;
    }
    if (!request.ok()) {
      queue_error(id, request.status());
      return;
    }
    std::string_view op = request->op;
    if (id == protocol::kConnectionId) {
      queue_error(id, Status(Code::bad_request, "request id 0 is reserved for the handshake"));
      return;
    }
    // Ping is answered here, on the I/O thread: it measures the protocol path, not an actor.
    if (op == msg::kPing) {
      protocol::append_reply(out_pending_, id, protocol::ReplyKind::ok, {});
      after_output();
      return;
    }
    if (op == protocol::kCancelOp) {
      handle_cancel(id, request->body);
      return;
    }
    if (op == protocol::kHelloOp) {
      queue_error(id, Status(Code::bad_request, "this connection has already completed its handshake"));
      return;
    }
    if (server_->shutting_down.load(std::memory_order_acquire)) {
      queue_error(id, Status(Code::shutting_down, std::string(op) + ": the node is shutting down"));
      return;
    }
    if (inflight_.count(id) != 0) {
      queue_error(id, Status(Code::bad_request, "id " + std::to_string(id) + " is already used by a request in flight"));
      return;
    }
    const msgpack::object* body = request->body;
    auto call = std::make_shared<Call>(id, std::string(op), role_, std::move(handle).value(), body,
                                       std::weak_ptr<ReplySink>(shared_from_this()), client_name_);
    inflight_.emplace(id, call);
    server_->inflight.fetch_add(1, std::memory_order_relaxed);
    server_->dispatcher.dispatch(std::move(call));
  }

  void handle_hello(const Result<protocol::Request>& request) {
    if (!request.ok() || request->op != protocol::kHelloOp) {
      spdlog::info("refused connection from {}: the first frame was not a hello handshake", peer_);
      fail_connection(Status(Code::unauthenticated, "the first frame must be a hello handshake"));
      return;
    }
    auto hello = request->body ? wire::decode<msg::Hello>(*request->body) : wire::decode<msg::Hello>(msgpack::object());
    if (!hello.ok()) {
      fail_connection(hello.status().with_context("hello"));
      return;
    }
    if (hello->version != protocol::kVersion) {
      spdlog::info("refused connection from {}: protocol version {} (client \"{}\")", peer_, hello->version,
                   hello->client);
      fail_connection(Status(Code::unsupported_version, "protocol version " + std::to_string(hello->version) +
                                                            " is not served; this node speaks version " +
                                                            std::to_string(protocol::kVersion)));
      return;
    }
    Role role = server_->tokens.authenticate(hello->token);
    if (role == Role::none) {
      // Never log the token itself.
      spdlog::warn("refused connection from {}: invalid token (client \"{}\")", peer_, hello->client);
      fail_connection(Status(Code::unauthenticated, "invalid token"));
      return;
    }
    authenticated_ = true;
    role_ = role;
    client_name_ = hello->client;
    ++read_timer_generation_;
    read_timer_.cancel();
    msg::Welcome welcome;
    welcome.version = protocol::kVersion;
    welcome.server = std::string("cairn/") + kCairnVersion;
    welcome.node = options().node_name;
    welcome.node_id = options().node_id;
    welcome.role = std::string(role_name(role));
    welcome.max_frame_bytes = options().max_frame_bytes;
    protocol::append_reply(out_pending_, protocol::kConnectionId, protocol::ReplyKind::ok, wire::encode(welcome));
    spdlog::debug("connection from {} authenticated as {} (client \"{}\")", peer_, role_name(role), hello->client);
    after_output();
  }

  void handle_cancel(uint64_t id, const msgpack::object* body) {
    auto cancel = body ? wire::decode<msg::Cancel>(*body) : wire::decode<msg::Cancel>(msgpack::object());
    if (!cancel.ok()) {
      queue_error(id, cancel.status().with_context("cancel"));
      return;
    }
    std::shared_ptr<Call> target;
    if (auto it = inflight_.find(cancel->id); it != inflight_.end()) target = it->second.lock();
    protocol::append_reply(out_pending_, id, protocol::ReplyKind::ok, {});
    if (target) target->cancel(Status(Code::cancelled, target->op() + ": cancelled by the client"));
    after_output();
  }

  // Records that a reply for `id` is going out; false when it must be dropped (the connection is
  // closed, or the request already had its final reply).
  bool settle(uint64_t id, bool final) {
    if (closed_) return false;
    if (id == protocol::kConnectionId) return true;
    auto it = inflight_.find(id);
    if (it == inflight_.end()) return false;
    if (final) {
      inflight_.erase(it);
      server_->inflight.fetch_sub(1, std::memory_order_relaxed);
    }
    return true;
  }

  void queue_error(uint64_t id, const Status& status) {
    protocol::append_error(out_pending_, id, status);
    after_output();
  }

  // After output was queued: write it, enforce the output limit, and resume reading if replies
  // drained below the pause thresholds.
  void after_output() {
    if (closed_) return;
    output_bytes_.store(pending_output(), std::memory_order_relaxed);
    if (pending_output() > options().max_pending_output_bytes) {
      spdlog::warn("connection from {} closed: it does not read its replies ({} bytes unsent)", peer_,
                   pending_output());
      close_now();
      return;
    }
    if (!processing_) start_write();  // else process_frames() writes after the read's last frame
    if (!closing_ && !reading_ && !processing_ && !paused()) {
      process_frames();
      do_read();
    }
  }

  void start_write() {
    if (writing_ || closed_) return;
    if constexpr (std::is_same_v<Stream, tcp::socket>) {
      write_now();
      if (closed_) return;
      output_bytes_.store(pending_output(), std::memory_order_relaxed);
    }
    if (out_pending_.empty()) {
      if (closing_) close_now();
      return;
    }
    out_writing_.swap(out_pending_);
    writing_ = true;
    uint64_t generation = ++write_timer_generation_;
    write_timer_.expires_after(std::chrono::milliseconds(options().write_timeout_ms));
    write_timer_.async_wait([self = self(), generation](const boost::system::error_code& ec) {
      if (ec || generation != self->write_timer_generation_ || self->closed_) return;
      spdlog::warn("connection from {} closed: a write made no progress for {} ms", self->peer_,
                   self->options().write_timeout_ms);
      self->close_now();
    });
    asio::async_write(stream_, asio::buffer(out_writing_),
                      [self = self()](const boost::system::error_code& ec, size_t) { self->on_write(ec); });
  }

  // Plain TCP only: hands the socket what it takes without blocking. A reply that fits the send
  // buffer (nearly all) then costs one send() and no async operation, completion handler or
  // write-deadline timer; what does not fit goes the async way, under the write deadline.
  void write_now() {
    if (out_pending_.empty()) return;
    boost::system::error_code ec;
    size_t n = stream_.write_some(asio::buffer(out_pending_), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return;
    if (ec) {
      spdlog::info("connection from {} closed: write failed: {}", peer_, ec.message());
      close_now();
      return;
    }
    out_pending_.erase(0, n);
  }

  void on_write(const boost::system::error_code& ec) {
    writing_ = false;
    ++write_timer_generation_;
    write_timer_.cancel();
    if (closed_) return;
    if (ec) {
      spdlog::info("connection from {} closed: write failed: {}", peer_, ec.message());
      close_now();
      return;
    }
    out_writing_.clear();
    after_output();
  }

  // Sends `status` as a connection error, stops reading, and closes once the output is flushed.
  void fail_connection(const Status& status) {
    if (closing_) return;
    protocol::append_error(out_pending_, protocol::kConnectionId, status);
    closing_ = true;
    start_write();
  }

  // Ends every request still in flight with `why`. Each cancel answers through settle(), which
  // removes the entry, so the final replies go out while the connection can still write.
  void cancel_inflight(const Status& why) {
    std::vector<std::shared_ptr<Call>> calls;
    for (auto& [id, weak] : inflight_) {
      if (auto call = weak.lock()) calls.push_back(std::move(call));
    }
    for (auto& call : calls) call->cancel(why);
    server_->inflight.fetch_sub(static_cast<int64_t>(inflight_.size()), std::memory_order_relaxed);
    inflight_.clear();
  }

  void close_now() {
    if (closed_) return;
    closing_ = true;
    closed_ = true;  // first: the cancelled calls' replies have nowhere to go now
    cancel_inflight(Status(Code::cancelled, "the connection closed"));
    ++read_timer_generation_;
    ++write_timer_generation_;
    read_timer_.cancel();
    write_timer_.cancel();
    boost::system::error_code ignored;
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
  }

  // Constant after construction.
  const std::shared_ptr<Server> server_;
  const std::string peer_;

  Stream stream_;
  asio::steady_timer read_timer_;
  asio::steady_timer write_timer_;
  uint64_t read_timer_generation_ = 0;
  uint64_t write_timer_generation_ = 0;
  bool frame_deadline_armed_ = false;
  uint64_t frames_done_ = 0;
  uint64_t frames_at_arm_ = 0;

  std::vector<char> in_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  std::string out_pending_;
  std::string out_writing_;
  bool reading_ = false;
  bool writing_ = false;
  bool processing_ = false;  // inside process_frames()
  bool closing_ = false;  // no more requests are read; close once output is flushed
  bool closed_ = false;
  bool authenticated_ = false;
  Role role_ = Role::none;
  std::string client_name_;  // from the hello, for Call::client_name
  std::unordered_map<uint64_t, std::weak_ptr<Call>> inflight_;

  std::mutex incoming_mutex_;  // guards incoming_; locked by any thread that replies
  std::vector<IncomingReply> incoming_;
  // Read from any thread (unsent_bytes): reply bytes handed to send_reply but not yet queued on the
  // strand, and a copy of pending_output() as of the last output change.
  std::atomic<uint64_t> posted_bytes_{0};
  std::atomic<uint64_t> output_bytes_{0};
};

}  // namespace

template <class Stream, class... Args>
void ProtocolServer::Impl::adopt(tcp::socket socket, Args&&... args) {
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  std::optional<Status> reject;
  size_t count = connections.fetch_add(1, std::memory_order_relaxed) + 1;
  if (count > options.max_connections) {
    spdlog::warn("refused connection from {}: {} connections is the limit", peer_name(socket),
                 options.max_connections);
    reject = Status(Code::overloaded, "the node has reached its connection limit (" +
                                          std::to_string(options.max_connections) + ")");
  }
  auto connection = std::make_shared<Connection<Stream>>(shared_from_this(), std::move(socket), std::forward<Args>(args)...);
  track(connection);
  connection->start(reject);
}

void ProtocolServer::Impl::track(const std::shared_ptr<ConnectionBase>& connection) {
  std::lock_guard<std::mutex> lock(live_mutex);
  if (live.size() >= 64 && live.size() % 64 == 0) {
    live.erase(std::remove_if(live.begin(), live.end(), [](auto& w) { return w.expired(); }), live.end());
  }
  live.push_back(connection);
}

void ProtocolServer::Impl::accept_next() {
  acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](const boost::system::error_code& ec,
                                                                          tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
    if (ec) {
      spdlog::warn("accept failed: {}", ec.message());
    } else if (self->shutting_down.load()) {
      boost::system::error_code ignored;
      socket.close(ignored);
    } else if (self->ssl) {
      self->adopt<asio::ssl::stream<tcp::socket>>(std::move(socket), *self->ssl);
    } else {
      self->adopt<tcp::socket>(std::move(socket));
    }
    self->accept_next();
  });
}

ServerOptions ServerOptions::from_config(const NodeConfig& config) {
  ServerOptions options;
  options.listen = config.listen;
  options.max_frame_bytes = config.max_frame_bytes;
  options.max_inflight = config.max_inflight;
  options.max_pending_output_bytes = config.max_pending_output_bytes;
  options.max_connections = config.max_connections;
  options.handshake_timeout_ms = config.handshake_timeout_ms;
  options.frame_timeout_ms = config.frame_timeout_ms;
  options.write_timeout_ms = config.write_timeout_ms;
  options.tls_cert_file = config.tls_cert_file;
  options.tls_key_file = config.tls_key_file;
  options.node_name = config.name;
  return options;
}

Result<tcp::endpoint> detail::resolve_endpoint(asio::io_context& io, const HostPort& address) {
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  auto results = resolver.resolve(address.host, std::to_string(address.port),
                                  tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Status(Code::invalid_argument, "cannot resolve \"" + address.host + "\": " + ec.message());
  }
  return results.begin()->endpoint();
}

Result<HostPort> detail::listen_on(tcp::acceptor& acceptor, asio::io_context& io, const HostPort& address,
                                   const std::string& setting) {
  auto endpoint = resolve_endpoint(io, address);
  if (!endpoint.ok()) return endpoint.status().with_context(setting);
  boost::system::error_code ec;
  auto fail = [&](const char* what) {
    return Status(Code::io_error,
                  setting + ": cannot " + std::string(what) + " " + address.to_string() + ": " + ec.message());
  };
  acceptor.open(endpoint->protocol(), ec);
  if (ec) return fail("open");
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  acceptor.bind(*endpoint, ec);
  if (ec) return fail("bind");
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen on");
  auto local = acceptor.local_endpoint(ec);
  if (ec) return fail("read the address of");
  return HostPort{local.address().to_string(), local.port()};
}

Result<std::unique_ptr<ProtocolServer>> ProtocolServer::start(asio::io_context& io, const ServerOptions& options,
                                                              const TokenStore& tokens, Dispatcher& dispatcher) {
  auto impl = std::make_shared<Impl>(io, options, tokens, dispatcher);
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                     asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
    boost::system::error_code ec;
    ctx->use_certificate_chain_file(options.tls_cert_file, ec);
    if (ec) return Status(Code::invalid_argument, "tls.cert_file " + options.tls_cert_file + ": " + ec.message());
    ctx->use_private_key_file(options.tls_key_file, asio::ssl::context::pem, ec);
    if (ec) return Status(Code::invalid_argument, "tls.key_file " + options.tls_key_file + ": " + ec.message());
    impl->ssl = std::move(ctx);
  }
  auto bound = detail::listen_on(impl->acceptor, io, options.listen, "node.listen");
  if (!bound.ok()) return bound.status();
  impl->bound = *bound;
  impl->accept_next();
  return std::unique_ptr<ProtocolServer>(new ProtocolServer(std::move(impl)));
}

ProtocolServer::ProtocolServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

ProtocolServer::~ProtocolServer() {
  begin_shutdown();
  close_all();
}

HostPort ProtocolServer::bound() const { return impl_->bound; }
bool ProtocolServer::tls() const { return impl_->ssl != nullptr; }
size_t ProtocolServer::connection_count() const { return impl_->connections.load(); }
size_t ProtocolServer::inflight() const {
  auto n = impl_->inflight.load();
  return n > 0 ? static_cast<size_t>(n) : 0;
}

void ProtocolServer::begin_shutdown() {
  if (impl_->shutting_down.exchange(true)) return;
  asio::post(impl_->io, [impl = impl_]() {
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
  });
}

void ProtocolServer::close_all() {
  std::vector<std::weak_ptr<ConnectionBase>> live;
  {
    std::lock_guard<std::mutex> lock(impl_->live_mutex);
    live.swap(impl_->live);
  }
  const Status why(Code::shutting_down, "the node is shutting down");
  for (auto& weak : live) {
    if (auto connection = weak.lock()) connection->shut_down(why);
  }
}

}  // namespace cairn
