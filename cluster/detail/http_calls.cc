#include "cluster/detail/http_calls.h"

#include <atomic>
#include <cstdint>

#include "runtime/protocol.h"
#include "runtime/wire.h"

namespace cairn::detail {

Result<CallPtr> make_http_call(const std::string& op, Role role, const std::string& encoded_body,
                               const std::shared_ptr<ReplySink>& sink, std::string_view client_name) {
  static std::atomic<uint64_t> next_id{1};
  const uint64_t id = next_id.fetch_add(1, std::memory_order_relaxed);
  std::string frame;
  protocol::append_request(frame, id, op, encoded_body);
  auto handle = wire::unpack_map(frame.data() + protocol::kHeaderBytes, frame.size() - protocol::kHeaderBytes);
  if (!handle.ok()) return handle.status().with_context(op);
  const msgpack::object* body_object = wire::find_key(handle->get(), "body");  // lives in the handle's zone
  return std::make_shared<Call>(id, op, role, std::move(handle).value(), body_object, std::weak_ptr<ReplySink>(sink),
                                std::string(client_name));
}

}  // namespace cairn::detail
