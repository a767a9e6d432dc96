// Byte encodings used by the registry store: order-preserving integers for key parts, hex run
// ids, and the opaque page tokens its listings hand out. The key layout that uses them is
// documented at the top of storage/registry_store.cc.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"
#include "runtime/wire.h"

namespace cairn::storage::detail {

// int64 as 8 big-endian bytes with the sign bit flipped: byte order equals numeric order.
std::string ordered_i64(int64_t value);
// The inverse; nullopt unless `bytes` is exactly 8 bytes.
std::optional<int64_t> decode_ordered_i64(std::string_view bytes);
// ~value as 8 big-endian bytes: byte order is the reverse of numeric order (newest first).
std::string inverted_u64(uint64_t value);
std::optional<uint64_t> decode_inverted_u64(std::string_view bytes);

// Lowercase hex of arbitrary bytes, and back (nullopt for odd length or a non-hex char, upper
// case included: ids are canonical lowercase).
std::string to_hex(std::string_view bytes);
std::optional<std::string> from_hex(std::string_view hex);

// A non-negative decimal integer without sign, leading zeros (except "0") or overflow; the
// form experiment ids and version numbers take. nullopt otherwise.
std::optional<uint64_t> parse_decimal(std::string_view text);

// RFC 4648 base64url without padding, and back (nullopt for a char outside the alphabet or an
// impossible length).
std::string base64url(std::string_view bytes);
std::optional<std::string> from_base64url(std::string_view text);

// 64-bit FNV-1a over the parts, each followed by a 0xff separator (which no UTF-8 text contains),
// so ("ab","c") and ("a","bc") differ. Used to tie a page token to the query that issued it.
uint64_t fingerprint(std::initializer_list<std::string_view> parts);
uint64_t fingerprint_list(uint64_t seed, const std::vector<std::string>& parts);

// One sort value of an ordered listing. rank orders before the value, whatever the direction:
// 0 a value, 1 NaN, 2 no value (MLflow puts NaN and missing values last).
struct SortValue {
  uint8_t rank = 0;
  double number = 0;
  std::string text;
  bool operator==(const SortValue& other) const;
  template <class V>
  void fields(V& v) {
    v("r", rank);
    v.optional("n", number);
    v.optional("t", text);
  }
};

// Where the next page starts. A listing in key order resumes after `key` (a scan cursor); a
// sorted listing resumes after the item with these sort `values`, ties broken by `unique`.
struct PageToken {
  uint64_t query = 0;  // fingerprint of the query (op, filter, order, scope) that issued it
  wire::Bytes key;
  std::vector<SortValue> values;
  wire::Bytes unique;
  template <class V>
  void fields(V& v) {
    v("q", query);
    v.optional("k", key);
    v.optional("v", values);
    v.optional("u", unique);
  }
};

std::string encode_page_token(const PageToken& token);
// bad_request naming `field` when `text` is not a token this store issued, or was issued for a
// different query (another filter, order, experiment set or model).
Result<PageToken> decode_page_token(std::string_view text, uint64_t query,
                                    std::string_view field = "page_token");

}  // namespace cairn::storage::detail
