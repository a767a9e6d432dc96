// Hostile and broken clients on raw sockets: every case gets the answer docs/PROTOCOL.md promises,
// and after every case a well-behaved client still gets its pings answered.
#include <poll.h>

#include <algorithm>
#include <set>

#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Small limits and short timeouts, so each refusal happens quickly.
constexpr char kStrictConfig[] =
    "protocol:\n"
    "  max_frame_bytes: 4096\n"
    "  handshake_timeout_ms: 200\n"
    "  frame_timeout_ms: 300\n";
// Room for 64 KiB echoes, little room for replies nobody reads.
constexpr char kNoReaderConfig[] =
    "protocol:\n"
    "  max_frame_bytes: 128KiB\n"
    "  max_pending_output_bytes: 1MiB\n"
    "  write_timeout_ms: 1000\n";

std::string header(uint32_t length) {
  std::string out(protocol::kHeaderBytes, '\0');
  protocol::write_length(out.data(), length);
  return out;
}

std::string ping_frame(uint64_t id) {
  std::string frame;
  protocol::append_request(frame, id, msg::kPing, {});
  return frame;
}

// Expects the next reply to be an error with this id and code, whose message mentions `mentions`.
void expect_error(RawConnection& conn, uint64_t id, Code code, const std::string& mentions = {}) {
  auto reply = conn.read_reply();
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->id, id);
  ASSERT_EQ(reply->kind, protocol::ReplyKind::error);
  EXPECT_EQ(reply->error.code(), code) << reply->error.to_string();
  EXPECT_NE(reply->error.message().find(mentions), std::string::npos)
      << "the message should name \"" << mentions << "\": " << reply->error.to_string();
}

// Expects the connection to answer a ping: it is still usable.
void expect_pong(RawConnection& conn, uint64_t id) {
  CAIRN_ASSERT_OK(conn.write(ping_frame(id)));
  auto reply = conn.read_reply();
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->id, id);
  EXPECT_EQ(reply->kind, protocol::ReplyKind::ok) << reply->error.to_string();
}

// Expects the node to close the connection, after at most an id-0 error with one of `codes`.
void expect_closed(RawConnection& conn, std::initializer_list<Code> codes, std::chrono::milliseconds timeout = 5s) {
  std::vector<RawReply> seen;
  ASSERT_TRUE(conn.wait_closed(timeout, &seen)) << "the node kept the connection open";
  ASSERT_LE(seen.size(), 1u);
  for (const auto& reply : seen) {
    EXPECT_EQ(reply.id, protocol::kConnectionId);
    ASSERT_EQ(reply.kind, protocol::ReplyKind::error);
    EXPECT_NE(std::find(codes.begin(), codes.end(), reply.error.code()), codes.end()) << reply.error.to_string();
  }
}

struct ServedNode {
  std::unique_ptr<NodeProcess> node;
  std::unique_ptr<Client> client;  // connected before the bad traffic, checked after each case
  std::string error;

  // Split in two so that several nodes start side by side.
  void spawn(const std::string& config) {
    NodeOptions options;
    options.config_yaml = config;
    auto spawned = NodeProcess::spawn(options);
    if (!spawned.ok()) {
      error = spawned.status().to_string();
      return;
    }
    node = std::move(spawned).value();
  }
  void connect() {
    if (!node) return;
    Status ready = node->wait_ready(kNodeReadyTimeout);
    if (!ready.ok()) {
      error = ready.to_string();
      return;
    }
    auto connected = Client::connect(node->client_options(Role::client));
    if (!connected.ok()) {
      error = connected.status().to_string();
      return;
    }
    client = std::move(connected).value();
  }
};

class BadTrafficTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    strict_ = new ServedNode();
    no_reader_ = new ServedNode();
    strict_->spawn(kStrictConfig);
    no_reader_->spawn(kNoReaderConfig);
    strict_->connect();
    no_reader_->connect();
  }
  static void TearDownTestSuite() {
    delete strict_;
    delete no_reader_;
    strict_ = no_reader_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(strict_->client, nullptr) << strict_->error;
    ASSERT_NE(no_reader_->client, nullptr) << no_reader_->error;
    ASSERT_NE(shared_node(), nullptr) << shared_node_error();
  }

  // After each case: the connection made before it still works, and so does a new one.
  void TearDown() override {
    for (ServedNode* served : {strict_, no_reader_}) {
      if (!served->client) continue;
      auto old_connection = served->client->ping(5s);
      EXPECT_TRUE(old_connection.ok()) << old_connection.status().to_string() << "\n" << served->node->diagnostics();
      auto fresh = Client::connect(served->node->client_options(Role::client));
      ASSERT_TRUE(fresh.ok()) << fresh.status().to_string() << "\n" << served->node->diagnostics();
      auto pong = (*fresh)->ping(5s);
      EXPECT_TRUE(pong.ok()) << pong.status().to_string() << "\n" << served->node->diagnostics();
    }
    // Some cases use the shared node with its default limits.
    auto fresh = Client::connect(shared_node()->client_options(Role::client));
    ASSERT_TRUE(fresh.ok()) << fresh.status().to_string() << "\n" << shared_node()->diagnostics();
    auto pong = (*fresh)->ping(5s);
    EXPECT_TRUE(pong.ok()) << pong.status().to_string() << "\n" << shared_node()->diagnostics();
  }

  // A raw connection to the strict node, handshake done with the admin token.
  std::unique_ptr<RawConnection> strict_session() {
    auto conn = RawConnection::connect(strict_->node->port());
    EXPECT_TRUE(conn.ok()) << conn.status().to_string();
    if (!conn.ok()) return nullptr;
    Status hello = (*conn)->handshake(strict_->node->admin_token());
    EXPECT_TRUE(hello.ok()) << hello.to_string();
    return hello.ok() ? std::move(conn).value() : nullptr;
  }

  std::unique_ptr<RawConnection> strict_connection() {
    auto conn = RawConnection::connect(strict_->node->port());
    EXPECT_TRUE(conn.ok()) << conn.status().to_string();
    return conn.ok() ? std::move(conn).value() : nullptr;
  }

  static ServedNode* strict_;
  static ServedNode* no_reader_;
};

ServedNode* BadTrafficTest::strict_ = nullptr;
ServedNode* BadTrafficTest::no_reader_ = nullptr;

// ---- before the handshake ----

TEST_F(BadTrafficTest, HttpRequestInsteadOfAHandshakeIsClosed) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->write("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  // "GET " read as a length prefix is about 1.2 GB.
  expect_closed(*conn, {Code::frame_too_large, Code::unauthenticated});
}

TEST_F(BadTrafficTest, MissingHandshakeIsClosedAfterTheHandshakeTimeout) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  const auto start = Clock::now();
  std::vector<RawReply> seen;
  ASSERT_TRUE(conn->wait_closed(5s, &seen)) << "the node kept a silent connection open";
  EXPECT_GE(Clock::now() - start, 150ms);  // handshake_timeout_ms is 200
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].id, protocol::kConnectionId);
  EXPECT_EQ(seen[0].error.code(), Code::unauthenticated) << seen[0].error.to_string();
}

TEST_F(BadTrafficTest, WrongTokenIsRefusedAndClosed) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_hello("wrong-token-0123456789abcdef"));
  expect_error(*conn, protocol::kConnectionId, Code::unauthenticated);
  expect_closed(*conn, {});
}

TEST_F(BadTrafficTest, WrongProtocolVersionIsRefusedAndClosed) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_hello(strict_->node->admin_token(), protocol::kVersion + 1));
  expect_error(*conn, protocol::kConnectionId, Code::unsupported_version);
  expect_closed(*conn, {});
}

