// The C++ client's direct path: a blocking call on an idle plain-TCP connection writes and reads
// the socket on the caller's thread. These tests check that it stays correct next to everything
// else: concurrent blocking, async and stream calls on a real node, and, against a scripted fake
// node, timeouts with late replies, bytes that belong to the I/O thread, dropped connections,
// connection-level errors and close() from another thread.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netinet/in.h>

#include <atomic>
#include <cerrno>
#include <future>
#include <thread>

#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kWait = 5s;  // how long a fake node waits for the client's next step

// ---- a real node ----

class ClientDirectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_ = shared_node();
    ASSERT_NE(node_, nullptr) << shared_node_error();
  }
  NodeProcess* node_ = nullptr;
};

std::string echo_request(const std::string& text) {
  return wire::encode(msg::Echo{wire::Raw{wire::encode(text)}});
}

// The payload a node.echo reply carries (encoded msgpack), or the error.
Result<std::string> echoed_payload(const Result<std::string>& reply) {
  if (!reply.ok()) return reply.status();
  auto echo = wire::decode_bytes<msg::Echo>(*reply);
  if (!echo.ok()) return echo.status();
  return echo->payload.bytes;
}

TEST_F(ClientDirectTest, ConcurrentBlockingAsyncAndStreamCallsEachGetTheirOwnReply) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::admin)));
  constexpr int kCallers = 3;
  constexpr int kCalls = 300;
  std::atomic<int> wrong{0};
  std::mutex error_mutex;  // guards first_error
  std::string first_error;
  auto record = [&](const std::string& what) {
    if (wrong.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(error_mutex);
      first_error = what;
    }
  };
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string text = "caller " + std::to_string(c) + " call " + std::to_string(i);
        auto echoed = echoed_payload(client->call(msg::kEcho, echo_request(text), 10s));
        if (!echoed.ok()) {
          record(echoed.status().to_string());
        } else if (*echoed != wire::encode(text)) {
          record("sent \"" + text + "\", got another payload");
        }
        if (i % 50 == 0 && !client->ping(10s).ok()) record("ping failed");
      }
    });
  }
  // Meanwhile: async calls, and a stream that opens and closes.
  std::vector<std::future<Result<std::string>>> futures;
  for (int i = 0; i < kCalls; ++i) {
    futures.push_back(client->call_future(msg::kEcho, echo_request("async " + std::to_string(i)), 10s));
    if (i == kCalls / 3) {
      EventLog log;
      auto stream = client->subscribe(msg::kEvents, wire::encode(msg::EventsRequest{true}), log.on_item(), log.on_end());
      EXPECT_TRUE(log.wait_count(1, kWait));
      stream->cancel();
      EXPECT_EQ(stream->wait(kWait).code(), Code::cancelled);
    }
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < kCalls; ++i) {
    auto echoed = echoed_payload(futures[i].get());
    ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
    EXPECT_EQ(*echoed, wire::encode("async " + std::to_string(i)));
  }
  EXPECT_EQ(wrong.load(), 0) << first_error;
  EXPECT_TRUE(client->ping(5s).ok());
}

TEST_F(ClientDirectTest, BlockingCallLargerThanTheSocketBuffersRoundTrips) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  std::string text(6 << 20, 'x');
  for (size_t i = 0; i < text.size(); i += 4096) text[i] = static_cast<char>('a' + (i / 4096) % 26);
  auto echoed = echoed_payload(client->call(msg::kEcho, echo_request(text), 20s));
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_TRUE(*echoed == wire::encode(text)) << "the echoed payload differs";
  EXPECT_TRUE(client->ping(5s).ok());
}

// ---- a scripted fake node ----

// One accepted connection of FakeNode, read and written with poll() up to kWait.
class FakePeer {
 public:
  explicit FakePeer(int fd) : fd_(fd) {}
  ~FakePeer() { ::close(fd_); }
  FakePeer(const FakePeer&) = delete;
  FakePeer& operator=(const FakePeer&) = delete;

  struct Request {
    uint64_t id = 0;
    std::string op;
  };

  // Reads the next request frame.
  Result<Request> read_request() {
    while (true) {
      if (in_.size() >= protocol::kHeaderBytes) {
        size_t size = protocol::kHeaderBytes + protocol::read_length(in_.data());
        if (in_.size() >= size) {
          auto handle = wire::unpack_map(in_.data() + protocol::kHeaderBytes, size - protocol::kHeaderBytes);
          if (!handle.ok()) return handle.status();
          uint64_t id = 0;
          auto request = protocol::parse_request(handle->get(), id);
          if (!request.ok()) return request.status();
          Request out{id, std::string(request->op)};
          in_.erase(0, size);
          return out;
        }
      }
      pollfd watched{fd_, POLLIN, 0};
      if (::poll(&watched, 1, static_cast<int>(std::chrono::milliseconds(kWait).count())) <= 0) {
        return Status(Code::timeout, "fake node: no request");
      }
      char buffer[4096];
      ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return Status(Code::unavailable, "fake node: the client closed the connection");
      in_.append(buffer, static_cast<size_t>(n));
    }
  }

