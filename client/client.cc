#include "cairn/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
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

// The first frame of a byte run: its size (length prefix included) and whether all of it is there.
// Size 0 while even the prefix is incomplete.
struct FrameSpan {
  size_t size = 0;
  bool complete = false;
};

// Fails with frame_too_large when the frame's length prefix exceeds max_frame_bytes.
Result<FrameSpan> first_frame(const char* data, size_t available, uint64_t max_frame_bytes) {
  if (available < protocol::kHeaderBytes) return FrameSpan{};
  uint32_t length = protocol::read_length(data);
  if (length > max_frame_bytes) {
    return Status(Code::frame_too_large, "the node sent a frame of " + std::to_string(length) + " bytes");
  }
  size_t size = protocol::kHeaderBytes + length;
  return FrameSpan{size, available >= size};
}

// Decodes the reply in the complete frame at `frame` and hands it to `use` while its body is alive.
template <class Use>
Status with_reply(const char* frame, size_t size, Use&& use) {
  auto handle = wire::unpack_map(frame + protocol::kHeaderBytes, size - protocol::kHeaderBytes);
  if (!handle.ok()) return handle.status();
  auto reply = protocol::parse_reply(handle->get());
  if (!reply.ok()) return reply.status();
  use(*reply);
  return Status();
}

// Waits until `fd` reports one of `events` or `deadline` passes; false on timeout. An error or a
// hang-up counts as ready: the send() or recv() that follows reports it.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  while (true) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd watched{fd, events, 0};
    int ready = ::poll(&watched, 1, static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX)));
    if (ready > 0) return true;
    if (ready == 0 && Clock::now() >= deadline) return false;
    if (ready < 0 && errno != EINTR) return true;
  }
}

std::string errno_message(int error) { return boost::system::error_code(error, boost::system::system_category()).message(); }

// A blocking caller's own handle on a plain-TCP connection: a duplicate of the socket's descriptor.
// The I/O thread may close its socket while a caller still waits on this one: it shuts the
// connection down first, so the caller sees the end of the stream, never a reused descriptor.
class DirectChannel {
 public:
  DirectChannel(int fd, uint64_t generation, uint64_t max_frame_bytes)
      : fd_(fd), generation_(generation), max_frame_bytes_(max_frame_bytes) {}
  ~DirectChannel() { ::close(fd_); }
  DirectChannel(const DirectChannel&) = delete;
  DirectChannel& operator=(const DirectChannel&) = delete;

  int fd() const { return fd_; }
  uint64_t generation() const { return generation_; }  // the connection attempt it belongs to
  uint64_t max_frame_bytes() const { return max_frame_bytes_; }