TEST_F(BadTrafficTest, HandshakeWithoutTokenIsABadRequest) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_request(protocol::kConnectionId, protocol::kHelloOp,
                                     pack_map({{"version", wire::encode(protocol::kVersion)}})));
  expect_error(*conn, protocol::kConnectionId, Code::bad_request, "token");
  expect_closed(*conn, {});
}

TEST_F(BadTrafficTest, RequestBeforeTheHandshakeIsRefused) {
  auto conn = strict_connection();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->write(ping_frame(1)));
  expect_error(*conn, protocol::kConnectionId, Code::unauthenticated);
  expect_closed(*conn, {});
}

// ---- after the handshake: the connection survives bad requests ----

TEST_F(BadTrafficTest, UnknownOpIsAnsweredAndTheConnectionStaysUsable) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_request(1, "node.no_such_op"));
  expect_error(*conn, 1, Code::unknown_op, "node.no_such_op");
  expect_pong(*conn, 2);
}

TEST_F(BadTrafficTest, WrongFieldTypesAreBadRequests) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"id", wire::encode(uint64_t{3})}, {"op", wire::encode(42)}})));
  expect_error(*conn, 3, Code::bad_request, "\"op\"");
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"id", wire::encode(std::string("4"))}, {"op", wire::encode(std::string(msg::kPing))}})));
  expect_error(*conn, protocol::kConnectionId, Code::bad_request, "\"id\"");
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"id", wire::encode(uint64_t{5})},
                                             {"op", wire::encode(std::string(msg::kEcho))},
                                             {"body", wire::encode(std::vector<int>{1, 2})}})));
  expect_error(*conn, 5, Code::bad_request, "\"body\"");
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"id", wire::encode(-6)}, {"op", wire::encode(std::string(msg::kPing))}})));
  expect_error(*conn, protocol::kConnectionId, Code::bad_request, "\"id\"");
  CAIRN_ASSERT_OK(conn->send_request(7, msg::kKillActor, pack_map({{"name", wire::encode(7)}})));
  expect_error(*conn, 7, Code::bad_request, "\"name\"");
  expect_pong(*conn, 8);
}

TEST_F(BadTrafficTest, MissingFieldsAreBadRequestsNamingTheField) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"id", wire::encode(uint64_t{10})}})));
  expect_error(*conn, 10, Code::bad_request, "\"op\"");
  CAIRN_ASSERT_OK(conn->send_frame(pack_map({{"op", wire::encode(std::string(msg::kPing))}})));
  expect_error(*conn, protocol::kConnectionId, Code::bad_request, "\"id\"");
  CAIRN_ASSERT_OK(conn->send_request(11, msg::kEcho));
  expect_error(*conn, 11, Code::bad_request, "\"payload\"");
  CAIRN_ASSERT_OK(conn->send_request(12, msg::kKillActor, pack_map({})));
  expect_error(*conn, 12, Code::bad_request, "\"name\"");
  CAIRN_ASSERT_OK(conn->send_request(13, protocol::kCancelOp));
  expect_error(*conn, 13, Code::bad_request, "\"id\"");
  expect_pong(*conn, 14);
}

TEST_F(BadTrafficTest, UndecodableFramesAreBadFramesAndTheConnectionStaysUsable) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  const std::string ping = ping_frame(20).substr(protocol::kHeaderBytes);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not msgpack (0xc1 is never used)", std::string("\xc1", 1)},
      {"not a map", wire::encode(std::vector<int>{1, 2, 3})},
      {"trailing bytes after the map", ping + std::string("\x00", 1)},
      {"a map cut short", ping.substr(0, ping.size() - 3)},
      {"an empty frame", ""},
      {"a string claiming more bytes than the frame holds", std::string("\x81\xdb\x7f\xff\xff\xff", 6)},
  };
  for (const auto& [what, body] : cases) {
    SCOPED_TRACE(what);
    CAIRN_ASSERT_OK(conn->send_frame(body));
    expect_error(*conn, protocol::kConnectionId, Code::bad_frame);
  }
  expect_pong(*conn, 21);
}

