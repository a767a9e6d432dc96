// Collective communication among the ranks of one data-parallel job: the contract every transport
// (in-process, TCP ring, NCCL) implements and every trainer codes against. Torch-free.
//
// Distributed contract: every rank calls the same collectives, with the same sizes, in the same
// order. A rank that fails or aborts makes every other rank's pending and later calls fail (with
// `unavailable` or `cancelled`) instead of hanging.
#pragma once

#include <cstddef>
#include <memory>

#include "runtime/status.h"

namespace cairn {

class Collective {
 public:
  virtual ~Collective() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sums `count` floats element-wise across ranks, in place. Blocking. When it returns ok, every
  // rank holds bitwise the same result (each element is reduced in one fixed order), so replicas
  // that apply the same update stay identical. `data` is host memory, except for a GPU
  // communicator, which takes device memory (gpu/).
  virtual Status all_reduce_sum(float* data, size_t count) = 0;

  // Copies `bytes` bytes from rank `root`'s buffer into every other rank's, in place. Blocking.
  virtual Status broadcast(void* data, size_t bytes, int root) = 0;

  // Returns once every rank has entered it.
  virtual Status barrier() = 0;

  // Makes pending and later calls on every rank fail. Safe from any thread, more than once.
  virtual void abort() = 0;
};

// Runs all-reduces of gradient buckets on a background thread, so communication overlaps the
// backward pass: the trainer submits each bucket as soon as its gradients are final, and waits
// for all of them before the optimizer step. Buckets are reduced in submission order (the same on
// every rank). Not copyable; the destructor waits for submitted work.
class AsyncAllReduce {
 public:
  explicit AsyncAllReduce(Collective& collective);
  ~AsyncAllReduce();
  AsyncAllReduce(const AsyncAllReduce&) = delete;
  AsyncAllReduce& operator=(const AsyncAllReduce&) = delete;

  // Queues all_reduce_sum(data, count). `data` must stay valid and untouched until wait() returns.
  void submit(float* data, size_t count);
  // Waits for every submitted bucket; the first error, if any (later buckets are then skipped).
  // A failure is sticky: every bucket submitted after it is skipped too and every later wait()
  // returns it, because the ranks are then out of step and the communicator must be rebuilt.
  Status wait();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cairn
