#include "cluster/auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace cairn {
namespace {

constexpr size_t kMinTokenLength = 16;

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

std::string generate_token() {
  std::random_device rd;  // /dev/urandom on Linux
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (int i = 0; i < 8; ++i) {
    uint32_t word = rd();
    for (int j = 0; j < 8; ++j) {
      out.push_back(kHex[word & 0xf]);
      word >>= 4;
    }
  }
  return out;
}

Result<TokenStore> TokenStore::parse(std::string_view text, const std::string& source_name) {
  TokenStore store;
  std::istringstream in{std::string(text)};
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.erase(hash);
    std::istringstream words(line);
    std::string role_text, token, extra;
    if (!(words >> role_text)) continue;
    const std::string where = source_name + ":" + std::to_string(line_no);
    if (!(words >> token)) {
      return Status(Code::invalid_argument, where + ": expected \"<role> <token>\", got only \"" + role_text + "\"");
    }
    if (words >> extra) {
      return Status(Code::invalid_argument, where + ": expected \"<role> <token>\", got more than two words");
    }
    auto role = role_from_name(role_text);
    if (!role) {
      return Status(Code::invalid_argument,
                    where + ": unknown role \"" + role_text + "\" (allowed: admin, client)");
    }
    if (token.size() < kMinTokenLength) {
      return Status(Code::invalid_argument, where + ": token is too short (" + std::to_string(token.size()) +
                                                " characters; at least " + std::to_string(kMinTokenLength) + ")");
    }
    store.tokens_.emplace_back(*role, std::move(token));
  }
  if (store.tokens_.empty()) {
    return Status(Code::invalid_argument, source_name + ": no tokens (expected lines \"<role> <token>\")");
  }
  return store;
}

Result<TokenStore> TokenStore::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status(Code::invalid_argument, path + ": cannot read token file");
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

Result<bool> TokenStore::create_if_missing(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) return false;
  auto dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return Status(Code::io_error, dir.string() + ": cannot create directory: " + ec.message());
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return Status(Code::io_error, path + ": cannot create token file: " + std::strerror(errno));
  std::string text = "# Cairn node tokens: <role> <token>. Roles: admin (everything), client (no node control).\n"
                     "admin " + generate_token() + "\nclient " + generate_token() + "\n";
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  int saved_errno = errno;
  ::close(fd);
  if (!ok) return Status(Code::io_error, path + ": cannot write token file: " + std::strerror(saved_errno));
  return true;
}

Role TokenStore::authenticate(std::string_view token) const {
  Role found = Role::none;
  for (const auto& [role, stored] : tokens_) {
    if (constant_time_equal(stored, token) && role > found) found = role;
  }
  return found;
}

std::string TokenStore::first_token(Role role) const {
  for (const auto& [r, token] : tokens_) {
    if (r == role) return token;
  }
  return {};
}

}  // namespace cairn
