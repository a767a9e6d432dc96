// Message helpers shared by the store implementations, so that both report the same errors.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn::storage::detail {

// Bytes as they may appear in a message: printable ASCII as is, anything else (and '\') as
// \xNN, cut after kMaxShownBytes input bytes with a trailing "...". Keys are arbitrary bytes.
inline constexpr size_t kMaxShownBytes = 64;
std::string printable(std::string_view bytes);

// invalid_argument: unknown column family "x" (open families: default, node).
Status unknown_family(std::string_view family, const std::vector<std::string_view>& open_families);

}  // namespace cairn::storage::detail
