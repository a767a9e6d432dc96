// Deterministic randomness and hashing for the data pipeline. Both are defined here, bit for bit,
// rather than taken from <random> (whose distributions differ between standard libraries), so a
// seed gives the same split, shuffle and digest on every platform.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cairn::detail {

// SplitMix64 (Steele, Lea, Flood 2014).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), bound > 0, without modulo bias (rejection).
  uint64_t below(uint64_t bound) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do {
      x = next();
    } while (x >= limit);
    return x % bound;
  }

 private:
  uint64_t state_;
};

// A seed for one purpose ("split", "shuffle") and index (an epoch) derived from a user seed.
uint64_t derive_seed(uint64_t seed, std::string_view purpose, uint64_t index);

// A permutation of 0..n-1: Fisher-Yates with SplitMix64(seed).
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed);

// FNV-1a, 64-bit, fed with fixed-width little-endian integers and length-prefixed strings so the
// digest does not depend on the host's byte order or on where one field ends and the next begins.
class Fnv1a64 {
 public:
  void bytes(const void* data, size_t n);
  void u64(uint64_t v);
  void i32s(const std::vector<int32_t>& values);
  void str(std::string_view s);
  uint64_t value() const { return hash_; }
  // "fnv1a64:" + 16 lower-case hex digits.
  std::string hex() const;

 private:
  uint64_t hash_ = 0xcbf29ce484222325ull;
};

}  // namespace cairn::detail
