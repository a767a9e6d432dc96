// Builds Calls as the transport would, with a sink that records every reply, for actor tests.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/local_call.h"
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
  return cairn::make_call(id, op, role, wire::encode(body), sink).value();
}

}  // namespace cairn::testing
