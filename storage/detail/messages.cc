#include "storage/detail/messages.h"

#include <algorithm>

namespace cairn::storage::detail {

std::string printable(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const size_t shown = std::min(bytes.size(), kMaxShownBytes);
  out.reserve(shown);
  for (size_t i = 0; i < shown; ++i) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out += static_cast<char>(byte);
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    }
  }
  if (shown < bytes.size()) out += "...";
  return out;
}

Status unknown_family(std::string_view family, const std::vector<std::string_view>& open_families) {
  std::string message = "unknown column family \"" + printable(family) + "\" (open families: ";
  for (size_t i = 0; i < open_families.size(); ++i) {
    if (i > 0) message += ", ";
    message += open_families[i];
  }
  message += ")";
  return error(Code::invalid_argument, std::move(message));
}

}  // namespace cairn::storage::detail
