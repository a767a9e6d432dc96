// Small file helpers shared by the model/ loaders and savers. Torch-free.
#pragma once

#include <string>

#include "runtime/status.h"

namespace cairn::detail {

// The whole file. not_found when it does not exist, io_error when it cannot be read; both name it.
Result<std::string> read_file(const std::string& path);

// Writes `text` to "<path>.tmp-<pid>", syncs it, renames it over `path` and syncs the directory,
// so `path` is either the old file or the complete new one. io_error names the file.
Status write_file_atomically(const std::string& path, const std::string& text);

}  // namespace cairn::detail
