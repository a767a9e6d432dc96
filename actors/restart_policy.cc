#include "actors/restart_policy.h"

#include <algorithm>

namespace cairn {

RestartPolicy::Decision RestartPolicy::on_failure(TimePoint now) {
  while (!failures_.empty() && now - failures_.front() >= options_.window) failures_.pop_front();
  failures_.push_back(now);
  Decision decision;
  decision.failures_in_window = static_cast<uint32_t>(failures_.size());
  if (failures_.size() > options_.max_restarts) {
    decision.escalate = true;
    return decision;
  }
  // initial * 2^(n-1), capped; the shift is bounded so it cannot overflow.
  auto shift = std::min<uint32_t>(decision.failures_in_window - 1, 30);
  auto delay = options_.backoff_initial * (int64_t{1} << shift);
  decision.delay = std::min(delay, options_.backoff_max);
  return decision;
}

}  // namespace cairn
