// Builds Calls as the transport would, with a sink that records every reply, for actor tests.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/call.h"

namespace cairn::testing {

struct RecordedReply {
  uint64_t id;
  protocol::ReplyKind kind;
  std::string body;  // encoded msgpack, for ok and more
  Status error;      // for error
};

class RecordingSink : public ReplySink {
 public:
  void send_reply(uint64_t id, protocol::ReplyKind kind, std::string body) override {
    std::lock_guard<std::mutex> lock(mutex_);
    replies_.push_back({id, kind, std::move(body), {}});
  }
  void send_error(uint64_t id, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    replies_.push_back({id, protocol::ReplyKind::error, {}, status});
  }
  std::vector<RecordedReply> replies() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return replies_;
  }

 private:
  mutable std::mutex mutex_;  // guards replies_
  std::vector<RecordedReply> replies_;
};

// A Call for `op` whose body is `body` (a catalogue struct), answered into `sink`.
template <class Body>
CallPtr make_call(uint64_t id, const std::string& op, const Body& body, Role role,
                  const std::shared_ptr<RecordingSink>& sink) {
  std::string frame;
  protocol::append_request(frame, id, op, wire::encode(body));
  auto handle = wire::unpack_map(frame.data() + protocol::kHeaderBytes, frame.size() - protocol::kHeaderBytes);
  const msgpack::object* body_object = wire::find_key(handle->get(), "body");  // lives in the handle's zone
  return std::make_shared<Call>(id, op, role, std::move(handle).value(), body_object, sink);
}

}  // namespace cairn::testing
