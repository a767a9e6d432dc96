// The C++ client against a real node: handshake, roles, the call styles, streams and HTTP.
#include <future>
#include <limits>

#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;

// A nested msgpack value that exercises every type the codec carries, packed in its canonical
// (smallest) widths so the echoed bytes must match exactly.
std::string nested_payload() {
  std::string out;
  wire::AppendBuffer buffer{&out};
  wire::Packer pk(buffer);
  pk.pack_map(3);
  pk.pack(std::string("list"));
  pk.pack_array(7);
  pk.pack(1);
  pk.pack(-2);
  pk.pack(3.5);
  pk.pack(std::string("x"));
  pk.pack(true);
  pk.pack_nil();
  pk.pack(std::numeric_limits<uint64_t>::max());
  pk.pack(std::string("nested"));
  pk.pack_map(1);
  pk.pack(std::string("deeper"));
  pk.pack_map(1);
  pk.pack(std::string("bin"));
  pk.pack_bin(3);
  pk.pack_bin_body("\x00\x01\xff", 3);
  pk.pack(std::string("empty"));
  pk.pack_array(0);
  return out;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_ = shared_node();
    ASSERT_NE(node_, nullptr) << shared_node_error();
  }
  NodeProcess* node_ = nullptr;
};

TEST_F(ClientTest, AdminConnectsPingsAndEchoesANestedValue) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::admin)));
  msg::Welcome welcome = client->welcome();
  EXPECT_EQ(welcome.role, "admin");
  EXPECT_EQ(welcome.version, protocol::kVersion);
  EXPECT_EQ(welcome.node_id.size(), 32u);
  EXPECT_EQ(welcome.max_frame_bytes, 16u << 20);
  EXPECT_TRUE(client->connected());

  auto rtt = client->ping(5s);
  ASSERT_TRUE(rtt.ok()) << rtt.status().to_string();

  msg::Echo request{wire::Raw{nested_payload()}};
  auto echoed = client->call_as<msg::Echo>(msg::kEcho, request, 5s);
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_EQ(echoed->payload, request.payload);
}

TEST_F(ClientTest, StatusListsTheEchoActorRunning) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  auto status = client->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, 5s);
  ASSERT_TRUE(status.ok()) << status.status().to_string();
  EXPECT_EQ(status->state, "running");
  EXPECT_EQ(status->pid, static_cast<uint64_t>(node_->pid()));
  EXPECT_EQ(status->protocol, node_->address());
  EXPECT_EQ(status->http, node_->http_address());
  EXPECT_EQ(status->boot_count, 1u);
  EXPECT_FALSE(status->tls);
  EXPECT_GE(status->connections, 1u);
  EXPECT_EQ(status->node_id, client->welcome().node_id);
  const msg::ActorStatus* echo = find_actor(*status, "echo");
  ASSERT_NE(echo, nullptr) << "node.status lists no echo actor";
  EXPECT_EQ(echo->state, "running");
  EXPECT_EQ(echo->restarts, 0u);
  EXPECT_GE(echo->mailbox, 0);
  for (const auto& actor : status->actors) EXPECT_EQ(actor.state, "running") << actor.name;
}

TEST_F(ClientTest, CallAsyncRunsItsCallbackWithTheReply) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  std::promise<Result<std::string>> done;
  auto reply = done.get_future();
  msg::Echo request{wire::Raw{wire::encode(std::string("async"))}};
  client->call_async(msg::kEcho, wire::encode(request),
                     [&done](Result<std::string> body) { done.set_value(std::move(body)); }, 5s);
  ASSERT_EQ(reply.wait_for(10s), std::future_status::ready);
  auto body = reply.get();
  ASSERT_TRUE(body.ok()) << body.status().to_string();
  auto echoed = wire::decode_bytes<msg::Echo>(*body);
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_EQ(echoed->payload, request.payload);
}

