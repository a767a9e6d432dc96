// A node's life around its clients: graceful stops by signal, a data dir that only one node may
// hold, and clients that outlive the node they were connected to.
//
// Starting a node costs most of a second, so each test here carries one story through several
// nodes on the same data dir or port rather than starting fresh nodes per check.
#include <signal.h>

#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// shutdown.grace_ms by default: how long a stop may wait for requests that are not streams.
constexpr auto kDefaultGrace = 5000ms;

Result<msg::NodeStatus> status_of(const NodeProcess& node) {
  auto client = Client::connect(node.client_options(Role::client));
  if (!client.ok()) return client.status();
  return (*client)->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, 5s);
}

const char* signal_name(int sig) { return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal"; }

// ---- graceful shutdown ----

// Stops `node` with `sig` while a client is connected and a node.events stream is open on a raw
// connection, and checks the stop is graceful: the stream gets its final reply (shutting_down)
// without the node waiting out the grace period for it, and the node exits with code 0.
void stop_gracefully(NodeProcess& node, int sig) {
  SCOPED_TRACE(signal_name(sig));
  // A connected client does not hold the node up.
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node.client_options(Role::client)));
  // Nor does a stream, which never finishes on its own.
  std::unique_ptr<RawConnection> raw;
  CAIRN_ASSERT_OK_AND_ASSIGN(raw, RawConnection::connect(node.port()));
  CAIRN_ASSERT_OK(raw->handshake(node.client_token()));
  constexpr uint64_t kStreamId = 5;
  CAIRN_ASSERT_OK(raw->send_request(kStreamId, msg::kEvents));
  // Frames on a connection are handled in order: once the ping is answered, the stream is open.
  CAIRN_ASSERT_OK(raw->send_request(kStreamId + 1, msg::kPing));
  auto pong = raw->read_reply();
  ASSERT_TRUE(pong.ok()) << pong.status().to_string();
  ASSERT_EQ(pong->id, kStreamId + 1);

  ASSERT_TRUE(node.signal(sig));
  // docs/PROTOCOL.md (shutting_down): the node ends streams at once and answers every request
  // before it closes the connection.
  std::vector<RawReply> seen;
  ASSERT_TRUE(raw->wait_closed(kDefaultGrace - 1000ms, &seen)) << node.diagnostics();
  bool stream_answered = false;
  for (const auto& reply : seen) {
    ASSERT_EQ(reply.kind, protocol::ReplyKind::error);
    EXPECT_EQ(reply.error.code(), Code::shutting_down) << reply.error.to_string();
    if (reply.id == kStreamId) stream_answered = true;
  }
  EXPECT_TRUE(stream_answered) << "the stream in flight got no final reply";

  auto code = node.wait_exit();
  ASSERT_TRUE(code) << "the node did not stop\n" << node.diagnostics();
  EXPECT_EQ(*code, 0) << node.diagnostics();
  EXPECT_NE(node.stderr_text().find("node stopped"), std::string::npos) << node.diagnostics();
  EXPECT_FALSE(client->ping(2s).ok());
}

TEST(ShutdownTest, SigtermAndSigintStopTheNodeWithExitCode0AndTheDataDirReopens) {
  TempDir data;
  ASSERT_FALSE(data.path().empty());
  NodeOptions options;
  options.data_dir = data.path("node");
  std::string node_id;
  uint64_t boot = 1;
  for (int sig : {SIGTERM, SIGINT}) {
    std::unique_ptr<NodeProcess> node;
    CAIRN_ASSERT_OK_AND_ASSIGN(node, NodeProcess::start(options));
    msg::NodeStatus status;
    CAIRN_ASSERT_OK_AND_ASSIGN(status, status_of(*node));
    EXPECT_EQ(status.boot_count, boot);
    EXPECT_EQ(status.data_dir, options.data_dir);
    if (node_id.empty()) node_id = status.node_id;
    EXPECT_EQ(status.node_id, node_id);  // the same node, booted again
    stop_gracefully(*node, sig);
    if (HasFatalFailure()) return;
    ++boot;
  }
  // Both stops left the data dir clean for the next node.
  std::unique_ptr<NodeProcess> last;
  CAIRN_ASSERT_OK_AND_ASSIGN(last, NodeProcess::start(options));
  msg::NodeStatus status;
  CAIRN_ASSERT_OK_AND_ASSIGN(status, status_of(*last));
  EXPECT_EQ(status.boot_count, 3u);
  EXPECT_EQ(status.node_id, node_id);
}