  // Reads the hello and answers with a welcome.
  Status handshake() {
    auto hello = read_request();
    if (!hello.ok()) return hello.status();
    if (hello->op != protocol::kHelloOp) return Status(Code::bad_request, "fake node: expected hello, got " + hello->op);
    msg::Welcome welcome;
    welcome.version = protocol::kVersion;
    welcome.role = "client";
    std::string out;
    protocol::append_reply(out, protocol::kConnectionId, protocol::ReplyKind::ok, wire::encode(welcome));
    return send(out);
  }

  Status send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return Status(Code::unavailable, "fake node: send failed");
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return Status();
  }

 private:
  const int fd_;
  std::string in_;
};

// A listener on 127.0.0.1 that a client connects to instead of a node.
class FakeNode {
 public:
  FakeNode() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd_, 4) == 0 &&
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
  }
  ~FakeNode() { ::close(fd_); }
  FakeNode(const FakeNode&) = delete;
  FakeNode& operator=(const FakeNode&) = delete;

  // Accepts the next connection and completes its handshake.
  Result<std::unique_ptr<FakePeer>> accept() {
    pollfd watched{fd_, POLLIN, 0};
    if (::poll(&watched, 1, static_cast<int>(std::chrono::milliseconds(kWait).count())) <= 0) {
      return Status(Code::timeout, "fake node: no connection");
    }
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return Status(Code::unavailable, "fake node: accept failed");
    auto peer = std::make_unique<FakePeer>(fd);
    Status handshake = peer->handshake();
    if (!handshake.ok()) return handshake;
    return peer;
  }

  ClientOptions client_options() const {
    ClientOptions options;
    options.address = "127.0.0.1:" + std::to_string(port_);
    options.token = "any";
    options.connect_timeout = kWait;
    options.reconnect_initial = 10ms;
    options.reconnect_max = 50ms;
    return options;
  }

  uint16_t port() const { return port_; }

 private:
  const int fd_;
  uint16_t port_ = 0;
};

// The body of the fake node's replies: says which reply it is.
struct Tag {
  std::string text;
  template <class V>
  void fields(V& v) { v("text", text); }
};

std::string reply_frame(uint64_t id, const std::string& text) {
  std::string out;
  protocol::append_reply(out, id, protocol::ReplyKind::ok, wire::encode(Tag{text}));
  return out;
}

std::string tag_of(const std::string& body) {
  auto tag = wire::decode_bytes<Tag>(body);
  return tag.ok() ? tag->text : tag.status().to_string();
}

// Connects a client to `fake` and accepts its connection.
struct Connected {
  std::unique_ptr<Client> client;
  std::unique_ptr<FakePeer> peer;
};

Result<Connected> connect_to(FakeNode& fake, const ClientOptions& options) {
  auto client = std::async(std::launch::async, [&] { return Client::connect(options); });
  auto peer = fake.accept();
  auto connected = client.get();
  if (!peer.ok()) return peer.status();
  if (!connected.ok()) return connected.status();
  return Connected{std::move(connected).value(), std::move(peer).value()};
}

TEST(ClientDirectFakeNodeTest, TimedOutCallsLateReplyIsDroppedAndTheNextCallsReplyIsTheirOwn) {
  FakeNode fake;
  ASSERT_NE(fake.port(), 0);
  Connected c;
  CAIRN_ASSERT_OK_AND_ASSIGN(c, connect_to(fake, fake.client_options()));

  // Call 1 gets no reply in time.
  auto first = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, 200ms); });
  FakePeer::Request r1;
  CAIRN_ASSERT_OK_AND_ASSIGN(r1, c.peer->read_request());
  auto timed_out = first.get();
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(timed_out.status().code(), Code::timeout) << timed_out.status().to_string();

  // Call 2's reply comes behind call 1's late reply, and with the first half of a frame for an
  // unknown id: the caller must take only its own reply and leave the rest to the I/O thread.
  auto second = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, kWait); });
  FakePeer::Request r2;
  CAIRN_ASSERT_OK_AND_ASSIGN(r2, c.peer->read_request());
  ASSERT_NE(r2.id, r1.id);
  const std::string stray = reply_frame(r2.id + 1000, "stray");
  const size_t half = stray.size() / 2;
  CAIRN_ASSERT_OK(c.peer->send(reply_frame(r1.id, "late") + reply_frame(r2.id, "second") + stray.substr(0, half)));
  auto second_reply = second.get();
  ASSERT_TRUE(second_reply.ok()) << second_reply.status().to_string();
  EXPECT_EQ(tag_of(*second_reply), "second");

  // Call 3 is answered after the rest of the stray frame: the stream of frames stays intact.
  auto third = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, kWait); });
  FakePeer::Request r3;
  CAIRN_ASSERT_OK_AND_ASSIGN(r3, c.peer->read_request());
  CAIRN_ASSERT_OK(c.peer->send(stray.substr(half) + reply_frame(r3.id, "third")));
  auto third_reply = third.get();
  ASSERT_TRUE(third_reply.ok()) << third_reply.status().to_string();
  EXPECT_EQ(tag_of(*third_reply), "third");
  EXPECT_TRUE(c.client->connected());
}

