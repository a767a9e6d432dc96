#include "cli/commands.h"

namespace cairn::cli {

void add_model_commands(CLI::App&) {}

}  // namespace cairn::cli
