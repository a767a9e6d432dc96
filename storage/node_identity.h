// Who this node is and how often it has started, kept in the node's store across restarts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/status.h"
#include "storage/kv_store.h"

namespace cairn::storage {

struct NodeIdentity {
  std::string node_id;          // 32 lowercase hex chars (128 random bits); never changes
  uint64_t boot_count = 0;      // 1 on the first boot, +1 on each later one
  int64_t created_unix_ms = 0;  // when the first boot happened, ms since the Unix epoch (UTC)
};

// The family that holds the identity; open the store with it (families {"node"}).
inline constexpr std::string_view kNodeFamily = "node";

// The keys in kNodeFamily, and their stored format (fixed; never change once released):
//   node_id          the 32 lowercase hex chars, as is;
//   boot_count       uint64, 8 bytes, big-endian;
//   created_unix_ms  int64 (two's complement), 8 bytes, big-endian.
// The three are written together, so a store has all of them or none.
inline constexpr std::string_view kNodeIdKey = "node_id";
inline constexpr std::string_view kBootCountKey = "boot_count";
inline constexpr std::string_view kCreatedUnixMsKey = "created_unix_ms";

// Records one boot and returns the identity including it. On the first boot (no identity
// stored) assigns a random node id from std::random_device and sets the created time to
// `now_unix_ms`; on every boot increments boot_count. Writes durably (sync) in one batch before
// returning. Call once at start-up, before anything else uses kNodeFamily: the read-increment-
// write is not atomic against a concurrent record_boot on the same store.
// Errors: data_loss naming the key when a stored value has the wrong length or format, or only
// some of the keys are stored; the store's error when reading or writing fails.
Result<NodeIdentity> record_boot(KvStore& store, int64_t now_unix_ms);
// The same, with now_unix_ms read from the system clock.
Result<NodeIdentity> record_boot(KvStore& store);

}  // namespace cairn::storage
