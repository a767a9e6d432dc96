#include "actors/local_call.h"

#include <atomic>
#include <condition_variable>
#include <mutex>

#include <caf/all.hpp>

#include "actors/messages.h"
#include "runtime/protocol.h"

namespace cairn {
namespace {

// Routes a local Call's replies to its handlers. Keeps itself alive (self_) until the final reply,
// since a Call holds its sink only weakly; ~Call's `unavailable` is that final reply when the
// serving actor drops the call.
class CallbackSink final : public ReplySink {
 public:
  static std::shared_ptr<CallbackSink> create(LocalCallHandlers handlers) {
    auto sink = std::shared_ptr<CallbackSink>(new CallbackSink(std::move(handlers)));
    sink->self_ = sink;
    return sink;
  }

  void send_reply(uint64_t, protocol::ReplyKind kind, std::string body) override {
    if (kind == protocol::ReplyKind::more) {
      if (!done_.load() && handlers_.on_more) handlers_.on_more(std::move(body));
      return;
    }
    finish(Result<std::string>(std::move(body)));
  }
  void send_error(uint64_t, const Status& status) override { finish(Result<std::string>(status)); }

 private:
  explicit CallbackSink(LocalCallHandlers handlers) : handlers_(std::move(handlers)) {}

  void finish(Result<std::string> result) {
    if (done_.exchange(true)) return;
    if (handlers_.on_done) handlers_.on_done(std::move(result));
    handlers_ = {};
    self_.reset();  // the caller of send_* holds a reference for the rest of the call
  }

  LocalCallHandlers handlers_;  // used by the one thread that delivers each reply
  std::atomic<bool> done_{false};
  std::shared_ptr<CallbackSink> self_;
};


}  // namespace

CallPtr send_local_call(const Directory& directory, const std::string& actor, const std::string& op,
                        std::string encoded_body, LocalCallHandlers handlers, Role role) {
  auto sink = CallbackSink::create(std::move(handlers));
  // The body was encoded in this process, so it is msgpack.
  CallPtr call = make_call(next_local_call_id(), op, role, encoded_body, sink, "cairn-node").value();
  caf::actor target = directory.find(actor);
  if (!target) {
    call->fail(Status(Code::unavailable, op + ": actor \"" + actor + "\" is not running on this node"));
    return call;
  }
  caf::anon_send(target, CallMessage{op, call});
  return call;
}

Result<std::string> call_local_blocking_encoded(const Directory& directory, const std::string& actor,
                                                const std::string& op, std::string encoded_body,
                                                std::chrono::milliseconds timeout) {
  struct Waiter {
    std::mutex mutex;  // guards result
    std::condition_variable cv;
    std::optional<Result<std::string>> result;
  };
  auto waiter = std::make_shared<Waiter>();
  LocalCallHandlers handlers;
  handlers.on_done = [waiter](Result<std::string> body) {
    {
      std::lock_guard<std::mutex> lock(waiter->mutex);
      waiter->result = std::move(body);
    }
    waiter->cv.notify_all();
  };
  CallPtr call = send_local_call(directory, actor, op, std::move(encoded_body), std::move(handlers));
  std::unique_lock<std::mutex> lock(waiter->mutex);
  if (!waiter->cv.wait_for(lock, timeout, [&] { return waiter->result.has_value(); })) {
    lock.unlock();
    call->cancel(Status(Code::timeout, op + ": no reply from " + actor + " within " +
                                           std::to_string(timeout.count()) + " ms"));
    lock.lock();
    waiter->cv.wait(lock, [&] { return waiter->result.has_value(); });
  }
  return std::move(*waiter->result);
}

}  // namespace cairn