 private:
  const int fd_;
  const uint64_t generation_;
  const uint64_t max_frame_bytes_;
};

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
      std::lock_guard<std::mutex> lock(mutex);
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

  static Status timed_out(std::string_view op) {
    return Status(Code::timeout, std::string(op) + ": no reply within the deadline");
  }

  // ---- the direct path: a blocking call on an idle plain-TCP connection ----
  //
  // Through the I/O thread a blocking call costs two thread hand-offs (the caller wakes the I/O
  // thread to write, the I/O thread wakes the caller with the reply). When nothing else is in
  // flight, the caller instead takes the socket (take_socket), writes its frame and reads its reply
  // itself (call_direct), and gives the socket back. While a caller owns the socket the I/O thread
  // neither reads nor writes it: what other threads submit meanwhile waits in out_pending, and
  // whatever the caller reads that is not its reply is handed back to the I/O thread in order.

  // Gives the calling thread the socket, or null when the call must go through the I/O thread
  // (TLS, not connected, closed, another caller owns it, or anything in flight or queued).
  std::shared_ptr<const DirectChannel> take_socket() {
    std::lock_guard<std::mutex> lock(mutex);
    if (closed_flag || !direct || caller_owned || !io_idle || !outbox.empty() || !handover_in.empty() ||
        !handover_out.empty()) {
      return nullptr;
    }
    caller_owned = true;
    io_missed = false;
    return direct;
  }

  // One call on a socket from take_socket(); gives the socket back before returning. Fails like the
  // I/O thread's path: `timeout`, `unavailable` when the connection drops (the I/O thread then
  // notices and reconnects), `cancelled` when the client was closed, or the node's error.
  Result<std::string> call_direct(const DirectChannel& channel, std::string_view op, std::string_view body,
                                  Clock::time_point deadline) {
    const int fd = channel.fd();
    direct_out.clear();
    const uint64_t id = next_id();
    protocol::append_request(direct_out, id, op, body);
    std::optional<Result<std::string>> result;
    Status lost;  // set when the connection failed
    size_t written = 0;
    while (written < direct_out.size() && lost.ok() && !result) {
      ssize_t n = ::send(fd, direct_out.data() + written, direct_out.size() - written, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        written += static_cast<size_t>(n);
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_ready(fd, POLLOUT, deadline)) result = timed_out(op);
      } else if (errno != EINTR) {
        lost = Status(Code::unavailable, "write to " + options.address + " failed: " + errno_message(errno));
      }
    }

    // Reads until the reply to `id` is complete. Frames that are not ours (a late reply to a call
    // that timed out, a connection-level error) and bytes after our reply go to the I/O thread.
    std::string others;
    Status connection_error;  // a connection-level error the node sent before closing
    size_t begin = 0;
    size_t end = 0;
    while (!result && lost.ok()) {
      auto frame = first_frame(direct_in.data() + begin, end - begin, channel.max_frame_bytes());
      if (!frame.ok()) {
        lost = frame.status();  // the I/O thread finds the same and drops the connection
        break;
      }
      if (frame->complete) {
        Status parsed = with_reply(direct_in.data() + begin, frame->size, [&](const protocol::Reply& reply) {
          if (reply.id != id) {
            others.append(direct_in.data() + begin, frame->size);
            if (reply.id == protocol::kConnectionId && reply.kind == protocol::ReplyKind::error) {
              connection_error = reply.error;
            }
          } else if (reply.kind == protocol::ReplyKind::error) {
            result = reply.error;
          } else if (reply.kind == protocol::ReplyKind::ok) {
            result = body_bytes(reply.body);
          }
        });
        if (!parsed.ok()) {
          lost = parsed.with_context("reply from " + options.address);
          break;
        }
        begin += frame->size;
        continue;
      }
      // Room for the whole of this frame, and for at least kMinReadSpace more bytes.
      if (begin > 0) {
        std::memmove(direct_in.data(), direct_in.data() + begin, end - begin);
        end -= begin;
        begin = 0;
      }
      direct_in.resize(std::max({direct_in.size(), end + kMinReadSpace, frame->size}));
      if (!wait_ready(fd, POLLIN, deadline)) {
        result = timed_out(op);
        break;
      }
      ssize_t n = ::recv(fd, direct_in.data() + end, direct_in.size() - end, MSG_DONTWAIT);
      if (n > 0) {
        end += static_cast<size_t>(n);
      } else if (n == 0) {
        lost = connection_error.ok() ? Status(Code::unavailable, "connection to " + options.address + " lost: " +
                                                                     boost::system::error_code(asio::error::eof).message())
                                     : connection_error;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        lost = connection_error.ok()
                   ? Status(Code::unavailable, "connection to " + options.address + " lost: " + errno_message(errno))
                   : connection_error;
      }
    }
    others.append(direct_in.data() + begin, end - begin);

    // Gives the socket back, and wakes the I/O thread only when something is left for it.
    bool wake = false;
    bool closed = false;
    {
      std::lock_guard<std::mutex> lock(mutex);
      caller_owned = false;
      closed = closed_flag;
      handover_in += others;
      if (lost.ok() && written > 0 && written < direct_out.size()) {
        handover_out.assign(direct_out, written, std::string::npos);  // a timed-out write: finish the frame
      }
      // The I/O thread ignored the socket while we owned it: whatever arrived after our last read
      // (checked under the lock, so anything later wakes the I/O thread again) is its to read.
      pollfd watched{fd, POLLIN, 0};
      bool readable = lost.ok() && io_missed && ::poll(&watched, 1, 0) > 0;
      wake = io_deferred || readable || !lost.ok() || !handover_in.empty() || !handover_out.empty();
      if (wake) io_idle = false;
      io_deferred = false;
      io_missed = false;
    }
    if (wake) asio::post(io, [this, gen = channel.generation()] { resume_after_caller(gen); });
    if (!lost.ok()) return closed ? Status(Code::cancelled, "the client is closed") : lost;
    return std::move(*result);
  }

  static void fail(Pending& p, const Status& status) {
    if (p.done) p.done(status);
    if (p.on_end) p.on_end(status);
  }

  // ---- I/O thread ----

  void flush_outbox() {
    std::vector<Outgoing> batch;
    {
      std::lock_guard<std::mutex> lock(mutex);
      batch.swap(outbox);
      if (!batch.empty()) io_idle = false;  // before a blocking caller could see the outbox empty
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
    watching = false;
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
                                boost::system::error_code option_error;
                                plain->set_option(tcp::no_delay(true), option_error);
                                if (!option_error && !options.tls) plain->non_blocking(true, option_error);
                                if (option_error) return connection_failed(Status(Code::unavailable, "cannot set up the socket to " + options.address + ": " + option_error.message()), gen);
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
    if (writing || !(plain || tls)) return;
    if (state != State::connected && state != State::connecting) return;
    uint64_t gen = generation;
    if (plain) {
      std::lock_guard<std::mutex> lock(mutex);
      if (caller_owned) {  // a blocking caller is writing: our frames go after its own
        if (!out_pending.empty()) io_deferred = true;
        return;
      }
      if (!handover_out.empty()) {
        out_pending.insert(0, handover_out);  // the rest of a caller's frame goes first
        handover_out.clear();
      }
    }
    if (out_pending.empty()) return;
    if (plain) {
      // Hands the socket what it takes without blocking: a small batch then costs one send() and
      // no completion handler, and the connection is idle again at once.
      boost::system::error_code ec;
      size_t n = plain->write_some(asio::buffer(out_pending), ec);
      if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
        return connection_lost(Status(Code::unavailable, "write to " + options.address + " failed: " + ec.message()));
      }
      out_pending.erase(0, n);
      if (out_pending.empty()) return;
    }
    out_writing.swap(out_pending);
    out_pending.clear();
    writing = true;
    with_stream([&](auto& stream) {
      asio::async_write(stream, asio::buffer(out_writing), [this, gen](const boost::system::error_code& ec, size_t) {
        if (gen != generation) return;
        writing = false;
        out_writing.clear();
        if (ec) return connection_lost(Status(Code::unavailable, "write to " + options.address + " failed: " + ec.message()));
        start_write();
        publish_idle();
      });
    });
  }

  // Starts reading the connection of attempt `gen`: TLS reads asynchronously; plain TCP waits for
  // the socket to become readable, so that a blocking caller can read it in between (see drain()).
  void do_read(uint64_t gen) {
    if (tls) return read_tls(gen);
    if (watching || !plain) return;
    watching = true;
    plain->async_wait(tcp::socket::wait_read, [this, gen](const boost::system::error_code& ec) {
      if (gen != generation) return;
      watching = false;
      if (ec) return read_failed(ec, gen);
      drain(gen);
    });
  }

  void read_tls(uint64_t gen) {
    if (read_buffer.size() - in_end < kMinReadSpace) make_room(kMinReadSpace);
    tls->async_read_some(asio::buffer(read_buffer.data() + in_end, read_buffer.size() - in_end),
                         [this, gen](const boost::system::error_code& ec, size_t n) {
                           if (gen != generation) return;
                           if (ec) return read_failed(ec, gen);
                           in_end += n;
                           if (!process_frames(gen)) return;
                           read_tls(gen);
                         });
  }

  // Plain TCP: handles what a blocking caller handed over and what the socket holds, until the
  // socket has nothing more (it is edge-triggered), then waits for it again. Leaves the socket to
  // a blocking caller that owns it: that caller reads it, and hands back what is not its own.
  void drain(uint64_t gen) {
    while (gen == generation) {
      size_t n = 0;
      boost::system::error_code ec;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (caller_owned) {
          io_missed = true;
          break;
        }
        if (!handover_in.empty()) {
          make_room(handover_in.size());
          std::memcpy(read_buffer.data() + in_end, handover_in.data(), handover_in.size());
          n = handover_in.size();
          handover_in.clear();
        } else {
          if (read_buffer.size() - in_end < kMinReadSpace) make_room(kMinReadSpace);
          n = plain->read_some(asio::buffer(read_buffer.data() + in_end, read_buffer.size() - in_end), ec);
        }
        if (n > 0) io_idle = false;
      }
      if (ec == asio::error::would_block || ec == asio::error::try_again) break;
      if (ec) return read_failed(ec, gen);
      in_end += n;
      if (!process_frames(gen)) return;
    }
    if (gen != generation) return;
    publish_idle();
    do_read(gen);
  }

  void read_failed(const boost::system::error_code& ec, uint64_t gen) {
    Status why = last_connection_error.ok()
                     ? Status(Code::unavailable, "connection to " + options.address + " lost: " + ec.message())
                     : last_connection_error;
    if (state == State::connecting) return connection_failed(why, gen);
    connection_lost(why);
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
      auto frame = first_frame(read_buffer.data() + in_begin, available, max_frame_bytes);
      if (!frame.ok()) {
        connection_lost(frame.status());
        return false;
      }
      if (!frame->complete) {
        if (read_buffer.size() - in_begin < frame->size) make_room(frame->size - available);
        break;
      }
      const char* data = read_buffer.data() + in_begin;
      in_begin += frame->size;
      Status parsed = with_reply(data, frame->size, [this](const protocol::Reply& reply) { handle_reply(reply); });
      if (!parsed.ok()) {
        connection_lost(parsed.with_context("reply from " + options.address));
        return false;
      }
    }
    if (in_begin == in_end) in_begin = in_end = 0;
    return gen == generation;
  }

  // Records whether a blocking caller may take the socket: the connection is up and plain, no
  // request is in flight or waiting to be written, and no frame is half read. Called on the I/O
  // thread whenever that may have become true; whatever makes it false clears io_idle first.
  void publish_idle() {
    bool idle = state == State::connected && pending.empty() && unsent.empty() && !writing && out_pending.empty() &&
                in_begin == in_end;
    std::lock_guard<std::mutex> lock(mutex);
    io_idle = idle && direct != nullptr;
  }

  // Posted by a blocking caller that gave the socket back with work left for the I/O thread.
  void resume_after_caller(uint64_t gen) {
    if (gen != generation) return;
    drain(gen);
    start_write();
    publish_idle();
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
    // Before the callback: a blocking call it wakes may then take the socket at once.
    if (pending.empty()) publish_idle();
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
    if (plain) {
      int fd = ::dup(plain->native_handle());
      // Without a duplicate (out of descriptors) every call takes the I/O thread's path.
      if (fd >= 0) {
        auto channel = std::make_shared<const DirectChannel>(fd, generation, max_frame_bytes);
        std::lock_guard<std::mutex> lock(mutex);
        direct = std::move(channel);
      }
    }
    start_write();
    publish_idle();
    resolve_first_connect(Status());
  }

  void close_socket() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      direct.reset();
      io_idle = false;
    }
    boost::system::error_code ignored;
    if (tls) {
      tls->lowest_layer().close(ignored);
    }
    if (plain) {
      plain->shutdown(tcp::socket::shutdown_both, ignored);  // also ends a blocking caller's wait
      plain->close(ignored);
    }
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
      if (!expired.empty() && pending.empty()) publish_idle();
      for (auto& [id, p] : expired) fail(p, timed_out(p.op));
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
      std::lock_guard<std::mutex> lock(mutex);
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

  std::mutex mutex;  // guards outbox, closed_flag, and who may use the socket (the rest of this group)
  std::vector<Outgoing> outbox;
  bool closed_flag = false;
  std::shared_ptr<const DirectChannel> direct;  // the connection's channel; null for TLS or while not connected
  bool io_idle = false;       // set by the I/O thread: a blocking caller may take the socket (publish_idle)
  bool caller_owned = false;  // a blocking caller uses the socket; the I/O thread leaves it alone
  bool io_missed = false;     // the socket became readable while a caller owned it
  bool io_deferred = false;   // the I/O thread has bytes to write once the caller is done
  std::string handover_in;    // bytes a caller read that are not its reply, for the I/O thread
  std::string handover_out;   // the unwritten rest of a caller's frame, for the I/O thread

  // Only touched by the caller that owns the socket.
  std::string direct_out;
  std::vector<char> direct_in;

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
  bool watching = false;  // plain TCP: a wait for the socket to become readable is outstanding
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
  if (auto channel = impl_->take_socket()) {
    return impl_->call_direct(*channel, op, body, Clock::now() + timeout.value_or(impl_->options.call_timeout));
  }
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