TEST_F(BadTrafficTest, RequestIdInUseIsABadRequest) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  // The stream stays in flight, so its id stays taken.
  CAIRN_ASSERT_OK(conn->send_request(30, msg::kEvents));
  CAIRN_ASSERT_OK(conn->send_request(30, msg::kStatus));
  expect_error(*conn, 30, Code::bad_request, "30");
  CAIRN_ASSERT_OK(conn->send_request(31, protocol::kCancelOp, wire::encode(msg::Cancel{30})));
  std::set<std::pair<uint64_t, Code>> finals;
  for (int i = 0; i < 2; ++i) {
    auto reply = conn->read_reply();
    ASSERT_TRUE(reply.ok()) << reply.status().to_string();
    finals.emplace(reply->id, reply->kind == protocol::ReplyKind::error ? reply->error.code() : Code::ok);
  }
  EXPECT_EQ(finals, (std::set<std::pair<uint64_t, Code>>{{30, Code::cancelled}, {31, Code::ok}}));
  expect_pong(*conn, 32);
}

// ---- framing limits and deadlines ----

TEST_F(BadTrafficTest, OversizedFrameIsRefusedAndClosed) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->write(header(4097)));  // max_frame_bytes is 4096
  expect_error(*conn, protocol::kConnectionId, Code::frame_too_large, "4096");
  expect_closed(*conn, {});
}

TEST_F(BadTrafficTest, FrameAtTheLimitIsAccepted) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  // An echo whose frame body is exactly max_frame_bytes: bin payload padded to fit.
  const std::string empty_request = [] {
    std::string frame;
    protocol::append_request(frame, 40, msg::kEcho, wire::encode(msg::Echo{wire::Raw{wire::encode(wire::Bytes{})}}));
    return frame;
  }();
  const size_t overhead = empty_request.size() - protocol::kHeaderBytes;
  // The empty payload is a bin8 (2-byte header); this one is a bin16 (3-byte header).
  const size_t payload = 4096 - overhead - 1;
  std::string frame;
  protocol::append_request(frame, 40, msg::kEcho,
                           wire::encode(msg::Echo{wire::Raw{wire::encode(wire::Bytes{std::string(payload, 'p')})}}));
  ASSERT_EQ(frame.size() - protocol::kHeaderBytes, 4096u);
  CAIRN_ASSERT_OK(conn->write(frame));
  auto reply = conn->read_reply();
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->id, 40u);
  EXPECT_EQ(reply->kind, protocol::ReplyKind::ok) << reply->error.to_string();
}

TEST_F(BadTrafficTest, TruncatedFrameFromAClientThatLeavesIsHarmless) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  CAIRN_ASSERT_OK(conn->write(header(100) + std::string(10, 'x')));
  conn.reset();  // closes the socket mid-frame; TearDown checks the node
}

TEST_F(BadTrafficTest, StalledFrameIsClosedAfterTheFrameTimeout) {
  auto conn = strict_session();
  ASSERT_NE(conn, nullptr);
  const auto start = Clock::now();
  CAIRN_ASSERT_OK(conn->write(header(100) + std::string(10, 'x')));
  expect_closed(*conn, {Code::timeout});
  EXPECT_GE(Clock::now() - start, 250ms);  // frame_timeout_ms is 300
}

TEST_F(BadTrafficTest, SlowClientTricklingAFrameGetsItsReply) {
  NodeProcess* node = shared_node();
  auto conn = RawConnection::connect(node->port());
  ASSERT_TRUE(conn.ok()) << conn.status().to_string();
  CAIRN_ASSERT_OK((*conn)->handshake(node->client_token()));
  const std::string frame = ping_frame(50);
  for (size_t i = 0; i < frame.size(); ++i) {
    CAIRN_ASSERT_OK((*conn)->write(frame.substr(i, 1)));
    if (i + 1 == frame.size()) break;
    // A pause between bytes that also watches the socket: nothing may arrive before the frame ends.
    pollfd p{(*conn)->fd(), POLLIN | POLLRDHUP, 0};
    ASSERT_EQ(::poll(&p, 1, 10), 0) << "the node answered or closed after byte " << i << " of " << frame.size();
  }
  auto reply = (*conn)->read_reply();
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->id, 50u);
  EXPECT_EQ(reply->kind, protocol::ReplyKind::ok);
}

