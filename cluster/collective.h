// The CPU transports of runtime/collective.h: ranks that are threads of one process
// (InProcessGroup), and ranks that are processes joined by a TCP ring (RingEndpoint). Torch-free.
//
// Both keep the Collective contract: every rank calls the same collectives with the same sizes in
// the same order; all_reduce_sum leaves every rank bitwise the same result; a rank that fails or
// aborts makes the others' pending and later calls fail instead of hanging.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/collective.h"
#include "runtime/config.h"
#include "runtime/status.h"

namespace cairn {

// `world_size` ranks that are threads of one process. Collectives meet at a shared barrier and then
// work on each other's buffers directly: all_reduce_sum has rank r sum slice r of all buffers, in
// rank order 0..N-1, and write it back to every buffer, so the ranks reduce in parallel and the
// result is deterministic and identical everywhere. Thread-safe; members may outlive the group
// handle (they share its state).
class InProcessGroup {
 public:
  // nullptr when world_size < 1.
  static std::shared_ptr<InProcessGroup> create(int world_size);

  // The Collective for `rank`, to be used by one thread at a time. nullptr when rank is outside
  // [0, world_size) or was already taken. Destroying a member aborts the group, as abort() does:
  // the other ranks' pending and later calls fail instead of waiting for it forever.
  std::unique_ptr<Collective> member(int rank);

  int world_size() const;

  struct State;  // detail; public only so members can share it

 private:
  explicit InProcessGroup(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

// How one rank joins a TCP ring. The ring is rank 0 -> 1 -> ... -> N-1 -> 0: each rank connects to
// the next and accepts one connection from the previous.
struct RingOptions {
  int rank = 0;
  int world_size = 1;
  // Every rank's ring address (RingEndpoint::bound() of each rank), indexed by rank. Only
  // peers[(rank + 1) % world_size] is dialled; the rest name peers in errors.
  std::vector<HostPort> peers;
  // Shared by the job's ranks. Each connection starts with a mutual challenge-response (HMAC-SHA256
  // over fresh nonces): a connection that cannot prove it knows the secret is refused, and the
  // secret itself never crosses the wire. Must not be empty when world_size > 1.
  std::string secret;
  // How long connect() keeps dialling the next rank (peers start at different times) and waiting
  // for the previous one, in milliseconds.
  uint32_t connect_timeout_ms = 60000;
  // A collective fails with `unavailable` when its sockets make no progress for this long, in
  // milliseconds. A peer that dies is noticed at once (the kernel closes its sockets); this only
  // catches a hung peer or a lost network, so it is long: a slow rank (evaluating, checkpointing)
  // legitimately keeps the others waiting. 0 = wait forever.
  uint32_t io_timeout_ms = 600000;
  // Each ring step's chunk is sent in pieces of this many bytes, so that sending, receiving and
  // summing overlap. 512 KiB was the fastest on loopback (bench/allreduce_bench.cc).
  size_t chunk_bytes = 512 << 10;
  // SO_SNDBUF / SO_RCVBUF of the ring sockets, in bytes; 0 keeps the kernel's auto-tuning.
  int socket_buffer_bytes = 0;
  // A collective that receives at least this many bytes per rank runs its receive stream (receive
  // and sum) on a thread of its own beside the sending thread; smaller ones run both streams on the
  // calling thread, which saves starting a thread. 8 MiB: on 2-core loopback the thread made 25 and
  // 64 MiB all-reduces faster (1.6x at 25 MiB, and no more rounds where the ranks took turns under
  // load), was even at 8 MiB and slower at 1-4 MiB (bench/RESULTS.md, allreduce_bench --mib).
  size_t receive_thread_min_bytes = size_t{8} << 20;
};

// A listening socket for this rank's ring connection. Two-phase so that a node can bind (and
// publish its address) before it knows its peers. Not copyable.
class RingEndpoint {
 public:
  // Binds and listens on `bind` (port 0 picks a free port). Fails with `unavailable` naming the
  // address when it cannot.
  static Result<std::unique_ptr<RingEndpoint>> listen(const HostPort& bind);
  ~RingEndpoint();
  RingEndpoint(const RingEndpoint&) = delete;
  RingEndpoint& operator=(const RingEndpoint&) = delete;

  // The address actually bound (the real port when port 0 was asked for).
  HostPort bound() const;

  // Joins the ring: dials rank+1 (retrying until connect_timeout_ms) while accepting rank-1 on this
  // endpoint, concurrently. Connections that fail the handshake (wrong secret, wrong rank or world
  // size, garbage) are dropped and accepting goes on. Fails with `unauthenticated` when the next
  // rank does not know the secret or refuses ours, `invalid_argument` for bad options, and
  // `unavailable` naming the peer when the deadline passes. Call at most once; world_size 1 needs no
  // peers and gives a Collective whose calls return at once.
  Result<std::unique_ptr<Collective>> connect(const RingOptions& options);

 private:
  RingEndpoint(int fd, HostPort bound) : fd_(fd), bound_(std::move(bound)) {}
  int fd_ = -1;
  HostPort bound_;
};

}  // namespace cairn
