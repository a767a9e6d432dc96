// The registry's input rules (listed in storage/registry_store.h). Each check returns ok or
// bad_request with a message that starts with `field` (the request field, e.g. "metrics[3].key")
// and says what the rule is.
#pragma once

#include <cstddef>
#include <string_view>

#include "runtime/status.h"

namespace cairn::storage::detail {

// Characters of UTF-8 text: bytes that are not continuation bytes.
size_t utf8_chars(std::string_view text);

// `text` is at most `limit` characters.
Status check_length(std::string_view field, std::string_view text, size_t limit);
// A param, metric or tag key (MLflow's name rule, at most kMaxEntityKeyChars).
Status check_entity_key(std::string_view field, std::string_view key);
Status check_experiment_name(std::string_view field, std::string_view name);
Status check_model_name(std::string_view field, std::string_view name);
// Whether `alias` is "latest" in any case: reserved, it names a model's newest version.
bool is_latest_alias(std::string_view alias);
Status check_alias(std::string_view field, std::string_view alias);
Status check_semver(std::string_view field, std::string_view label);
Status check_sha256(std::string_view field, std::string_view sha256);
Status check_artifact_path(std::string_view field, std::string_view path);
Status check_non_negative(std::string_view field, int64_t value);

bool is_run_status(std::string_view status);
bool is_terminal_run_status(std::string_view status);
bool is_version_status(std::string_view status);

}  // namespace cairn::storage::detail
