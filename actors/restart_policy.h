// The supervisor's restart decision, kept free of actors and clocks so it is tested exactly.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>

namespace cairn {

struct RestartOptions {
  uint32_t max_restarts = 5;                         // restarts allowed within `window`
  std::chrono::milliseconds window{60000};           // the sliding window failures are counted in
  std::chrono::milliseconds backoff_initial{100};    // delay before the first restart
  std::chrono::milliseconds backoff_max{10000};      // the delay doubles per failure up to this
};

// One-for-one restart policy for one child: restart with exponential backoff while the child has
// failed at most max_restarts times within the window; past that, escalate.
class RestartPolicy {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  struct Decision {
    bool escalate = false;
    std::chrono::milliseconds delay{0};  // wait this long before restarting (when !escalate)
    uint32_t failures_in_window = 0;     // counting this one
  };

  explicit RestartPolicy(const RestartOptions& options) : options_(options) {}

  // Records a failure at `now` and decides what to do about it. `now` must not go backwards.
  Decision on_failure(TimePoint now);

 private:
  RestartOptions options_;
  std::deque<TimePoint> failures_;  // within the window, oldest first
};

}  // namespace cairn
