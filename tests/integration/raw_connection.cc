#include "raw_connection.h"

#include "node_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "runtime/messages/node.h"
#include "runtime/wire.h"

namespace cairn::testing {
namespace {

using Clock = std::chrono::steady_clock;

bool is_disconnect(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN || err == ECONNABORTED; }


}  // namespace

Result<std::unique_ptr<RawConnection>> RawConnection::connect(uint16_t port, const RawOptions& options,
                                                              std::chrono::milliseconds timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status(Code::io_error, std::string("socket: ") + std::strerror(errno));
  std::unique_ptr<RawConnection> conn(new RawConnection(fd));
  if (options.receive_buffer_bytes > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options.receive_buffer_bytes, sizeof(int));
  }
  if (options.send_buffer_bytes > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &options.send_buffer_bytes, sizeof(int));
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // one write, one segment
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) {
      return Status(Code::unavailable, "connect to port " + std::to_string(port) + ": " + std::strerror(errno));
    }
    int revents = poll_one(fd, POLLOUT, Clock::now() + timeout);
    if (revents == 0) return Status(Code::timeout, "connect to port " + std::to_string(port) + " timed out");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return Status(Code::unavailable, "connect to port " + std::to_string(port) + ": " + std::strerror(err));
    }
  }
  return conn;
}

RawConnection::~RawConnection() {
  if (fd_ >= 0) ::close(fd_);
}

Status RawConnection::write(std::string_view bytes, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int revents = poll_one(fd_, POLLOUT, deadline);
      if (revents == 0) {
        return Status(Code::timeout, "the node accepted " + std::to_string(done) + " of " +
                                         std::to_string(bytes.size()) + " bytes in time");
      }
      continue;  // writable, or an error the next send() reports
    }
    if (n < 0 && is_disconnect(errno)) return Status(Code::unavailable, std::string("write: ") + std::strerror(errno));
    return Status(Code::io_error, std::string("write: ") + std::strerror(errno));
  }
  return {};
}

Status RawConnection::send_frame(std::string_view body) {
  std::string frame(protocol::kHeaderBytes, '\0');
  protocol::write_length(frame.data(), static_cast<uint32_t>(body.size()));
  frame.append(body);
  return write(frame);
}

Status RawConnection::send_request(uint64_t id, std::string_view op, std::string_view body) {
  std::string frame;
  protocol::append_request(frame, id, op, body);
  return write(frame);
}

Status RawConnection::send_hello(std::string_view token, uint32_t version) {
  msg::Hello hello;
  hello.version = version;
  hello.token = std::string(token);
  hello.client = "raw-test";
  return send_request(protocol::kConnectionId, protocol::kHelloOp, wire::encode(hello));
}

Status RawConnection::handshake(std::string_view token) {
  CAIRN_RETURN_IF_ERROR(send_hello(token));
  auto reply = read_reply();
  if (!reply.ok()) return reply.status();
  if (reply->kind == protocol::ReplyKind::error) return reply->error;
  if (reply->id != protocol::kConnectionId) return Status(Code::internal, "the welcome has a non-zero id");
  return {};
}

Status RawConnection::fill(Clock::time_point deadline) {
  while (true) {
    char chunk[64 * 1024];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      in_.append(chunk, static_cast<size_t>(n));
      return {};
    }
    if (n == 0) return Status(Code::unavailable, "the node closed the connection");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int revents = poll_one(fd_, POLLIN | POLLRDHUP, deadline);
      if (revents == 0) return Status(Code::timeout, "nothing from the node in time");
      if (revents < 0) return Status(Code::io_error, std::string("poll: ") + std::strerror(errno));
      continue;
    }
    if (is_disconnect(errno)) return Status(Code::unavailable, std::string("the node reset the connection: ") + std::strerror(errno));
    return Status(Code::io_error, std::string("read: ") + std::strerror(errno));
  }
}

Result<RawReply> RawConnection::read_reply(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (in_.size() < protocol::kHeaderBytes ||
         in_.size() < protocol::kHeaderBytes + protocol::read_length(in_.data())) {
    CAIRN_RETURN_IF_ERROR(fill(deadline));
  }
  const uint32_t length = protocol::read_length(in_.data());
  std::string body = in_.substr(protocol::kHeaderBytes, length);
  in_.erase(0, protocol::kHeaderBytes + length);
  auto handle = wire::unpack_map(body.data(), body.size());
  if (!handle.ok()) return handle.status();
  auto parsed = protocol::parse_reply(handle->get());
  if (!parsed.ok()) return parsed.status();
  RawReply reply;
  reply.id = parsed->id;
  reply.kind = parsed->kind;
  reply.error = parsed->error;
  reply.body = parsed->body ? wire::encode_object(*parsed->body) : std::string();
  return reply;
}

bool RawConnection::wait_closed(std::chrono::milliseconds timeout, std::vector<RawReply>* seen) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto reply = read_reply(std::chrono::milliseconds(remaining_ms(deadline)));
    if (reply.ok()) {
      if (seen) seen->push_back(std::move(reply).value());
      continue;
    }
    if (reply.status().code() == Code::unavailable) return true;
    if (reply.status().code() == Code::timeout) return false;
    // Not a reply (the node never sends those): drop what is buffered and keep reading.
    in_.clear();
  }
}

bool RawConnection::wait_hangup(std::chrono::milliseconds timeout) {
  int revents = poll_one(fd_, POLLRDHUP, Clock::now() + timeout);
  return revents > 0 && (revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

Result<std::string> RawConnection::read_to_end(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    Status s = fill(deadline);
    if (s.ok()) continue;
    if (s.code() == Code::unavailable) return std::move(in_);
    return s;
  }
}

std::string pack_map(std::initializer_list<std::pair<std::string, std::string>> fields) {
  std::string out;
  wire::AppendBuffer buffer{&out};
  wire::Packer pk(buffer);
  pk.pack_map(static_cast<uint32_t>(fields.size()));
  for (const auto& [key, value] : fields) {
    pk.pack_str(static_cast<uint32_t>(key.size()));
    pk.pack_str_body(key.data(), static_cast<uint32_t>(key.size()));
    pk.write_encoded(value.data(), value.size());
  }
  return out;
}

Result<HttpReply> http_get(uint16_t port, const std::string& path, std::chrono::milliseconds timeout) {
  auto conn = RawConnection::connect(port, {}, timeout);
  if (!conn.ok()) return conn.status();
  CAIRN_RETURN_IF_ERROR((*conn)->write("GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
  auto text = (*conn)->read_to_end(timeout);
  if (!text.ok()) return text.status();
  auto header_end = text->find("\r\n\r\n");
  if (text->rfind("HTTP/1.1 ", 0) != 0 || header_end == std::string::npos) {
    return Status(Code::bad_frame, "not an HTTP response: " + text->substr(0, 200));
  }
  HttpReply reply;
  reply.status = std::atoi(text->c_str() + 9);
  reply.headers = text->substr(0, header_end);
  std::transform(reply.headers.begin(), reply.headers.end(), reply.headers.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  reply.body = text->substr(header_end + 4);
  return reply;
}

}  // namespace cairn::testing
