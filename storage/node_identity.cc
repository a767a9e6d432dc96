#include "storage/node_identity.h"

#include <array>
#include <chrono>
#include <exception>
#include <optional>
#include <random>

#include "storage/detail/big_endian.h"

namespace cairn::storage {
namespace {

constexpr size_t kNodeIdBytes = 16;

Status corrupt(std::string_view key, std::string_view why) {
  return error(Code::data_loss, "family " + std::string(kNodeFamily) + " key " +
                                    std::string(key) + ": " + std::string(why));
}

bool is_node_id(std::string_view id) {
  if (id.size() != 2 * kNodeIdBytes) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Result<std::string> random_node_id() {
  static constexpr char kHex[] = "0123456789abcdef";
  try {
    std::random_device device;
    std::string id;
    id.reserve(2 * kNodeIdBytes);
    // random_device yields unsigned int; take one byte of each draw, so its width never matters.
    for (size_t i = 0; i < kNodeIdBytes; ++i) {
      const auto byte = static_cast<unsigned char>(device() & 0xff);
      id += kHex[byte >> 4];
      id += kHex[byte & 0xf];
    }
    return id;
  } catch (const std::exception& e) {
    return error(Code::internal, std::string("std::random_device: ") + e.what());
  }
}

// The fixed64 value at `key`, nullopt when absent, data_loss when the wrong length.
Result<std::optional<uint64_t>> read_fixed64(KvStore& store, std::string_view key) {
  auto stored = store.get(kNodeFamily, key);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return std::optional<uint64_t>();
  auto value = detail::decode_fixed64(**stored);
  if (!value) {
    return corrupt(key, "expected " + std::to_string(detail::kFixed64Bytes) + " bytes, found " +
                            std::to_string((*stored)->size()));
  }
  return std::optional<uint64_t>(*value);
}

}  // namespace

Result<NodeIdentity> record_boot(KvStore& store, int64_t now_unix_ms) {
  auto node_id = store.get(kNodeFamily, kNodeIdKey);
  if (!node_id.ok()) return node_id.status();
  auto boot_count = read_fixed64(store, kBootCountKey);
  if (!boot_count.ok()) return boot_count.status();
  auto created = read_fixed64(store, kCreatedUnixMsKey);
  if (!created.ok()) return created.status();

  NodeIdentity identity;
  WriteBatch batch;
  const bool first_boot = !node_id->has_value();
  if (first_boot) {
    // The keys are written together: one without the others means the store was damaged.
    if (boot_count->has_value()) return corrupt(kBootCountKey, "stored without node_id");
    if (created->has_value()) return corrupt(kCreatedUnixMsKey, "stored without node_id");
    auto fresh_id = random_node_id();
    if (!fresh_id.ok()) return fresh_id.status();
    identity.node_id = std::move(*fresh_id);
    identity.created_unix_ms = now_unix_ms;
    identity.boot_count = 1;
    batch.put(kNodeFamily, kNodeIdKey, identity.node_id);
    batch.put(kNodeFamily, kCreatedUnixMsKey,
              detail::encode_fixed64(static_cast<uint64_t>(identity.created_unix_ms)));
  } else {
    if (!is_node_id(**node_id)) return corrupt(kNodeIdKey, "not 32 lowercase hex chars");
    if (!boot_count->has_value()) return corrupt(kBootCountKey, "missing while node_id is stored");
    if (!created->has_value()) return corrupt(kCreatedUnixMsKey, "missing while node_id is stored");
    identity.node_id = std::move(**node_id);
    identity.created_unix_ms = static_cast<int64_t>(**created);
    identity.boot_count = **boot_count + 1;
  }
  batch.put(kNodeFamily, kBootCountKey, detail::encode_fixed64(identity.boot_count));

  WriteOptions durable;
  durable.sync = true;
  CAIRN_RETURN_IF_ERROR(store.write(batch, durable));
  return identity;
}

Result<NodeIdentity> record_boot(KvStore& store) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return record_boot(store, std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

}  // namespace cairn::storage
