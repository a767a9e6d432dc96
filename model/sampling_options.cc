#include "model/sampling_options.h"

#include <cmath>
#include <sstream>
#include <string>

namespace cairn {
namespace {

std::string number_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

Status validate_sampling_options(const SamplingOptions& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0) {
    return error(Code::invalid_argument, "temperature " + number_text(o.temperature) +
                                             ": must be 0 (greedy) or a positive number");
  }
  if (o.top_k < 0) {
    return error(Code::invalid_argument, "top_k " + std::to_string(o.top_k) + ": must be 0 (off) or positive");
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) {
    return error(Code::invalid_argument, "top_p " + number_text(o.top_p) + ": must be in (0, 1]");
  }
  if (!(o.min_p >= 0 && o.min_p <= 1)) {
    return error(Code::invalid_argument, "min_p " + number_text(o.min_p) + ": must be in [0, 1]");
  }
  if (!(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty)) {
    return error(Code::invalid_argument,
                 "repetition_penalty " + number_text(o.repetition_penalty) + ": must be a positive number (1 is off)");
  }
  if (!(o.presence_penalty >= -2 && o.presence_penalty <= 2)) {
    return error(Code::invalid_argument, "presence_penalty " + number_text(o.presence_penalty) + ": must be in [-2, 2]");
  }
  if (!(o.frequency_penalty >= -2 && o.frequency_penalty <= 2)) {
    return error(Code::invalid_argument,
                 "frequency_penalty " + number_text(o.frequency_penalty) + ": must be in [-2, 2]");
  }
  return Status::ok_status();
}

}  // namespace cairn
