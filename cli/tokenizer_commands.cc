#include "cli/commands.h"

namespace cairn::cli {

void add_tokenizer_commands(CLI::App&) {}

}  // namespace cairn::cli