TEST_F(BadTrafficTest, ClientThatNeverReadsIsDisconnected) {
  NodeProcess& node = *no_reader_->node;
  RawOptions small_buffers;
  small_buffers.receive_buffer_bytes = 4096;
  small_buffers.send_buffer_bytes = 64 * 1024;
  auto connected = RawConnection::connect(node.port(), small_buffers);
  ASSERT_TRUE(connected.ok()) << connected.status().to_string();
  RawConnection& conn = **connected;
  CAIRN_ASSERT_OK(conn.handshake(node.client_token()));

  const std::string payload = wire::encode(wire::Bytes{std::string(64 * 1024, 'z')});
  const std::string body = wire::encode(msg::Echo{wire::Raw{payload}});
  // Pipeline echoes and never read. The node stops reading once its output backs up, so writes
  // stall (timeout) or fail (the node already hung up); either ends the loop.
  constexpr int kMaxRequests = 1000;  // 64 MiB: far beyond every buffer on the way
  int written = 0;
  Status last;
  for (uint64_t id = 1; id <= kMaxRequests; ++id) {
    std::string frame;
    protocol::append_request(frame, id, msg::kEcho, body);
    last = conn.write(frame, 300ms);
    if (!last.ok()) break;
    ++written;
  }
  ASSERT_FALSE(last.ok()) << "the node read " << kMaxRequests << " requests without sending back-pressure";
  EXPECT_TRUE(last.code() == Code::timeout || last.code() == Code::unavailable) << last.to_string();
  EXPECT_GT(written, 0);

  // Meanwhile a well-behaved client is served.
  auto pong = no_reader_->client->ping(5s);
  EXPECT_TRUE(pong.ok()) << pong.status().to_string();

  ASSERT_TRUE(conn.wait_hangup(10s)) << "the node never dropped the client that does not read\n" << node.diagnostics();
  EXPECT_TRUE(conn.wait_closed(10s));
  const std::string log = node.stderr_text();
  EXPECT_TRUE(log.find("does not read its replies") != std::string::npos ||
              log.find("a write made no progress") != std::string::npos)
      << node.diagnostics();
}

TEST_F(BadTrafficTest, TenThousandPipelinedPingsAreAllAnswered) {
  NodeProcess* node = shared_node();
  auto connected = RawConnection::connect(node->port());
  ASSERT_TRUE(connected.ok()) << connected.status().to_string();
  RawConnection& conn = **connected;
  CAIRN_ASSERT_OK(conn.handshake(node->client_token()));
  constexpr uint64_t kPings = 10'000;
  std::string frames;
  for (uint64_t id = 1; id <= kPings; ++id) protocol::append_request(frames, id, msg::kPing, {});
  CAIRN_ASSERT_OK(conn.write(frames, 10s));  // every request is out before any reply is read
  std::vector<bool> answered(kPings + 1, false);
  for (uint64_t i = 0; i < kPings; ++i) {
    auto reply = conn.read_reply(10s);
    ASSERT_TRUE(reply.ok()) << "after " << i << " replies: " << reply.status().to_string();
    ASSERT_EQ(reply->kind, protocol::ReplyKind::ok) << reply->error.to_string();
    ASSERT_GE(reply->id, 1u);
    ASSERT_LE(reply->id, kPings);
    ASSERT_FALSE(answered[reply->id]) << "id " << reply->id << " answered twice";
    answered[reply->id] = true;
  }
}

}  // namespace
}  // namespace cairn::testing
