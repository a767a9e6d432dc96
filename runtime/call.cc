#include "runtime/call.h"

#include <atomic>

namespace cairn {

std::string_view role_name(Role role) {
  switch (role) {
    case Role::none: return "none";
    case Role::client: return "client";
    case Role::admin: return "admin";
  }
  return "none";
}

std::optional<Role> role_from_name(std::string_view name) {
  if (name == "client") return Role::client;
  if (name == "admin") return Role::admin;
  return std::nullopt;
}

Call::Call(uint64_t id, std::string op, Role role, wire::ObjectHandle frame, const msgpack::object* body,
           std::weak_ptr<ReplySink> sink, std::string client_name)
    : id_(id),
      op_(std::move(op)),
      role_(role),
      frame_(std::move(frame)),
      body_(body),
      sink_(std::move(sink)),
      client_name_(std::move(client_name)) {}

Call::~Call() {
  if (!finished()) {
    if (auto sink = sink_.lock()) {
      sink->send_error(id_, Status(Code::unavailable, op_ + ": the request was dropped before it was answered (the actor serving it stopped)"));
    }
  }
}

bool Call::claim_final() {
  bool expected = false;
  return finished_.compare_exchange_strong(expected, true, std::memory_order_acq_rel);
}

void Call::reply_encoded(std::string body) {
  if (!claim_final()) return;
  if (auto sink = sink_.lock()) sink->send_reply(id_, protocol::ReplyKind::ok, std::move(body));
}

void Call::more_encoded(std::string body) {
  if (finished()) return;
  if (auto sink = sink_.lock()) sink->send_reply(id_, protocol::ReplyKind::more, std::move(body));
}

void Call::fail(const Status& status) {
  if (!claim_final()) return;
  if (auto sink = sink_.lock()) sink->send_error(id_, status);
}

uint64_t Call::unsent_bytes() const {
  auto sink = sink_.lock();
  return sink ? sink->unsent_bytes() : 0;
}

void Call::cancel(const Status& why) {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lock(hooks_mutex_);
    if (cancelled_) return;
    cancelled_ = true;
    hooks.swap(cancel_hooks_);
  }
  fail(why);
  for (auto& hook : hooks) hook();
}

void Call::on_cancel(std::function<void()> hook) {
  {
    std::lock_guard<std::mutex> lock(hooks_mutex_);
    if (!cancelled_) {
      cancel_hooks_.push_back(std::move(hook));
      return;
    }
  }
  hook();
}

Result<CallPtr> make_call(uint64_t id, const std::string& op, Role role, const std::string& encoded_body,
                          std::weak_ptr<ReplySink> sink, std::string client_name) {
  std::string frame;
  protocol::append_request(frame, id, op, encoded_body);
  auto handle = wire::unpack_map(frame.data() + protocol::kHeaderBytes, frame.size() - protocol::kHeaderBytes);
  if (!handle.ok()) return handle.status().with_context(op);
  const msgpack::object* body = wire::find_key(handle->get(), "body");  // lives in the handle's zone
  return std::make_shared<Call>(id, op, role, std::move(handle).value(), body, std::move(sink), std::move(client_name));
}

uint64_t next_local_call_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace cairn
