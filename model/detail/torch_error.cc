#include "model/detail/torch_error.h"

#include <c10/util/Exception.h>

#include <exception>
#include <new>
#include <string>

namespace cairn::detail {

Status current_exception_status(std::string_view context) {
  std::string prefix = std::string(context) + ": ";
  try {
    throw;
  } catch (const c10::Error& e) {
    return error(Code::internal, prefix + "libtorch: " + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return error(Code::internal, prefix + "out of memory");
  } catch (const std::exception& e) {
    return error(Code::internal, prefix + e.what());
  } catch (...) {
    return error(Code::internal, prefix + "unknown exception");
  }
}

}  // namespace cairn::detail
