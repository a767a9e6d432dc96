// Token authentication: which token has which role.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/messages/node.h"
#include "runtime/status.h"

namespace cairn {

// The tokens a node accepts, loaded once at start. Immutable afterwards, so any thread may call
// authenticate() without locking.
class TokenStore {
 public:
  // Parses a token file: one `<role> <token>` per line, `#` comments, blank lines ignored. Errors
  // name the file and line but never echo a token.
  static Result<TokenStore> load(const std::string& path);
  static Result<TokenStore> parse(std::string_view text, const std::string& source_name);
  // Creates `path` (mode 0600, its directory too) with a fresh admin and client token when it does
  // not exist yet; returns whether it created the file.
  static Result<bool> create_if_missing(const std::string& path);

  // The role of `token`, or Role::none. Compares in constant time per stored token, so timing does
  // not reveal how much of a token was right.
  Role authenticate(std::string_view token) const;
  // The first token with exactly this role, for tools that run on the node's machine.
  std::string first_token(Role role) const;
  size_t size() const { return tokens_.size(); }

 private:
  std::vector<std::pair<Role, std::string>> tokens_;
};

// 32 random bytes from the OS, hex encoded.
std::string generate_token();

}  // namespace cairn