TEST_F(ClientTest, CallFutureResolvesWithTheReply) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  msg::Echo request{wire::Raw{wire::encode(uint64_t{42})}};
  auto echo = client->call_future(msg::kEcho, wire::encode(request), 5s);
  auto ping = client->call_future(msg::kPing, {}, 5s);
  ASSERT_EQ(echo.wait_for(10s), std::future_status::ready);
  ASSERT_EQ(ping.wait_for(10s), std::future_status::ready);
  auto echo_body = echo.get();
  ASSERT_TRUE(echo_body.ok()) << echo_body.status().to_string();
  auto echoed = wire::decode_bytes<msg::Echo>(*echo_body);
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_EQ(echoed->payload, request.payload);
  auto ping_body = ping.get();
  EXPECT_TRUE(ping_body.ok()) << ping_body.status().to_string();
}

TEST_F(ClientTest, ClientTokenMayNotUseAdminOps) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  EXPECT_EQ(client->welcome().role, "client");

  auto shutdown = client->call(msg::kShutdown, {}, 5s);
  ASSERT_FALSE(shutdown.ok());
  EXPECT_EQ(shutdown.status().code(), Code::permission_denied) << shutdown.status().to_string();

  auto kill = client->call(msg::kKillActor, wire::encode(msg::KillActor{"echo"}), 5s);
  ASSERT_FALSE(kill.ok());
  EXPECT_EQ(kill.status().code(), Code::permission_denied) << kill.status().to_string();

  // Refused, not done: the node runs on and the echo actor was never restarted.
  auto status = client->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, 5s);
  ASSERT_TRUE(status.ok()) << status.status().to_string();
  EXPECT_EQ(status->state, "running");
  const msg::ActorStatus* echo = find_actor(*status, "echo");
  ASSERT_NE(echo, nullptr) << "node.status lists no echo actor";
  EXPECT_EQ(echo->restarts, 0u);
}

TEST_F(ClientTest, BadTokenIsRefusedAndNotLogged) {
  const std::string bad_token = "not-a-token-of-this-node-5f3a9c1e";
  ClientOptions options = node_->client_options(Role::none);
  options.token = bad_token;
  auto client = Client::connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::unauthenticated) << client.status().to_string();

  // The node logs the refusal before it answers, so the line is in the file by now.
  std::string log = node_->stderr_text();
  EXPECT_NE(log.find("invalid token"), std::string::npos) << node_->diagnostics();
  EXPECT_EQ(log.find(bad_token), std::string::npos) << "the node logged the token:\n" << node_->diagnostics();
}

TEST_F(ClientTest, CancelledSubscriptionEndsWithCancelled) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(node_->client_options(Role::client)));
  EventLog log;
  // replay: the first item proves the stream is open at the supervisor before it is cancelled.
  auto subscription = client->subscribe(msg::kEvents, wire::encode(msg::EventsRequest{true}), log.on_item(),
                                        log.on_end());
  ASSERT_TRUE(log.wait_for("echo", "started", 5s)) << log.describe();
  EXPECT_EQ(subscription->wait(0ms).code(), Code::timeout);  // still running
  subscription->cancel();
  Status end = subscription->wait(5s);
  EXPECT_EQ(end.code(), Code::cancelled) << end.to_string();
  // The connection serves on.
  EXPECT_TRUE(client->ping(5s).ok());
}

TEST_F(ClientTest, HttpHealthAnswersOkJson) {
  ASSERT_NE(node_->http_port(), 0);
  HttpReply reply;
  CAIRN_ASSERT_OK_AND_ASSIGN(reply, http_get(node_->http_port(), "/health"));
  EXPECT_EQ(reply.status, 200) << reply.body;
  EXPECT_NE(reply.headers.find("content-type: application/json"), std::string::npos) << reply.headers;
  EXPECT_NE(reply.body.find("\"status\":\"ok\""), std::string::npos) << reply.body;
}

TEST_F(ClientTest, HttpUnknownPathIs404Json) {
  HttpReply reply;
  CAIRN_ASSERT_OK_AND_ASSIGN(reply, http_get(node_->http_port(), "/no/such/path"));
  EXPECT_EQ(reply.status, 404) << reply.body;
  EXPECT_NE(reply.headers.find("content-type: application/json"), std::string::npos) << reply.headers;
  EXPECT_NE(reply.body.find("\"code\":\"not_found\""), std::string::npos) << reply.body;
}

}  // namespace
}  // namespace cairn::testing
