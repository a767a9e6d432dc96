// Text helpers for messages about settings and keys, shared by the node config (runtime/config.cc)
// and the training job config (model/train_config.cc), so both quote values and suggest keys alike.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cairn::detail {

// The text between double quotes, with quotes, backslashes and control bytes escaped so a message
// shows exactly what was read: quote("a\"b") is "\"a\\\"b\"".
std::string quote(std::string_view text);

// The items with `separator` between them: join({"a", "b"}, ", ") is "a, b".
std::string join(const std::vector<std::string>& items, std::string_view separator);

// Levenshtein distance (insertions, deletions, substitutions) in bytes.
size_t edit_distance(std::string_view a, std::string_view b);

// " (did you mean \"x\"?)" for the candidate closest to `unknown`, or "" when none is close (more
// than max(2, size / 4) edits away). For a dotted key, a candidate with the same last component
// wins outright: node.grace_ms -> shutdown.grace_ms.
std::string did_you_mean(std::string_view unknown, const std::vector<std::string>& candidates);

}  // namespace cairn::detail
