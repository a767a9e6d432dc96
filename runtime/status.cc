#include "runtime/status.h"

#include <array>

namespace cairn {
namespace {

constexpr std::array<std::string_view, 20> kCodeNames = {
    "ok",          "bad_frame",          "frame_too_large", "bad_request",     "unknown_op",
    "unauthenticated", "permission_denied", "unsupported_version", "overloaded", "timeout",
    "cancelled",   "not_found",          "already_exists",  "unavailable",     "shutting_down",
    "invalid_argument", "io_error",      "data_loss",       "internal",        "",
};
static_assert(static_cast<size_t>(Code::internal) == 18, "keep kCodeNames in step with Code");

}  // namespace

std::string_view code_name(Code code) { return kCodeNames[static_cast<size_t>(code)]; }

std::optional<Code> code_from_name(std::string_view name) {
  for (size_t i = 0; i <= static_cast<size_t>(Code::internal); ++i) {
    if (kCodeNames[i] == name) return static_cast<Code>(i);
  }
  return std::nullopt;
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  std::string out(code_name(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::with_context(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

}  // namespace cairn
