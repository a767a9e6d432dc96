#include "storage/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>

namespace cairn::storage {
namespace {

// OpenSSL's digest calls fail only on allocation failure or misuse; see the class comment.
void check_evp(int rc, const char* call) {
  if (rc == 1) return;
  std::fprintf(stderr, "cairn: OpenSSL %s failed for SHA-256\n", call);
  std::abort();
}

}  // namespace

struct Sha256::Context {
  struct Free {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  std::unique_ptr<EVP_MD_CTX, Free> ctx;

  void init() { check_evp(EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr), "EVP_DigestInit_ex"); }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  context_->ctx.reset(EVP_MD_CTX_new());
  check_evp(context_->ctx != nullptr, "EVP_MD_CTX_new");
  context_->init();
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::string_view bytes) {
  if (bytes.empty()) return;
  check_evp(EVP_DigestUpdate(context_->ctx.get(), bytes.data(), bytes.size()), "EVP_DigestUpdate");
}

std::string Sha256::hex_digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  check_evp(EVP_DigestFinal_ex(context_->ctx.get(), digest, &length), "EVP_DigestFinal_ex");
  context_->init();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

std::string sha256_hex(std::string_view bytes) {
  Sha256 hash;
  hash.update(bytes);
  return hash.hex_digest();
}

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace cairn::storage
