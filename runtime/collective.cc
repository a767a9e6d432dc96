#include "runtime/collective.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace cairn {

// One worker thread reduces the queued buckets in submission order. The first failure is sticky:
// later buckets (in this step and every later one) are skipped and wait() keeps returning it, since
// after a failed collective the ranks are out of step and the communicator must be rebuilt.
struct AsyncAllReduce::State {
  explicit State(Collective& c) : collective(c) {}

  Collective& collective;  // constant after construction; outlives this object (caller's contract)

  std::mutex mutex;
  // Protected by mutex.
  std::condition_variable work_ready;  // a bucket was queued, or stopping
  std::condition_variable work_done;   // finished advanced
  std::deque<std::pair<float*, size_t>> queue;
  uint64_t submitted = 0;
  uint64_t finished = 0;  // reduced or skipped
  Status first_error;
  bool stopping = false;

  std::thread worker;  // started last, joined by ~AsyncAllReduce

  void run() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      work_ready.wait(lock, [&] { return stopping || !queue.empty(); });
      if (queue.empty()) return;  // stopping, and everything submitted is done
      auto [data, count] = queue.front();
      queue.pop_front();
      if (first_error.ok()) {
        lock.unlock();
        Status status = collective.all_reduce_sum(data, count);
        lock.lock();
        if (!status.ok() && first_error.ok()) first_error = std::move(status);
      }
      ++finished;
      work_done.notify_all();
    }
  }
};

AsyncAllReduce::AsyncAllReduce(Collective& collective) : state_(std::make_unique<State>(collective)) {
  state_->worker = std::thread([state = state_.get()] { state->run(); });
}

AsyncAllReduce::~AsyncAllReduce() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
  }
  state_->work_ready.notify_one();
  state_->worker.join();
}

void AsyncAllReduce::submit(float* data, size_t count) {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->queue.emplace_back(data, count);
    ++state_->submitted;
  }
  state_->work_ready.notify_one();
}

Status AsyncAllReduce::wait() {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->work_done.wait(lock, [&] { return state_->finished == state_->submitted; });
  return state_->first_error;
}

}  // namespace cairn
