#include "storage/detail/registry_codec.h"

#include <cmath>
#include <limits>

#include "storage/detail/big_endian.h"

namespace cairn::storage::detail {
namespace {

constexpr uint64_t kSignBit = uint64_t{1} << 63;
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;
constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

uint64_t fnv_add(uint64_t hash, std::string_view part) {
  for (char c : part) {
    hash ^= static_cast<unsigned char>(c);
    hash *= kFnvPrime;
  }
  hash ^= 0xff;
  hash *= kFnvPrime;
  return hash;
}

int base64_digit(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string ordered_i64(int64_t value) {
  return encode_fixed64(static_cast<uint64_t>(value) ^ kSignBit);
}

std::optional<int64_t> decode_ordered_i64(std::string_view bytes) {
  auto raw = decode_fixed64(bytes);
  if (!raw) return std::nullopt;
  return static_cast<int64_t>(*raw ^ kSignBit);
}

std::string inverted_u64(uint64_t value) {
  return encode_fixed64(~value);
}

std::optional<uint64_t> decode_inverted_u64(std::string_view bytes) {
  auto raw = decode_fixed64(bytes);
  if (!raw) return std::nullopt;
  return ~*raw;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    out += kHex[byte >> 4];
    out += kHex[byte & 0xf];
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int high = hex_digit(hex[i]);
    const int low = hex_digit(hex[i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>((high << 4) | low);
  }
  return out;
}

std::optional<uint64_t> parse_decimal(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  if (text.size() > 1 && text[0] == '0') return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

std::string base64url(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += kBase64Alphabet[(n >> 18) & 63];
    out += kBase64Alphabet[(n >> 12) & 63];
    out += kBase64Alphabet[(n >> 6) & 63];
    out += kBase64Alphabet[n & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kBase64Alphabet[(n >> 18) & 63];
    out += kBase64Alphabet[(n >> 12) & 63];
    if (rest == 2) out += kBase64Alphabet[(n >> 6) & 63];
  }
  return out;
}

std::optional<std::string> from_base64url(std::string_view text) {
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    const int digit = base64_digit(c);
    if (digit < 0) return std::nullopt;
    buffer = (buffer << 6) | static_cast<uint32_t>(digit);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  return out;
}

uint64_t fingerprint(std::initializer_list<std::string_view> parts) {
  uint64_t hash = kFnvOffset;
  for (std::string_view part : parts) hash = fnv_add(hash, part);
  return hash;
}

uint64_t fingerprint_list(uint64_t seed, const std::vector<std::string>& parts) {
  uint64_t hash = seed;
  for (const auto& part : parts) hash = fnv_add(hash, part);
  return fnv_add(hash, "");
}

bool SortValue::operator==(const SortValue& other) const {
  if (rank != other.rank) return false;
  if (rank != 0) return true;
  return text == other.text &&
         (number == other.number || (std::isnan(number) && std::isnan(other.number)));
}

std::string encode_page_token(const PageToken& token) {
  return base64url(wire::encode(token));
}

Result<PageToken> decode_page_token(std::string_view text, uint64_t query, std::string_view field) {
  const std::string what(field);
  auto bytes = from_base64url(text);
  if (!bytes) {
    return error(Code::bad_request,
                 what + ": not a page token issued by this registry (not base64url)");
  }
  auto token = wire::decode_bytes<PageToken>(*bytes);
  if (!token.ok()) {
    return error(Code::bad_request, what + ": not a page token issued by this registry");
  }
  if (token->query != query) {
    return error(Code::bad_request,
                 what +
                     ": the token belongs to a different query; pass the same filter, "
                     "order_by and scope as the request that returned it");
  }
  return token;
}

}  // namespace cairn::storage::detail
