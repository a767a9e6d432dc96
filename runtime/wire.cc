#include "runtime/wire.h"

namespace cairn::wire {

Result<ObjectHandle> unpack_map(const char* data, size_t size) {
  // Every element takes at least one byte, so no count in the input can exceed its size.
  const msgpack::unpack_limit limits(size, size, size, size, size, kMaxDepth);
  std::size_t offset = 0;
  ObjectHandle handle;
  try {
    handle = msgpack::unpack(data, size, offset, nullptr, nullptr, limits);
  } catch (const msgpack::insufficient_bytes&) {
    return Status(Code::bad_frame, "truncated msgpack value");
  } catch (const msgpack::size_overflow& e) {
    return Status(Code::bad_frame, std::string("msgpack value exceeds the frame's limits (") + e.what() + ")");
  } catch (const std::exception& e) {
    return Status(Code::bad_frame, std::string("invalid msgpack: ") + e.what());
  }
  if (offset != size) {
    return Status(Code::bad_frame, std::to_string(size - offset) + " bytes after the msgpack value");
  }
  if (handle.get().type != msgpack::type::MAP) {
    return Status(Code::bad_frame, "expected a msgpack map, got " + std::string(type_name(handle.get())));
  }
  return handle;
}

std::string_view type_name(const msgpack::object& obj) {
  switch (obj.type) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return "a boolean";
    case msgpack::type::POSITIVE_INTEGER: return "an integer";
    case msgpack::type::NEGATIVE_INTEGER: return "a negative integer";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return "a float";
    case msgpack::type::STR: return "a string";
    case msgpack::type::BIN: return "binary data";
    case msgpack::type::ARRAY: return "an array";
    case msgpack::type::MAP: return "a map";
    case msgpack::type::EXT: return "an extension value";
  }
  return "an unknown value";
}

const msgpack::object* find_key(const msgpack::object& map, std::string_view key) {
  if (map.type != msgpack::type::MAP) return nullptr;
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto& k = map.via.map.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key) {
      return &map.via.map.ptr[i].val;
    }
  }
  return nullptr;
}

std::string encode_object(const msgpack::object& obj) {
  std::string out;
  AppendBuffer buffer{&out};
  Packer pk(buffer);
  pk.pack(obj);
  return out;
}

namespace detail {

Status type_error(const std::string& path, std::string_view expected, const msgpack::object& got) {
  std::string where = path.empty() ? std::string("value") : "field \"" + path + "\"";
  return Status(Code::bad_request,
                where + ": expected " + std::string(expected) + ", got " + std::string(type_name(got)));
}

Status read_raw(const msgpack::object& obj, Raw& out) {
  out.bytes = encode_object(obj);
  return {};
}

}  // namespace detail
}  // namespace cairn::wire
