#include "cairn/client.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

#include "runtime/config.h"
#include "runtime/protocol.h"

namespace cairn {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// Deadlines are checked this often; a call times out at most this much late.
constexpr std::chrono::milliseconds kSweepInterval{20};
constexpr size_t kMinReadSpace = 16 * 1024;

std::string body_bytes(const msgpack::object* body) { return body ? wire::encode_object(*body) : std::string(); }

class SubscriptionImpl;

}  // namespace

ClientOptions ClientOptions::from_env() {
  ClientOptions options;
  if (const char* addr = std::getenv("CAIRN_ADDR"); addr && *addr) options.address = addr;
  if (const char* token = std::getenv("CAIRN_TOKEN"); token && *token) options.token = token;
  return options;
}

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  struct Pending {
    ReplyCallback done;                            // plain calls
    ItemCallback on_item;                          // streams
    std::function<void(const Status&)> on_end;     // streams
    Clock::time_point deadline = Clock::time_point::max();
    std::string op;
    bool sent = false;  // written to a connection (its outcome is unknown if that connection drops)

    static Pending for_call(ReplyCallback done) {
      Pending p;
      p.done = std::move(done);
      return p;
    }
  };
  struct Outgoing {
    uint64_t id;
    std::string frame;
    Pending pending;
  };
  enum class State { connecting, connected, disconnected, closed };

  explicit Impl(ClientOptions opts) : options(std::move(opts)), read_buffer(64 * 1024), connect_timer(io),
                                       reconnect_timer(io), sweep_timer(io) {}

  // ---- any thread ----

  void submit(std::string_view op, std::string body, Pending pending, std::optional<std::chrono::milliseconds> timeout,
              uint64_t id) {
    if (!pending.on_item) pending.deadline = Clock::now() + timeout.value_or(options.call_timeout);
    pending.op = std::string(op);
    Outgoing out{id, {}, std::move(pending)};
    protocol::append_request(out.frame, id, op, body);
    bool first = false;
    bool closed = false;
    {
      std::lock_guard<std::mutex> lock(outbox_mutex);
      closed = closed_flag;
      if (!closed) {
        first = outbox.empty();
        outbox.push_back(std::move(out));
      }
    }
    if (closed) {
      fail(out.pending, Status(Code::cancelled, std::string(op) + ": the client is closed"));
      return;
    }
    // Calls made in a burst share one wake-up of the I/O thread and one write.
    if (first) asio::post(io, [this] { flush_outbox(); });
  }

  uint64_t next_id() { return id_counter.fetch_add(1, std::memory_order_relaxed); }

  static void fail(Pending& p, const Status& status) {
    if (p.done) p.done(status);
    if (p.on_end) p.on_end(status);
  }

  // ---- I/O thread ----

  void flush_outbox() {
    std::vector<Outgoing> batch;
    {
      std::lock_guard<std::mutex> lock(outbox_mutex);
      batch.swap(outbox);
    }
    for (auto& out : batch) {
      if (state == State::closed) {
        fail(out.pending, Status(Code::cancelled, out.pending.op + ": the client is closed"));
        continue;
      }
      if (state == State::connected) {
        out_pending += out.frame;
        out.pending.sent = true;
      } else {
        unsent.emplace_back(out.id, std::move(out.frame));
      }
      pending.emplace(out.id, std::move(out.pending));
    }
    arm_sweep();
    start_write();
  }

  void start_connect() {
    state = State::connecting;
    uint64_t gen = ++generation;
    auto address = parse_host_port(options.address);
    if (!address.ok()) {
      connection_failed(address.status().with_context("address"), gen);
      return;
    }
    host = address->host;
    plain = std::make_unique<tcp::socket>(io);
    tls.reset();
    connect_timer.expires_after(options.connect_timeout);
    connect_timer.async_wait([this, gen](const boost::system::error_code& ec) {
      if (ec || gen != generation || state != State::connecting) return;
      connection_failed(Status(Code::unavailable, "no handshake with " + options.address + " within " +
                                                      std::to_string(options.connect_timeout.count()) + " ms"),
                        gen);
    });
    auto resolver = std::make_shared<tcp::resolver>(io);
    resolver->async_resolve(address->host, std::to_string(address->port),
                            [this, gen, resolver](const boost::system::error_code& ec, tcp::resolver::results_type results) {
                              if (gen != generation) return;
                              if (ec) return connection_failed(Status(Code::unavailable, "cannot resolve " + options.address + ": " + ec.message()), gen);
                              asio::async_connect(*plain, results, [this, gen](const boost::system::error_code& ec, const tcp::endpoint&) {
                                if (gen != generation) return;
                                if (ec) return connection_failed(Status(Code::unavailable, "cannot connect to " + options.address + ": " + ec.message()), gen);
                                plain->set_option(tcp::no_delay(true));
                                if (options.tls) {
                                  start_tls(gen);
                                } else {
                                  send_hello(gen);
                                }
                              });
                            });
  }

  void start_tls(uint64_t gen) {
    if (!ssl_context) {
      ssl_context = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
      boost::system::error_code ec;
      if (!options.tls_ca_file.empty()) {
        ssl_context->load_verify_file(options.tls_ca_file, ec);
        if (ec) return connection_failed(Status(Code::invalid_argument, "tls CA file " + options.tls_ca_file + ": " + ec.message()), gen);
      } else {
        ssl_context->set_default_verify_paths(ec);
      }
      ssl_context->set_verify_mode(options.tls_verify ? asio::ssl::verify_peer : asio::ssl::verify_none);
    }
    tls = std::make_unique<asio::ssl::stream<tcp::socket>>(std::move(*plain), *ssl_context);
    plain.reset();
    if (options.tls_verify) tls->set_verify_callback(asio::ssl::host_name_verification(host));
    SSL_set_tlsext_host_name(tls->native_handle(), host.c_str());
    tls->async_handshake(asio::ssl::stream_base::client, [this, gen](const boost::system::error_code& ec) {
      if (gen != generation) return;
      if (ec) return connection_failed(Status(Code::unavailable, "TLS handshake with " + options.address + " failed: " + ec.message()), gen);
      send_hello(gen);
    });
  }

  void send_hello(uint64_t gen) {
    msg::Hello hello;
    hello.version = protocol::kVersion;
    hello.token = options.token;
    hello.client = options.client_name;
    out_pending.clear();
    out_writing.clear();
    writing = false;
    in_begin = in_end = 0;
    protocol::append_request(out_pending, protocol::kConnectionId, protocol::kHelloOp, wire::encode(hello));
    start_write();
    do_read(gen);
  }

  template <class F>
  void with_stream(F&& f) {
    if (tls) {
      f(*tls);
    } else if (plain) {
      f(*plain);
    }
  }

  void start_write() {
    if (writing || out_pending.empty() || !(plain || tls)) return;
    if (state != State::connected && state != State::connecting) return;
    out_writing.swap(out_pending);
    out_pending.clear();
    writing = true;
    uint64_t gen = generation;
    with_stream([&](auto& stream) {
      asio::async_write(stream, asio::buffer(out_writing), [this, gen](const boost::system::error_code& ec, size_t) {
        if (gen != generation) return;
        writing = false;
        out_writing.clear();
        if (ec) return connection_lost(Status(Code::unavailable, "write to " + options.address + " failed: " + ec.message()));
        start_write();
      });
    });
  }

  void do_read(uint64_t gen) {
    if (read_buffer.size() - in_end < kMinReadSpace) make_room(kMinReadSpace);
    with_stream([&](auto& stream) {
      stream.async_read_some(asio::buffer(read_buffer.data() + in_end, read_buffer.size() - in_end),
                             [this, gen](const boost::system::error_code& ec, size_t n) {
                               if (gen != generation) return;
                               if (ec) {
                                 Status why = last_connection_error.ok()
                                                  ? Status(Code::unavailable, "connection to " + options.address + " lost: " + ec.message())
                                                  : last_connection_error;
                                 if (state == State::connecting) return connection_failed(why, gen);
                                 return connection_lost(why);
                               }
                               in_end += n;
                               if (!process_frames(gen)) return;
                               do_read(gen);
                             });
    });
  }

  void make_room(size_t space) {
    if (in_begin > 0) {
      std::memmove(read_buffer.data(), read_buffer.data() + in_begin, in_end - in_begin);
      in_end -= in_begin;
      in_begin = 0;
    }
    if (read_buffer.size() - in_end < space) read_buffer.resize(in_end + space);
  }

  // Returns false when the connection was dropped while processing.
  bool process_frames(uint64_t gen) {
    while (gen == generation) {
      size_t available = in_end - in_begin;
      if (available < protocol::kHeaderBytes) break;
      uint32_t length = protocol::read_length(read_buffer.data() + in_begin);
      if (length > max_frame_bytes) {
        connection_lost(Status(Code::frame_too_large, "the node sent a frame of " + std::to_string(length) + " bytes"));
        return false;
      }
      size_t frame = protocol::kHeaderBytes + length;
      if (available < frame) {
        if (read_buffer.size() - in_begin < frame) make_room(frame - available);
        break;
      }
      const char* body = read_buffer.data() + in_begin + protocol::kHeaderBytes;
      in_begin += frame;
      auto handle = wire::unpack_map(body, length);
      if (!handle.ok()) {
        connection_lost(handle.status().with_context("reply from " + options.address));
        return false;
      }
      auto reply = protocol::parse_reply(handle->get());
      if (!reply.ok()) {
        connection_lost(reply.status().with_context("reply from " + options.address));
        return false;
      }
      handle_reply(*reply);
    }
    if (in_begin == in_end) in_begin = in_end = 0;
    return gen == generation;
  }

  void handle_reply(const protocol::Reply& reply) {
    if (reply.id == protocol::kConnectionId) {
      if (state == State::connecting) {
        if (reply.kind == protocol::ReplyKind::error) {
          return connection_failed(reply.error, generation);
        }
        auto w = reply.body ? wire::decode<msg::Welcome>(*reply.body) : wire::decode<msg::Welcome>(msgpack::object());
        if (!w.ok()) return connection_failed(w.status().with_context("handshake reply"), generation);
        connected(*w);
      } else if (reply.kind == protocol::ReplyKind::error) {
        last_connection_error = reply.error;  // the node closes after a connection-level error
      }
      return;
    }
    auto it = pending.find(reply.id);
    if (it == pending.end()) return;  // timed out or cancelled locally
    Pending& p = it->second;
    if (reply.kind == protocol::ReplyKind::more) {
      if (p.on_item) p.on_item(body_bytes(reply.body));
      return;
    }
    Pending done = std::move(p);
    pending.erase(it);
    if (reply.kind == protocol::ReplyKind::error) {
      fail(done, reply.error);
    } else {
      if (done.done) done.done(body_bytes(reply.body));
      if (done.on_end) done.on_end(Status());
    }
  }

  void connected(const msg::Welcome& w) {
    connect_timer.cancel();
    {
      std::lock_guard<std::mutex> lock(welcome_mutex);
      welcome = w;
    }
    max_frame_bytes = w.max_frame_bytes > 0 ? w.max_frame_bytes : max_frame_bytes;
    state = State::connected;
    is_connected.store(true);
    last_connection_error = Status();
    backoff = options.reconnect_initial;
    for (auto& [id, frame] : unsent) {
      auto it = pending.find(id);
      if (it == pending.end()) continue;  // timed out while disconnected: it must never run late
      out_pending += frame;
      it->second.sent = true;
    }
    unsent.clear();
    start_write();
    resolve_first_connect(Status());
  }

  void close_socket() {
    boost::system::error_code ignored;
    if (tls) {
      tls->lowest_layer().close(ignored);
    }
    if (plain) plain->close(ignored);
  }

  // The connection attempt failed (before the handshake completed).
  void connection_failed(const Status& why, uint64_t gen) {
    if (gen != generation) return;
    ++generation;
    connect_timer.cancel();
    close_socket();
    writing = false;
    if (!first_connect_done) {
      state = State::closed;
      resolve_first_connect(why);
      return;
    }
    bool fatal = why.code() == Code::unauthenticated || why.code() == Code::unsupported_version ||
                 why.code() == Code::invalid_argument;
    if (fatal || !options.reconnect) {
      state = State::closed;
      fail_all(why);
      return;
    }
    schedule_reconnect();
  }

  // An established connection dropped: requests already sent on it have an unknown outcome and
  // fail; requests not yet sent wait for the next connection.
  void connection_lost(const Status& why) {
    ++generation;
    close_socket();
    is_connected.store(false);
    writing = false;
    out_pending.clear();
    out_writing.clear();
    for (auto it = pending.begin(); it != pending.end();) {
      if (it->second.sent) {
        Pending p = std::move(it->second);
        it = pending.erase(it);
        fail(p, why);
      } else {
        ++it;
      }
    }
    if (state == State::closed) return;
    if (!options.reconnect) {
      state = State::closed;
      fail_all(why);
      return;
    }
    schedule_reconnect();
  }

  void schedule_reconnect() {
    state = State::disconnected;
    reconnect_timer.expires_after(backoff);
    backoff = std::min(backoff * 2, options.reconnect_max);
    reconnect_timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec || state != State::disconnected) return;
      start_connect();
    });
  }

  void fail_all(const Status& why) {
    auto all = std::move(pending);
    pending.clear();
    unsent.clear();
    for (auto& [id, p] : all) fail(p, why);
  }

  void arm_sweep() {
    if (sweeping || pending.empty()) return;
    sweeping = true;
    sweep_timer.expires_after(kSweepInterval);
    sweep_timer.async_wait([this](const boost::system::error_code& ec) {
      sweeping = false;
      if (ec || state == State::closed) return;
      auto now = Clock::now();
      std::vector<std::pair<uint64_t, Pending>> expired;
      for (auto it = pending.begin(); it != pending.end();) {
        if (it->second.deadline <= now) {
          expired.emplace_back(it->first, std::move(it->second));
          it = pending.erase(it);
        } else {
          ++it;
        }
      }
      if (!expired.empty() && !unsent.empty()) {
        unsent.erase(std::remove_if(unsent.begin(), unsent.end(),
                                    [this](const auto& entry) { return pending.count(entry.first) == 0; }),
                     unsent.end());
      }
      for (auto& [id, p] : expired) fail(p, Status(Code::timeout, p.op + ": no reply within the deadline"));
      arm_sweep();
    });
  }

  void resolve_first_connect(const Status& status) {
    if (first_connect_done) return;
    first_connect_done = true;
    first_connect.set_value(status);
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(outbox_mutex);
      if (closed_flag) return;
      closed_flag = true;
    }
    asio::post(io, [this] {
      state = State::closed;
      is_connected.store(false);
      ++generation;
      close_socket();
      connect_timer.cancel();
      reconnect_timer.cancel();
      sweep_timer.cancel();
      flush_outbox();
      fail_all(Status(Code::cancelled, "the client is closed"));
      work.reset();
    });
    if (thread.joinable() && std::this_thread::get_id() != thread.get_id()) thread.join();
  }

  // Constant after construction.
  const ClientOptions options;

  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;
  std::atomic<uint64_t> id_counter{1};
  std::atomic<bool> is_connected{false};

  std::mutex outbox_mutex;  // guards outbox and closed_flag
  std::vector<Outgoing> outbox;
  bool closed_flag = false;

  mutable std::mutex welcome_mutex;  // guards welcome
  msg::Welcome welcome;

  std::promise<Status> first_connect;

  // Only touched on the I/O thread.
  State state = State::connecting;
  uint64_t generation = 0;  // bumped per connection attempt; stale handlers compare and return
  std::string host;
  std::unique_ptr<asio::ssl::context> ssl_context;
  std::unique_ptr<tcp::socket> plain;
  std::unique_ptr<asio::ssl::stream<tcp::socket>> tls;
  std::vector<char> read_buffer;
  size_t in_begin = 0;
  size_t in_end = 0;
  std::string out_pending;
  std::string out_writing;
  bool writing = false;
  uint64_t max_frame_bytes = 1ull << 30;
  std::unordered_map<uint64_t, Pending> pending;
  std::deque<std::pair<uint64_t, std::string>> unsent;
  Status last_connection_error;
  bool first_connect_done = false;
  std::chrono::milliseconds backoff{100};
  asio::steady_timer connect_timer;
  asio::steady_timer reconnect_timer;
  asio::steady_timer sweep_timer;
  bool sweeping = false;
};

