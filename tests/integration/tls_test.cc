// A node serving TLS with a self-signed certificate made by the `openssl` command.
#include "test_util.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// One certificate and one TLS node serve every test here: making an RSA key and starting a node
// are the slow parts.
class TlsTest : public ::testing::Test {
 protected:
  struct Shared {
    TempDir dir;
    std::string cert;
    std::string key;
    std::unique_ptr<NodeProcess> node;
    std::string skip;   // why the suite cannot run here, when it cannot
    std::string error;  // why setting up failed
  };

  static void SetUpTestSuite() {
    shared_ = new Shared();
    Shared& s = *shared_;
    if (s.dir.path().empty()) {
      s.error = "mkdtemp failed";
      return;
    }
    s.cert = s.dir.path("cert.pem");
    s.key = s.dir.path("key.pem");
    const std::string log = s.dir.path("openssl.log");
    auto made = run_program({"/usr/bin/env", "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                             "-keyout", s.key, "-out", s.cert},
                            log, 60s);
    if (made.ok() && *made == 127) {
      s.skip = "the openssl command is not installed";
      return;
    }
    if (!made.ok() || *made != 0) {
      s.error = "openssl failed: " + (made.ok() ? read_file(log) : made.status().to_string());
      return;
    }
    NodeOptions options;
    options.config_yaml = "tls:\n  cert_file: " + s.cert + "\n  key_file: " + s.key + "\n";
    auto node = NodeProcess::start(options);
    if (!node.ok()) {
      s.error = node.status().to_string();
      return;
    }
    s.node = std::move(node).value();
  }

  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }

  void SetUp() override {
    if (!shared_->skip.empty()) GTEST_SKIP() << shared_->skip;
    ASSERT_NE(shared_->node, nullptr) << shared_->error;
    node_ = shared_->node.get();
  }

  ClientOptions tls_options() const {
    ClientOptions options = node_->client_options(Role::client);
    options.tls = true;
    options.tls_ca_file = shared_->cert;
    return options;
  }

  static Shared* shared_;
  NodeProcess* node_ = nullptr;
};

TlsTest::Shared* TlsTest::shared_ = nullptr;

TEST_F(TlsTest, TlsClientTrustingTheCertificatePings) {
  std::unique_ptr<Client> client;
  CAIRN_ASSERT_OK_AND_ASSIGN(client, Client::connect(tls_options()));
  auto pong = client->ping(5s);
  EXPECT_TRUE(pong.ok()) << pong.status().to_string();
  auto status = client->call_as<msg::NodeStatus>(msg::kStatus, msg::Empty{}, 5s);
  ASSERT_TRUE(status.ok()) << status.status().to_string();
  EXPECT_TRUE(status->tls);
}

TEST_F(TlsTest, PlainClientFailsWithinItsConnectTimeout) {
  ClientOptions options = node_->client_options(Role::client);
  options.connect_timeout = 2s;
  const auto start = Clock::now();
  auto client = Client::connect(options);
  const auto took = Clock::now() - start;
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::unavailable) << client.status().to_string();
  EXPECT_LT(took, options.connect_timeout + 1s);
  // The node is unharmed.
  std::unique_ptr<Client> tls_client;
  CAIRN_ASSERT_OK_AND_ASSIGN(tls_client, Client::connect(tls_options()));
  EXPECT_TRUE(tls_client->ping(5s).ok());
}

TEST_F(TlsTest, ClientThatDoesNotTrustTheCertificateIsRefused) {
  ClientOptions options = tls_options();
  options.tls_ca_file.clear();  // system CAs: they did not sign this certificate
  options.connect_timeout = 2s;
  auto client = Client::connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::unavailable) << client.status().to_string();
}

}  // namespace
}  // namespace cairn::testing
