// Streamed HTTP responses and client departure on a real HttpServer over loopback sockets: chunked
// server-sent events on HTTP/1.1 (and the connection serving its next request afterwards),
// close-delimited on HTTP/1.0, pipelined requests answered in order, the DisconnectSignal firing
// when a client hangs up while its answer is pending or streaming, and start_stream() without a
// streaming transport gathering the pieces into one response.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <boost/asio.hpp>

#include "cluster/http_server.h"

namespace cairn {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Peer {
 public:
  explicit Peer(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Peer() { close(); }
  bool connected() const { return connected_; }
  void send(const std::string& bytes) { ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size())); }
  // Reads until `text` contains `marker`; false at end of stream or after 10 s.
  bool read_until(const std::string& marker) {
    const auto deadline = Clock::now() + 10s;
    while (text.find(marker) == std::string::npos) {
      pollfd p{fd_, POLLIN, 0};
      int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
      if (ms <= 0 || ::poll(&p, 1, ms) <= 0) return false;
      char buffer[4096];
      ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return text.find(marker) != std::string::npos;
      text.append(buffer, static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until the server closes; true when it did within 10 s.
  bool read_to_end() { return !read_until(std::string("\0never", 6)) && closed_by_peer(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  std::string text;

 private:
  bool closed_by_peer() {
    char c;
    return ::recv(fd_, &c, 1, MSG_DONTWAIT) == 0;
  }
  int fd_ = -1;
  bool connected_ = false;
};

std::string get(const std::string& path, const std::string& version = "HTTP/1.1") {
  return "GET " + path + " " + version + "\r\nHost: x\r\n\r\n";
}

class HttpStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    routes_.add("GET", "/plain", [](const HttpRequest&, HttpResponder r) {
      HttpResponse response;
      response.body = "{\"ok\":true}";
      r.respond(std::move(response));
    });
    routes_.add("GET", "/sse", [](const HttpRequest&, HttpResponder r) {
      HttpResponse head;
      head.content_type = "text/event-stream";
      auto stream = r.start_stream(std::move(head));
      // From another thread, as the inference engine's loop writes.
      std::thread([stream] {
        for (int i = 1; i <= 3; ++i) EXPECT_TRUE(stream->write("data: " + std::to_string(i) + "\n\n"));
        stream->write("data: [DONE]\n\n");
        stream->end();
        EXPECT_FALSE(stream->write("late"));
      }).detach();
    });
    routes_.add("GET", "/pending", [this](const HttpRequest&, HttpResponder r) {
      r.on_disconnect([this] { disconnected_.set_value(); });
      {
        std::lock_guard<std::mutex> lock(mutex_);
        held_ = std::make_unique<HttpResponder>(std::move(r));  // answered never (or at teardown)
      }
      handled_.set_value();
    });
    routes_.add("GET", "/held-stream", [this](const HttpRequest&, HttpResponder r) {
      r.on_disconnect([this] { disconnected_.set_value(); });
      HttpResponse head;
      head.content_type = "text/event-stream";
      auto stream = r.start_stream(std::move(head));
      stream->write("data: first\n\n");
      std::lock_guard<std::mutex> lock(mutex_);
      held_stream_ = stream;
    });
    HttpOptions options;
    options.listen = {"127.0.0.1", 0};
    auto server = HttpServer::start(io_, options, routes_);
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held_.reset();
      held_stream_.reset();
    }
    server_->stop();
    work_.reset();
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return server_->bound().port; }

  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_{io_.get_executor()};
  HttpRouter routes_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::promise<void> disconnected_;
  std::promise<void> handled_;
  std::mutex mutex_;  // guards held_ and held_stream_
  std::unique_ptr<HttpResponder> held_;
  std::shared_ptr<HttpStream> held_stream_;
};

TEST_F(HttpStreamTest, SseIsChunkedAndTheConnectionServesTheNextRequest) {
  Peer peer(port());
  ASSERT_TRUE(peer.connected());
  peer.send(get("/sse"));
  ASSERT_TRUE(peer.read_until("0\r\n\r\n")) << peer.text;
  EXPECT_NE(peer.text.find("Content-Type: text/event-stream"), std::string::npos) << peer.text;
  EXPECT_NE(peer.text.find("Transfer-Encoding: chunked"), std::string::npos) << peer.text;
  // Each piece is one chunk: its hex size, the bytes, CRLF.
  EXPECT_NE(peer.text.find("9\r\ndata: 1\n\n\r\n"), std::string::npos) << peer.text;
  EXPECT_NE(peer.text.find("e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"), std::string::npos) << peer.text;
  EXPECT_EQ(peer.text.find("late"), std::string::npos);
  peer.text.clear();
  peer.send(get("/plain"));
  ASSERT_TRUE(peer.read_until("{\"ok\":true}")) << peer.text;
}

TEST_F(HttpStreamTest, PipelinedRequestsAreAnsweredInOrder) {
  Peer peer(port());
  peer.send(get("/sse") + get("/plain"));
  ASSERT_TRUE(peer.read_until("{\"ok\":true}")) << peer.text;
  EXPECT_LT(peer.text.find("0\r\n\r\n"), peer.text.find("{\"ok\":true}")) << peer.text;
}

TEST_F(HttpStreamTest, Http10StreamsEndWithTheConnection) {
  Peer peer(port());
  peer.send(get("/sse", "HTTP/1.0"));
  ASSERT_TRUE(peer.read_to_end()) << peer.text;
  EXPECT_EQ(peer.text.find("chunked"), std::string::npos) << peer.text;
  EXPECT_NE(peer.text.find("\r\n\r\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: [DONE]\n\n"), std::string::npos)
      << peer.text;
}

TEST_F(HttpStreamTest, ClientHangingUpOnAPendingAnswerFiresTheSignal) {
  auto fired = disconnected_.get_future();
  {
    Peer peer(port());
    peer.send(get("/pending"));
    // Hang up once the handler holds the request: the answer is pending.
    ASSERT_EQ(handled_.get_future().wait_for(10s), std::future_status::ready);
  }
  EXPECT_EQ(fired.wait_for(10s), std::future_status::ready);
}

TEST_F(HttpStreamTest, ClientHangingUpMidStreamFiresTheSignalAndStopsWrites) {
  auto fired = disconnected_.get_future();
  {
    Peer peer(port());
    peer.send(get("/held-stream"));
    ASSERT_TRUE(peer.read_until("data: first")) << peer.text;
  }
  ASSERT_EQ(fired.wait_for(10s), std::future_status::ready);
  std::lock_guard<std::mutex> lock(mutex_);
  ASSERT_TRUE(held_stream_);
  EXPECT_FALSE(held_stream_->write("data: nobody reads this\n\n"));
}

TEST(HttpResponderTest, WithoutStreamingTransportPiecesBecomeOneResponse) {
  std::optional<HttpResponse> sent;
  HttpResponder responder([&](HttpResponse r) { sent = std::move(r); });
  HttpResponse head;
  head.status = 200;
  head.content_type = "text/event-stream";
  auto stream = responder.start_stream(std::move(head));
  EXPECT_TRUE(stream->write("data: a\n\n"));
  EXPECT_TRUE(stream->write("data: b\n\n"));
  EXPECT_FALSE(sent.has_value());
  stream->end();
  ASSERT_TRUE(sent.has_value());
  EXPECT_EQ(sent->body, "data: a\n\ndata: b\n\n");
  EXPECT_EQ(sent->content_type, "text/event-stream");
  EXPECT_FALSE(stream->write("more"));
  responder.respond(HttpResponse{});  // already answered: ignored
  EXPECT_FALSE(responder.start_stream(HttpResponse{})->write("x"));
}

}  // namespace
}  // namespace cairn
