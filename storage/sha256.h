// SHA-256 digests as 64 lowercase hex characters: the names of blobs in the BlobStore and of
// artifacts in the registry. Computed with OpenSSL's EVP interface; OpenSSL types stay in sha256.cc.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace cairn::storage {

// An incremental SHA-256. Owns one OpenSSL digest context: movable, not copyable, not
// thread-safe. OpenSSL's SHA-256 calls fail only when memory runs out or on a programming error;
// such a failure aborts the process with a message naming the call, since no caller could recover.
// A moved-from Sha256 may only be assigned to or destroyed.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::string_view bytes);
  // The digest of every byte passed to update() since construction or the last hex_digest(), as
  // 64 lowercase hex characters. The hash then starts over, as if newly constructed.
  std::string hex_digest();

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

// The SHA-256 of `bytes` as 64 lowercase hex characters: sha256_hex("") is "e3b0c442...b855".
std::string sha256_hex(std::string_view bytes);

// Whether `s` is exactly 64 characters of [0-9a-f]: the only form of sha256 the store accepts,
// so a name that passes can never leave the store's directories.
bool is_sha256_hex(std::string_view s);

}  // namespace cairn::storage
