// Turns exceptions thrown by libtorch or the standard library into Status at the model/ boundary.
#pragma once

#include <string_view>

#include "runtime/status.h"

namespace cairn::detail {

// Call only inside a catch block: the Status for the exception being handled, with `context`
// (the operation that failed) in front. c10 errors lose their C++ backtrace; out-of-memory and
// every other exception become Code::internal.
Status current_exception_status(std::string_view context);

}  // namespace cairn::detail