TEST(ShutdownTest, SecondNodeOnTheSameDataDirExitsNamingIt) {
  NodeProcess* first = shared_node();
  ASSERT_NE(first, nullptr) << shared_node_error();
  NodeOptions options;
  options.data_dir = first->data_dir();
  std::unique_ptr<NodeProcess> second;
  CAIRN_ASSERT_OK_AND_ASSIGN(second, NodeProcess::spawn(options));
  auto code = second->wait_exit();
  ASSERT_TRUE(code) << "the second node kept running\n" << second->diagnostics();
  EXPECT_NE(*code, 0);
  EXPECT_NE(second->stderr_text().find(options.data_dir), std::string::npos) << second->diagnostics();

  // The first node was not disturbed.
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(first->client_options(Role::client)));
  EXPECT_TRUE(client->ping(5s).ok());
}

// ---- a client across node restarts ----

NodeOptions same_port_and_tokens(const NodeProcess& node) {
  NodeOptions options;
  options.listen = "127.0.0.1:" + std::to_string(node.port());
  options.admin_token = node.admin_token();
  options.client_token = node.client_token();
  return options;
}

// Pings until one succeeds (each with its own deadline) or `budget` runs out.
Status ping_until_served(Client& client, std::chrono::milliseconds budget) {
  const auto deadline = Clock::now() + budget;
  Status last(Code::timeout, "no ping tried");
  while (Clock::now() < deadline) {
    auto pong = client.ping(500ms);
    if (pong.ok()) return {};
    last = pong.status();
  }
  return last;
}

// Opens a node.events stream and waits until it is in flight at the node (its first replayed
// item is back).
std::shared_ptr<Subscription> open_stream(Client& client, EventLog& log) {
  auto stream = client.subscribe(msg::kEvents, wire::encode(msg::EventsRequest{true}), log.on_item(), log.on_end());
  EXPECT_TRUE(log.wait_for("echo", "started", 5s)) << log.describe();
  return stream;
}

TEST(ReconnectTest, ClientReconnectsToNodesRestartedOnTheSamePort) {
  std::unique_ptr<NodeProcess> node_a;
  CAIRN_ASSERT_OK_AND_ASSIGN(node_a, NodeProcess::start({}));
  ClientOptions options = node_a->client_options(Role::client);
  options.reconnect = true;
  options.reconnect_initial = 20ms;
  options.reconnect_max = 100ms;
  options.connect_timeout = 2s;
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(options));
  ASSERT_TRUE(client->ping(5s).ok());
  const std::string node_a_id = client->welcome().node_id;

  // Node A stops gracefully: the stream in flight ends with shutting_down.
  {
    EventLog log;
    auto stream = open_stream(*client, log);
    ASSERT_TRUE(node_a->signal(SIGTERM));
    Status end = stream->wait(kDefaultGrace - 1000ms);
    EXPECT_EQ(end.code(), Code::shutting_down) << end.to_string();
    auto code = node_a->wait_exit();
    ASSERT_TRUE(code) << node_a->diagnostics();
    EXPECT_EQ(*code, 0);
  }

  // No node: a call fails within its own deadline.
  const auto before = Clock::now();
  auto down = client->ping(300ms);
  ASSERT_FALSE(down.ok());
  EXPECT_TRUE(down.status().code() == Code::unavailable || down.status().code() == Code::timeout)
      << down.status().to_string();
  EXPECT_LT(Clock::now() - before, 2s);

  // Node B on the same port: the client finds it by itself.
  std::unique_ptr<NodeProcess> node_b;
  CAIRN_ASSERT_OK_AND_ASSIGN(node_b, NodeProcess::start(same_port_and_tokens(*node_a)));
  CAIRN_ASSERT_OK(ping_until_served(*client, 10s));
  EXPECT_TRUE(client->connected());
  EXPECT_NE(client->welcome().node_id, node_a_id);  // a new data dir: a new node

  // Node B dies without a goodbye: what was in flight fails with unavailable.
  {
    EventLog log;
    auto stream = open_stream(*client, log);
    ASSERT_TRUE(node_b->signal(SIGKILL));
    auto code = node_b->wait_exit();
    ASSERT_TRUE(code);
    EXPECT_EQ(*code, 128 + SIGKILL);
    Status end = stream->wait(5s);
    EXPECT_EQ(end.code(), Code::unavailable) << end.to_string();
  }

  // Node C: served again.
  std::unique_ptr<NodeProcess> node_c;
  CAIRN_ASSERT_OK_AND_ASSIGN(node_c, NodeProcess::start(same_port_and_tokens(*node_a)));
  CAIRN_ASSERT_OK(ping_until_served(*client, 10s));
}

}  // namespace
}  // namespace cairn::testing
