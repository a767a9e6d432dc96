#include "model/detail/data_util.h"

#include <cstdio>

namespace cairn::detail {

uint64_t derive_seed(uint64_t seed, std::string_view purpose, uint64_t index) {
  Fnv1a64 h;
  h.u64(seed);
  h.str(purpose);
  h.u64(index);
  return SplitMix64(h.value()).next();
}

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

void Fnv1a64::bytes(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    hash_ ^= p[i];
    hash_ *= 0x100000001b3ull;
  }
}

void Fnv1a64::u64(uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  bytes(b, 8);
}

void Fnv1a64::i32s(const std::vector<int32_t>& values) {
  u64(values.size());
  for (int32_t v : values) {
    auto u = static_cast<uint32_t>(v);
    unsigned char b[4] = {static_cast<unsigned char>(u), static_cast<unsigned char>(u >> 8),
                          static_cast<unsigned char>(u >> 16), static_cast<unsigned char>(u >> 24)};
    bytes(b, 4);
  }
}

void Fnv1a64::str(std::string_view s) {
  u64(s.size());
  bytes(s.data(), s.size());
}

std::string Fnv1a64::hex() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash_));
  return std::string("fnv1a64:") + buf;
}

}  // namespace cairn::detail
