// InProcessGroup: ranks are threads; collectives meet at a barrier and touch each other's buffers.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cluster/collective.h"

namespace cairn {

struct InProcessGroup::State {
  explicit State(int n) : world_size(n), slots(static_cast<size_t>(n)), taken(static_cast<size_t>(n)) {}

  // What a rank brought to the current collective; read by the other ranks between the two
  // barriers of that collective, written by its owner only before the first.
  struct Slot {
    void* data = nullptr;
    size_t size = 0;  // floats for all_reduce_sum, bytes for broadcast
    int root = 0;
  };

  const int world_size;  // constant after construction
  std::vector<Slot> slots;

  std::mutex mutex;
  // Protected by mutex.
  std::condition_variable changed;
  int arrived = 0;          // ranks waiting at the current barrier
  uint64_t generation = 0;  // completed barriers
  Status aborted;           // not ok once the group is aborted
  std::vector<bool> taken;  // members handed out

  // Returns once every rank has arrived (ok), or when the group is aborted first.
  Status arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex);
    if (!aborted.ok()) return aborted;
    uint64_t mine = generation;
    if (++arrived == world_size) {
      arrived = 0;
      ++generation;
      changed.notify_all();
      return {};
    }
    changed.wait(lock, [&] { return generation != mine || !aborted.ok(); });
    // A barrier that completed before the abort counts: the abort is for later calls.
    return generation != mine ? Status{} : aborted;
  }

  void abort(std::string reason) {
    std::lock_guard<std::mutex> lock(mutex);
    if (aborted.ok()) aborted = error(Code::cancelled, std::move(reason));
    changed.notify_all();
  }
};

namespace {

// Every rank's slot must agree with rank 0's: a mismatch is the caller's bug, reported the same way
// on every rank (they all see the same slots).
Status check_slots(const std::vector<InProcessGroup::State::Slot>& slots, const char* op) {
  for (size_t r = 1; r < slots.size(); ++r) {
    if (slots[r].size != slots[0].size || slots[r].root != slots[0].root) {
      return error(Code::invalid_argument,
                   std::string("in-process ") + op + ": ranks disagree: rank 0 passed size " +
                       std::to_string(slots[0].size) + " root " + std::to_string(slots[0].root) + ", rank " +
                       std::to_string(r) + " size " + std::to_string(slots[r].size) + " root " +
                       std::to_string(slots[r].root));
    }
  }
  return {};
}

class InProcessMember final : public Collective {
 public:
  InProcessMember(std::shared_ptr<InProcessGroup::State> state, int rank) : state_(std::move(state)), rank_(rank) {}
  ~InProcessMember() override { state_->abort("in-process group: rank " + std::to_string(rank_) + " left"); }

  int rank() const override { return rank_; }
  int world_size() const override { return state_->world_size; }

  Status all_reduce_sum(float* data, size_t count) override {
    const int n = state_->world_size;
    if (n == 1) return {};
    state_->slots[rank_] = {data, count, 0};
    CAIRN_RETURN_IF_ERROR(state_->arrive_and_wait());
    Status status = check_slots(state_->slots, "all_reduce_sum");
    if (status.ok()) reduce_my_slice(count);
    // Nobody may reuse its slot or buffer until every rank is done with the others'.
    CAIRN_RETURN_IF_ERROR(state_->arrive_and_wait());
    return status;
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    const int n = state_->world_size;
    if (root < 0 || root >= n) {
      return error(Code::invalid_argument, "in-process broadcast: root " + std::to_string(root) +
                                               " is not a rank of a group of " + std::to_string(n));
    }
    if (n == 1) return {};
    state_->slots[rank_] = {data, bytes, root};
    CAIRN_RETURN_IF_ERROR(state_->arrive_and_wait());
    Status status = check_slots(state_->slots, "broadcast");
    if (status.ok() && rank_ != root && bytes > 0) std::memcpy(data, state_->slots[root].data, bytes);
    CAIRN_RETURN_IF_ERROR(state_->arrive_and_wait());
    return status;
  }

  Status barrier() override { return state_->world_size == 1 ? Status{} : state_->arrive_and_wait(); }

  void abort() override { state_->abort("in-process group: aborted by rank " + std::to_string(rank_)); }

 private:
  // Sums elements [count*r/N, count*(r+1)/N) of every rank's buffer in rank order and writes the
  // sum back to all of them. Tiles keep the partial sums in L1 and let the loops vectorize.
  void reduce_my_slice(size_t count) {
    const size_t n = static_cast<size_t>(state_->world_size);
    const size_t begin = count * rank_ / n;
    const size_t end = count * (rank_ + 1) / n;
    constexpr size_t kTile = 2048;
    float sum[kTile];
    std::vector<float*> buffers(n);
    for (size_t r = 0; r < n; ++r) buffers[r] = static_cast<float*>(state_->slots[r].data);
    for (size_t at = begin; at < end; at += kTile) {
      const size_t len = std::min(kTile, end - at);
      std::memcpy(sum, buffers[0] + at, len * sizeof(float));
      for (size_t r = 1; r < n; ++r) {
        const float* in = buffers[r] + at;
        for (size_t i = 0; i < len; ++i) sum[i] += in[i];
      }
      for (size_t r = 0; r < n; ++r) std::memcpy(buffers[r] + at, sum, len * sizeof(float));
    }
  }

  std::shared_ptr<InProcessGroup::State> state_;  // shared with the group and the other members
  const int rank_;
};

}  // namespace

std::shared_ptr<InProcessGroup> InProcessGroup::create(int world_size) {
  if (world_size < 1) return nullptr;
  return std::shared_ptr<InProcessGroup>(new InProcessGroup(std::make_shared<State>(world_size)));
}

std::unique_ptr<Collective> InProcessGroup::member(int rank) {
  if (rank < 0 || rank >= state_->world_size) return nullptr;
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->taken[rank]) return nullptr;
  state_->taken[rank] = true;
  return std::make_unique<InProcessMember>(state_, rank);
}

int InProcessGroup::world_size() const { return state_->world_size; }

}  // namespace cairn