TEST(ClientDirectFakeNodeTest, AsyncCallMadeDuringABlockingCallIsSentAfterItAndAnswered) {
  FakeNode fake;
  ASSERT_NE(fake.port(), 0);
  Connected c;
  CAIRN_ASSERT_OK_AND_ASSIGN(c, connect_to(fake, fake.client_options()));
  auto blocking = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, kWait); });
  FakePeer::Request r1;
  CAIRN_ASSERT_OK_AND_ASSIGN(r1, c.peer->read_request());
  auto async = c.client->call_future(msg::kEcho, {}, kWait);
  CAIRN_ASSERT_OK(c.peer->send(reply_frame(r1.id, "blocking")));
  FakePeer::Request r2;
  CAIRN_ASSERT_OK_AND_ASSIGN(r2, c.peer->read_request());
  EXPECT_EQ(r2.op, msg::kEcho);
  CAIRN_ASSERT_OK(c.peer->send(reply_frame(r2.id, "async")));
  auto blocking_reply = blocking.get();
  ASSERT_TRUE(blocking_reply.ok()) << blocking_reply.status().to_string();
  EXPECT_EQ(tag_of(*blocking_reply), "blocking");
  ASSERT_EQ(async.wait_for(kWait), std::future_status::ready);
  auto async_reply = async.get();
  ASSERT_TRUE(async_reply.ok()) << async_reply.status().to_string();
  EXPECT_EQ(tag_of(*async_reply), "async");
}

TEST(ClientDirectFakeNodeTest, ConnectionErrorThenCloseFailsTheBlockingCallAndTheClientReconnects) {
  FakeNode fake;
  ASSERT_NE(fake.port(), 0);
  Connected c;
  CAIRN_ASSERT_OK_AND_ASSIGN(c, connect_to(fake, fake.client_options()));
  auto blocking = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, kWait); });
  FakePeer::Request r1;
  CAIRN_ASSERT_OK_AND_ASSIGN(r1, c.peer->read_request());
  std::string goodbye;
  protocol::append_error(goodbye, protocol::kConnectionId, Status(Code::shutting_down, "the node is shutting down"));
  CAIRN_ASSERT_OK(c.peer->send(goodbye));
  c.peer.reset();  // closes
  auto failed = blocking.get();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), Code::shutting_down) << failed.status().to_string();

  // The I/O thread noticed the drop and reconnects on its own.
  std::unique_ptr<FakePeer> again;
  CAIRN_ASSERT_OK_AND_ASSIGN(again, fake.accept());
  auto next = std::async(std::launch::async, [&] { return c.client->call(msg::kPing, {}, kWait); });
  FakePeer::Request r2;
  CAIRN_ASSERT_OK_AND_ASSIGN(r2, again->read_request());
  CAIRN_ASSERT_OK(again->send(reply_frame(r2.id, "after reconnect")));
  auto reply = next.get();
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(tag_of(*reply), "after reconnect");
}

TEST(ClientDirectFakeNodeTest, CloseFromAnotherThreadEndsABlockingCallWithCancelled) {
  FakeNode fake;
  ASSERT_NE(fake.port(), 0);
  ClientOptions options = fake.client_options();
  options.call_timeout = 60s;  // the call must end because of close(), not its deadline
  Connected c;
  CAIRN_ASSERT_OK_AND_ASSIGN(c, connect_to(fake, options));
  auto blocking = std::async(std::launch::async, [&] { return c.client->call(msg::kPing); });
  FakePeer::Request r1;
  CAIRN_ASSERT_OK_AND_ASSIGN(r1, c.peer->read_request());
  c.client->close();
  ASSERT_EQ(blocking.wait_for(kWait), std::future_status::ready);
  auto cancelled = blocking.get();
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().code(), Code::cancelled) << cancelled.status().to_string();
}

}  // namespace
}  // namespace cairn::testing
