// Fixed-width big-endian integers: byte order equals numeric order for unsigned values, so they
// also serve as ordered key parts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cairn::storage::detail {

inline constexpr size_t kFixed64Bytes = 8;

inline std::string encode_fixed64(uint64_t value) {
  std::string out(kFixed64Bytes, '\0');
  for (size_t i = 0; i < kFixed64Bytes; ++i) {
    out[kFixed64Bytes - 1 - i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return out;
}

// nullopt when `bytes` is not exactly kFixed64Bytes long.
inline std::optional<uint64_t> decode_fixed64(std::string_view bytes) {
  if (bytes.size() != kFixed64Bytes) return std::nullopt;
  uint64_t value = 0;
  for (char byte : bytes) value = (value << 8) | static_cast<unsigned char>(byte);
  return value;
}

}  // namespace cairn::storage::detail
