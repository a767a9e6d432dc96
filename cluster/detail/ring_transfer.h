// The data path of the TCP ring (cluster/collective.h): a collective is planned as two ordered
// streams of pieces, one sent to the next rank and one received from the previous, where a piece
// may be sent only once a given received piece has landed (and been summed). One thread drives both
// streams: small plans on the calling thread over non-blocking sockets, large ones with a receive
// thread beside the sending caller, so that sending, receiving and summing overlap. (One thread per
// rank was as fast on a quiet 2-core loopback, but under load the two ranks took turns, each asleep
// while the other worked; see bench/RESULTS.md.)
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "runtime/status.h"

namespace cairn::detail {

struct SendPiece {
  const char* data = nullptr;
  size_t bytes = 0;
  // Index into RingPlan::recvs of the piece that must be complete before this one is sent; -1 when
  // it is ready from the start.
  long after_recv = -1;
};

struct RecvPiece {
  char* data = nullptr;  // where the bytes land, or, with add_into, nothing
  size_t bytes = 0;
  // When set, the piece is floats that are added element-wise into add_into (received into a
  // scratch buffer first): add_into[i] = add_into[i] + received[i].
  float* add_into = nullptr;
};

struct RingPlan {
  std::vector<SendPiece> sends;
  std::vector<RecvPiece> recvs;
};

// Bandwidth-optimal ring all-reduce of data[0, count) for `rank` of `world_size`: reduce-scatter,
// then all-gather, over world_size chunks ([count*c/N, count*(c+1)/N)), each step split into pieces
// of at most piece_bytes. Chunk c is summed as it travels the ring from rank c, in the same order
// for every element of it, and then copied unchanged to every rank: the ranks end bitwise equal.
RingPlan plan_all_reduce(float* data, size_t count, int rank, int world_size, size_t piece_bytes);

// Pipelined broadcast from `root` along the ring: root sends, the ranks after it receive each piece
// and pass it on, the rank before root only receives.
RingPlan plan_broadcast(char* data, size_t bytes, int root, int rank, int world_size, size_t piece_bytes);

// Which stream failed, for the caller to name the peer.
enum class RingSide { none, send, recv };

struct TransferOptions {
  int send_fd = -1;  // connected to the next rank
  int recv_fd = -1;  // connected from the previous rank
  // Fails with timeout when neither stream makes progress for this long; 0 = never.
  std::chrono::milliseconds idle_timeout{0};
  // Holds at least the largest add_into piece; reused across transfers.
  std::vector<float>* scratch = nullptr;
  // Plans that receive at least this many bytes (and send something) run the receive stream on a
  // thread of its own beside the send stream; smaller ones run both on the calling thread
  // (RingOptions::receive_thread_min_bytes).
  size_t receive_thread_min_bytes = 0;
};

// Runs `plan` to completion. On failure returns `unavailable` (socket error or peer closed) or
// `timeout`, and sets `failed_side`.
Status run_transfer(const RingPlan& plan, const TransferOptions& options, RingSide& failed_side);

}  // namespace cairn::detail
