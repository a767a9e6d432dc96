#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "runtime/call.h"
#include "runtime/status.h"

namespace cairn::detail {

// A Call for `op` with `encoded_body` (msgpack), shaped as the protocol transport would make it, so
// that the HTTP front ends (MLflow, OpenAI) dispatch to the same actors as protocol clients. Ids
// come from one process-wide counter; `client_name` is what audit records and logs show.
Result<CallPtr> make_http_call(const std::string& op, Role role, const std::string& encoded_body,
                               const std::shared_ptr<ReplySink>& sink, std::string_view client_name);

}  // namespace cairn::detail