namespace {

class SubscriptionImpl final : public Subscription {
 public:
  SubscriptionImpl(std::weak_ptr<Client::Impl> client, uint64_t id) : client_(std::move(client)), id_(id) {}

  void cancel() override {
    auto client = client_.lock();
    if (!client) return;
    msg::Cancel request{id_};
    client->submit(protocol::kCancelOp, wire::encode(request), Client::Impl::Pending::for_call([](Result<std::string>) {}),
                   std::nullopt, client->next_id());
  }

  Status wait(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [this] { return end_.has_value(); })) {
      return Status(Code::timeout, "the stream is still running");
    }
    return *end_;
  }

  void finish(const Status& status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      end_ = status;
    }
    cv_.notify_all();
  }

 private:
  std::weak_ptr<Client::Impl> client_;
  const uint64_t id_;
  std::mutex mutex_;  // guards end_
  std::condition_variable cv_;
  std::optional<Status> end_;
};

}  // namespace

Result<std::unique_ptr<Client>> Client::connect(const ClientOptions& options) {
  auto impl = std::make_shared<Impl>(options);
  impl->backoff = options.reconnect_initial;
  impl->work.emplace(impl->io.get_executor());
  auto connected = impl->first_connect.get_future();
  impl->thread = std::thread([raw = impl.get()] { raw->io.run(); });
  asio::post(impl->io, [raw = impl.get()] { raw->start_connect(); });
  Status status = connected.get();
  std::unique_ptr<Client> client(new Client(std::move(impl)));
  if (!status.ok()) return status;
  return client;
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() { close(); }

void Client::close() { impl_->shutdown(); }

bool Client::connected() const { return impl_->is_connected.load(); }

const std::string& Client::address() const { return impl_->options.address; }

msg::Welcome Client::welcome() const {
  std::lock_guard<std::mutex> lock(impl_->welcome_mutex);
  return impl_->welcome;
}

void Client::call_async(std::string_view op, std::string body, ReplyCallback done,
                        std::optional<std::chrono::milliseconds> timeout) {
  impl_->submit(op, std::move(body), Impl::Pending::for_call(std::move(done)), timeout, impl_->next_id());
}

std::future<Result<std::string>> Client::call_future(std::string_view op, std::string body,
                                                     std::optional<std::chrono::milliseconds> timeout) {
  auto promise = std::make_shared<std::promise<Result<std::string>>>();
  auto future = promise->get_future();
  call_async(op, std::move(body), [promise](Result<std::string> r) { promise->set_value(std::move(r)); }, timeout);
  return future;
}

Result<std::string> Client::call(std::string_view op, std::string body, std::optional<std::chrono::milliseconds> timeout) {
  // Lighter than a promise and future: one allocation, and no shared-state bookkeeping on the
  // round trip that every blocking call pays.
  struct Waiter {
    std::mutex mutex;  // guards result
    std::condition_variable cv;
    std::optional<Result<std::string>> result;
  };
  auto waiter = std::make_shared<Waiter>();
  call_async(op, std::move(body),
             [waiter](Result<std::string> r) {
               std::lock_guard<std::mutex> lock(waiter->mutex);
               waiter->result.emplace(std::move(r));
               waiter->cv.notify_one();
             },
             timeout);
  std::unique_lock<std::mutex> lock(waiter->mutex);
  waiter->cv.wait(lock, [&] { return waiter->result.has_value(); });
  return std::move(*waiter->result);
}

std::shared_ptr<Subscription> Client::subscribe(std::string_view op, std::string body, ItemCallback on_item,
                                                std::function<void(const Status&)> on_end) {
  uint64_t id = impl_->next_id();
  auto subscription = std::make_shared<SubscriptionImpl>(impl_, id);
  Impl::Pending p;
  p.on_item = on_item ? std::move(on_item) : [](const std::string&) {};
  p.on_end = [subscription, on_end = std::move(on_end)](const Status& status) {
    if (on_end) on_end(status);
    subscription->finish(status);
  };
  impl_->submit(op, std::move(body), std::move(p), std::nullopt, id);
  return subscription;
}

Result<std::chrono::nanoseconds> Client::ping(std::optional<std::chrono::milliseconds> timeout) {
  auto start = Clock::now();
  auto reply = call(msg::kPing, {}, timeout);
  if (!reply.ok()) return reply.status();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start);
}

}  // namespace cairn
