// AsyncAllReduce against a fake Collective that records the order of calls and injects failures.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <vector>

#include "runtime/collective.h"

namespace cairn {
namespace {

// Doubles each bucket (as a 2-rank sum of equal buffers would), records the order of the buckets,
// fails the call numbered `fail_at` (0-based), and can hold calls until released.
class FakeCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }

  Status all_reduce_sum(float* data, size_t count) override {
    std::unique_lock<std::mutex> lock(mutex_);
    size_t call = calls_.size();
    calls_.push_back(data);
    started_.notify_all();
    released_.wait(lock, [&] { return !hold_; });
    if (static_cast<int>(call) == fail_at_) return error(Code::unavailable, "fake: bucket " + std::to_string(call));
    for (size_t i = 0; i < count; ++i) data[i] *= 2;
    return {};
  }
  Status broadcast(void*, size_t, int) override { return {}; }
  Status barrier() override { return {}; }
  void abort() override {}

  void fail_at(int call) { fail_at_ = call; }
  void hold() {
    std::lock_guard<std::mutex> lock(mutex_);
    hold_ = true;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    hold_ = false;
    released_.notify_all();
  }
  void wait_for_calls(size_t n) {
    std::unique_lock<std::mutex> lock(mutex_);
    started_.wait(lock, [&] { return calls_.size() >= n; });
  }
  std::vector<float*> calls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable started_, released_;
  std::vector<float*> calls_;
  bool hold_ = false;
  int fail_at_ = -1;
};

TEST(AsyncAllReduce, ReducesBucketsInSubmissionOrder) {
  FakeCollective fake;
  std::vector<std::vector<float>> buckets(6, std::vector<float>(100, 1.5f));
  AsyncAllReduce async(fake);
  for (auto& b : buckets) async.submit(b.data(), b.size());
  ASSERT_TRUE(async.wait().ok());
  auto calls = fake.calls();
  ASSERT_EQ(calls.size(), buckets.size());
  for (size_t i = 0; i < buckets.size(); ++i) {
    EXPECT_EQ(calls[i], buckets[i].data()) << "bucket " << i;
    for (float v : buckets[i]) ASSERT_EQ(v, 3.0f);
  }
  // A second step reuses the same object.
  async.submit(buckets[0].data(), buckets[0].size());
  ASSERT_TRUE(async.wait().ok());
  EXPECT_EQ(buckets[0][0], 6.0f);
}

TEST(AsyncAllReduce, SubmitReturnsWhileABucketIsStillReducing) {
  FakeCollective fake;
  fake.hold();
  std::vector<float> a(10, 1.0f), b(10, 1.0f);
  AsyncAllReduce async(fake);
  async.submit(a.data(), a.size());
  fake.wait_for_calls(1);  // the worker is inside the first all-reduce, held
  async.submit(b.data(), b.size());  // does not block on it
  EXPECT_EQ(fake.calls().size(), 1u);
  fake.release();
  ASSERT_TRUE(async.wait().ok());
  EXPECT_EQ(fake.calls().size(), 2u);
  EXPECT_EQ(b[0], 2.0f);
}

TEST(AsyncAllReduce, FirstErrorSkipsLaterBucketsAndSticks) {
  FakeCollective fake;
  fake.fail_at(1);
  std::vector<std::vector<float>> buckets(4, std::vector<float>(8, 1.0f));
  AsyncAllReduce async(fake);
  for (auto& b : buckets) async.submit(b.data(), b.size());
  Status status = async.wait();
  EXPECT_EQ(status.code(), Code::unavailable);
  EXPECT_EQ(status.message(), "fake: bucket 1");
  EXPECT_EQ(fake.calls().size(), 2u);  // buckets 2 and 3 were never sent
  EXPECT_EQ(buckets[2][0], 1.0f);
  async.submit(buckets[0].data(), buckets[0].size());
  EXPECT_EQ(async.wait().message(), "fake: bucket 1");
  EXPECT_EQ(fake.calls().size(), 2u);
}

TEST(AsyncAllReduce, DestructorFinishesSubmittedWork) {
  FakeCollective fake;
  std::vector<float> a(5, 1.0f), b(5, 1.0f);
  {
    AsyncAllReduce async(fake);
    async.submit(a.data(), a.size());
    async.submit(b.data(), b.size());
  }
  EXPECT_EQ(fake.calls().size(), 2u);
  EXPECT_EQ(b[4], 2.0f);
}

TEST(AsyncAllReduce, WaitWithNothingSubmittedIsOk) {
  FakeCollective fake;
  AsyncAllReduce async(fake);
  EXPECT_TRUE(async.wait().ok());
}

}  // namespace
}  // namespace cairn
