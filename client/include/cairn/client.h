// The C++ client of the Cairn protocol (docs/PROTOCOL.md): connect with a token (optionally over
// TLS), make blocking calls with a timeout or async calls with a callback or future, subscribe to
// streams, and reconnect with backoff when the connection drops.
//
//   auto client = cairn::Client::connect(cairn::ClientOptions::from_env());
//   if (!client.ok()) { std::cerr << client.status().to_string(); return 1; }
//   auto status = (*client)->call_as<cairn::msg::NodeStatus>("node.status", cairn::msg::Empty{});
//
// Thread-safety: every method may be called from any thread. Callbacks run on the client's own
// I/O thread: they must not block, and must not call the blocking methods of the same client.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/messages/node.h"
#include "runtime/status.h"
#include "runtime/wire.h"

namespace cairn {

struct ClientOptions {
  std::string address = "127.0.0.1:7420";  // HOST:PORT of a node's protocol listener
  std::string token;                         // sent in the handshake
  bool tls = false;                          // wrap the connection in TLS
  std::string tls_ca_file;                   // PEM CA bundle to verify the node; "" = system CAs
  bool tls_verify = true;                    // verify the node's certificate and host name
  std::chrono::milliseconds connect_timeout{5000};   // TCP connect + TLS + handshake
  std::chrono::milliseconds call_timeout{30000};     // default per-call deadline
  bool reconnect = true;                     // reconnect after the connection drops
  std::chrono::milliseconds reconnect_initial{100};  // first backoff; doubles per failed attempt
  std::chrono::milliseconds reconnect_max{5000};     // backoff cap
  std::string client_name = "cairn-cpp/0.1";

  // Defaults, with address from CAIRN_ADDR and token from CAIRN_TOKEN when they are set.
  static ClientOptions from_env();
};

// Called once with the final reply's body (encoded msgpack; empty when the reply had none) or the
// error (`timeout`, `unavailable` when the connection dropped, or the node's error).
using ReplyCallback = std::function<void(Result<std::string> body)>;
// Called for each stream item, with its body (encoded msgpack).
using ItemCallback = std::function<void(const std::string& body)>;

// A stream subscription. Destroying it does not cancel the stream; cancel() does.
class Subscription {
 public:
  virtual ~Subscription() = default;
  // Asks the node to end the stream; it ends with Code::cancelled.
  virtual void cancel() = 0;
  // Waits for the stream's end; returns its final status (ok when it ended normally), or a
  // `timeout` status when it is still running after `timeout`.
  virtual Status wait(std::chrono::milliseconds timeout) = 0;
};

class Client {
 public:
  // Connects and completes the handshake, or fails with the node's error (`unauthenticated`,
  // `unsupported_version`) or `unavailable` when the node cannot be reached in time.
  static Result<std::unique_ptr<Client>> connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends a request and waits for its final reply. `body` is an encoded msgpack map or empty.
  // On a plain-TCP connection with nothing else in flight, the calling thread writes the request
  // and reads the reply itself (no hand-off to the I/O thread); otherwise the I/O thread does.
  Result<std::string> call(std::string_view op, std::string body = {},
                           std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  void call_async(std::string_view op, std::string body, ReplyCallback done,
                  std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  std::future<Result<std::string>> call_future(std::string_view op, std::string body = {},
                                               std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  // Typed call: encodes `request` and decodes the reply as R.
  template <class R, class Q>
  Result<R> call_as(std::string_view op, const Q& request,
                    std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    auto body = call(op, wire::encode(request), timeout);
    if (!body.ok()) return body.status();
    return wire::decode_bytes<R>(*body);
  }

  // Starts a stream op. on_item runs per item; on_end once, with ok or the final error. A dropped
  // connection ends the stream with `unavailable`; subscribe again after the client reconnects.
  std::shared_ptr<Subscription> subscribe(std::string_view op, std::string body, ItemCallback on_item,
                                          std::function<void(const Status&)> on_end = nullptr);

  // One node.ping round trip.
  Result<std::chrono::nanoseconds> ping(std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  // The node's handshake reply from the current (or last) connection.
  msg::Welcome welcome() const;
  bool connected() const;
  // The HOST:PORT this client connects to.
  const std::string& address() const;
  // Fails everything pending with `cancelled` and closes; the client cannot be used afterwards.
  void close();

  struct Impl;

 private:
  explicit Client(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace cairn
