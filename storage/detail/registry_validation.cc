#include "storage/detail/registry_validation.h"

#include <string>

#include "storage/detail/messages.h"
#include "storage/registry_store.h"

namespace cairn::storage::detail {
namespace {

Status bad(std::string_view field, const std::string& why) {
  return error(Code::bad_request, std::string(field) + ": " + why);
}

// The value as it may appear in a message: quoted, escaped, cut.
std::string shown(std::string_view value) {
  return "'" + printable(value) + "'";
}

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool is_digits(std::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// One semver identifier list (dot-separated, each [0-9A-Za-z-]+); numeric identifiers of the
// prerelease may not have leading zeros.
bool semver_identifiers(std::string_view text, bool numeric_without_leading_zero) {
  if (text.empty()) return false;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('.', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view part = text.substr(start, end - start);
    if (part.empty()) return false;
    for (char c : part) {
      if (!is_alnum(c) && c != '-') return false;
    }
    if (numeric_without_leading_zero && is_digits(part) && part.size() > 1 && part[0] == '0') {
      return false;
    }
    start = end + 1;
  }
  return true;
}

bool semver_number(std::string_view text) {
  return is_digits(text) && (text.size() == 1 || text[0] != '0');
}

}  // namespace

size_t utf8_chars(std::string_view text) {
  size_t chars = 0;
  for (char c : text) chars += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return chars;
}

Status check_length(std::string_view field, std::string_view text, size_t limit) {
  const size_t chars = utf8_chars(text);
  if (chars <= limit) return Status::ok_status();
  return bad(field,
             "is " + std::to_string(chars) + " characters; the limit is " + std::to_string(limit));
}

Status check_entity_key(std::string_view field, std::string_view key) {
  if (key.empty()) return bad(field, "a key name must be provided");
  for (char c : key) {
    if (!(is_alnum(c) || c == '_' || c == '-' || c == '.' || c == ' ' || c == '/' || c == ':')) {
      return bad(field, "invalid name " + shown(key) +
                            ": names may only contain alphanumerics, underscores (_), dashes (-), "
                            "periods (.), spaces ( ), colons (:) and slashes (/)");
    }
  }
  // MLflow: the name must equal posixpath.normpath(name), and not be ".", start with ".." or "/".
  bool path_ok = key.front() != '/' && key.back() != '/' && key.substr(0, 2) != "..";
  size_t start = 0;
  while (path_ok && start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    const std::string_view segment = key.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") path_ok = false;
    start = end + 1;
  }
  if (!path_ok) {
    return bad(field, "invalid name " + shown(key) +
                          ": names may be treated as file paths and must not resolve to another "
                          "name (no leading or trailing '/', no '//', no '.' or '..' segment)");
  }
  return check_length(field, key, kMaxEntityKeyChars);
}

Status check_experiment_name(std::string_view field, std::string_view name) {
  if (name.empty()) return bad(field, "an experiment name must be provided");
  return check_length(field, name, kMaxExperimentNameChars);
}

Status check_model_name(std::string_view field, std::string_view name) {
  if (name.empty()) return bad(field, "a registered model name must be provided");
  for (char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '/' || c == '@' || byte < 0x20 || byte == 0x7f) {
      return bad(field, "invalid model name " + shown(name) +
                            ": it may not contain '/', '@' or control characters (they separate "
                            "NAME/VERSION and NAME@ALIAS)");
    }
  }
  return check_length(field, name, kMaxModelNameChars);
}

bool is_latest_alias(std::string_view alias) {
  static constexpr std::string_view kLatest = "latest";
  if (alias.size() != kLatest.size()) return false;
  for (size_t i = 0; i < alias.size(); ++i) {
    const char c = alias[i];
    if (static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c) != kLatest[i]) return false;
  }
  return true;
}

Status check_alias(std::string_view field, std::string_view alias) {
  if (alias.empty()) return bad(field, "an alias name must be provided");
  for (char c : alias) {
    if (!(is_alnum(c) || c == '_' || c == '-')) {
      return bad(field,
                 "invalid alias " + shown(alias) +
                     ": names may only contain alphanumerics, underscores (_) and dashes (-)");
    }
  }
  CAIRN_RETURN_IF_ERROR(check_length(field, alias, kMaxAliasChars));
  if (is_latest_alias(alias)) return bad(field, "'latest' (in any case) is reserved: it names the newest version");
  if ((alias[0] == 'v' || alias[0] == 'V') && is_digits(alias.substr(1))) {
    return bad(field, "alias " + shown(alias) + " is reserved: v<number> names a version");
  }
  return Status::ok_status();
}

Status check_semver(std::string_view field, std::string_view label) {
  std::string_view core = label;
  std::string_view prerelease;
  std::string_view build;
  bool has_prerelease = false;
  bool has_build = false;
  if (size_t plus = core.find('+'); plus != std::string_view::npos) {
    build = core.substr(plus + 1);
    core = core.substr(0, plus);
    has_build = true;
  }
  if (size_t dash = core.find('-'); dash != std::string_view::npos) {
    prerelease = core.substr(dash + 1);
    core = core.substr(0, dash);
    has_prerelease = true;
  }
  bool ok = true;
  int parts = 0;
  size_t start = 0;
  while (ok && start <= core.size()) {
    size_t end = core.find('.', start);
    if (end == std::string_view::npos) end = core.size();
    ok = semver_number(core.substr(start, end - start));
    ++parts;
    start = end + 1;
  }
  ok = ok && parts == 3;
  if (ok && has_prerelease) ok = semver_identifiers(prerelease, true);
  if (ok && has_build) ok = semver_identifiers(build, false);
  if (ok) return check_length(field, label, 256);
  return bad(field, shown(label) +
                        " is not a semantic version MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] "
                        "(e.g. 1.2.0, 2.0.0-rc.1+build.5)");
}

Status check_sha256(std::string_view field, std::string_view sha256) {
  bool ok = sha256.size() == 64;
  for (char c : sha256) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (ok) return Status::ok_status();
  return bad(field, shown(sha256) + " is not a sha256 (64 lowercase hex characters)");
}

Status check_artifact_path(std::string_view field, std::string_view path) {
  if (path.empty()) return bad(field, "an artifact path must be provided");
  if (path.size() > kMaxArtifactPathBytes) {
    return bad(field, "is " + std::to_string(path.size()) + " bytes; the limit is " +
                          std::to_string(kMaxArtifactPathBytes));
  }
  if (path.find('\0') != std::string_view::npos) return bad(field, "contains a NUL byte");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view segment = path.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") {
      return bad(field, shown(path) +
                            " is not a relative path inside the version (no leading or trailing "
                            "'/', no '//', no '.' or '..' segment)");
    }
    start = end + 1;
  }
  return Status::ok_status();
}

Status check_non_negative(std::string_view field, int64_t value) {
  if (value >= 0) return Status::ok_status();
  return bad(field, std::to_string(value) + " is negative; times are non-negative Unix ms");
}

bool is_run_status(std::string_view status) {
  return status == "RUNNING" || status == "SCHEDULED" || is_terminal_run_status(status);
}

bool is_terminal_run_status(std::string_view status) {
  return status == "FINISHED" || status == "FAILED" || status == "KILLED";
}

bool is_version_status(std::string_view status) {
  return status == "PENDING_REGISTRATION" || status == "READY" || status == "FAILED_REGISTRATION";
}

}  // namespace cairn::storage::detail
