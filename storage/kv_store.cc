#include "storage/kv_store.h"

namespace cairn::storage {

void WriteBatch::put(std::string_view family, std::string_view key, std::string_view value) {
  ops_.push_back(Op{OpKind::put, std::string(family), std::string(key), std::string(value)});
}

void WriteBatch::erase(std::string_view family, std::string_view key) {
  ops_.push_back(Op{OpKind::erase, std::string(family), std::string(key), std::string()});
}

}  // namespace cairn::storage
