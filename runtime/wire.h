// The wire codec: msgpack maps <-> C++ structs, and the frames that carry them.
//
// A message type lists its fields once, and that one list drives encoding, decoding and the error
// messages that name a bad field:
//
//   struct EchoRequest {
//     Raw payload;
//     template <class V> void fields(V& v) { v("payload", payload); }
//   };
//
// v(key, member) is a required field; v.optional(key, member) keeps the member's default when the
// key is absent. std::optional<T> members are left out of the encoded map while empty.
// Unknown keys are ignored, so newer peers can talk to older ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <msgpack.hpp>

#include "runtime/status.h"

namespace cairn::wire {

// Appends everything msgpack writes to a std::string the caller owns.
struct AppendBuffer {
  std::string* out;
  void write(const char* data, size_t size) { out->append(data, size); }
};
// A msgpack packer that can also append bytes that are already encoded (Raw values, bodies).
class Packer : public msgpack::packer<AppendBuffer> {
 public:
  explicit Packer(AppendBuffer& buffer) : msgpack::packer<AppendBuffer>(buffer), buffer_(buffer) {}
  void write_encoded(const char* data, size_t size) { buffer_.write(data, size); }

 private:
  AppendBuffer& buffer_;
};

// A msgpack value kept as its encoded bytes: for fields typed `any`. Empty bytes encode nil.
struct Raw {
  std::string bytes;
  bool operator==(const Raw& other) const { return bytes == other.bytes; }
};

// A msgpack `bin` value (files, tensors). A plain std::string field is a msgpack `str`.
struct Bytes {
  std::string data;
  bool operator==(const Bytes& other) const { return data == other.data; }
};

// A decoded msgpack value together with the memory it points into. Movable, not copyable.
using ObjectHandle = msgpack::object_handle;

// The longest chain of nested arrays and maps a frame may hold.
inline constexpr size_t kMaxDepth = 64;

// Decodes exactly one msgpack value from `data`. Every container and string is bounded by the size
// of the input, so hostile bytes cannot make it allocate more than the frame holds. Trailing bytes
// and anything that is not a map are Code::bad_frame.
Result<ObjectHandle> unpack_map(const char* data, size_t size);

// A human name for the type of a msgpack value ("string", "map", ...), for error messages.
std::string_view type_name(const msgpack::object& obj);

// Looks up a string key in a msgpack map; nullptr when absent.
const msgpack::object* find_key(const msgpack::object& map, std::string_view key);

namespace detail {

template <class T, class = void>
struct has_fields : std::false_type {};
template <class T>
struct has_fields<T, std::void_t<decltype(std::declval<T&>().fields(std::declval<int&>()))>>
    : std::true_type {};

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};
template <class T>
struct is_map : std::false_type {};
template <class T>
struct is_map<std::map<std::string, T>> : std::true_type {};
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

}  // namespace detail

// ---- encoding ----

template <class T>
void pack_value(Packer& pk, const T& value);

namespace detail {

struct FieldCounter {
  uint32_t count = 0;
  template <class T>
  void operator()(const char*, const T& value) { count += present(value); }
  template <class T>
  void optional(const char*, const T& value) { count += present(value); }
  template <class T>
  static bool present(const T& value) {
    if constexpr (is_optional<T>::value) return value.has_value();
    return true;
  }
};

struct FieldPacker {
  Packer& pk;
  template <class T>
  void operator()(const char* key, const T& value) {
    if constexpr (is_optional<T>::value) {
      if (!value) return;
    }
    pk.pack_str(static_cast<uint32_t>(std::strlen(key)));
    pk.pack_str_body(key, static_cast<uint32_t>(std::strlen(key)));
    pack_value(pk, value);
  }
  template <class T>
  void optional(const char* key, const T& value) { (*this)(key, value); }
};

}  // namespace detail

template <class T>
void pack_value(Packer& pk, const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    value ? pk.pack_true() : pk.pack_false();
  } else if constexpr (std::is_integral_v<T> || std::is_floating_point_v<T>) {
    pk.pack(value);
  } else if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, std::string_view>) {
    pk.pack_str(static_cast<uint32_t>(value.size()));
    pk.pack_str_body(value.data(), static_cast<uint32_t>(value.size()));
  } else if constexpr (std::is_same_v<T, Bytes>) {
    pk.pack_bin(static_cast<uint32_t>(value.data.size()));
    pk.pack_bin_body(value.data.data(), static_cast<uint32_t>(value.data.size()));
  } else if constexpr (std::is_same_v<T, Raw>) {
    if (value.bytes.empty()) {
      pk.pack_nil();
    } else {
      pk.write_encoded(value.bytes.data(), value.bytes.size());
    }
  } else if constexpr (detail::is_optional<T>::value) {
    if (value) {
      pack_value(pk, *value);
    } else {
      pk.pack_nil();
    }
  } else if constexpr (detail::is_vector<T>::value) {
    pk.pack_array(static_cast<uint32_t>(value.size()));
    for (const auto& item : value) pack_value(pk, item);
  } else if constexpr (detail::is_map<T>::value) {
    pk.pack_map(static_cast<uint32_t>(value.size()));
    for (const auto& [key, item] : value) {
      pack_value(pk, key);
      pack_value(pk, item);
    }
  } else {
    static_assert(detail::has_fields<T>::value, "wire: type has no fields() list");
    auto& mutable_value = const_cast<T&>(value);  // fields() is shared with decoding
    detail::FieldCounter counter;
    mutable_value.fields(counter);
    pk.pack_map(counter.count);
    detail::FieldPacker packer{pk};
    mutable_value.fields(packer);
  }
}

// The msgpack encoding of an already decoded value (a reply body handed on as bytes).
std::string encode_object(const msgpack::object& obj);

// Appends the msgpack encoding of `value` to `out`.
template <class T>
void encode_into(std::string& out, const T& value) {
  AppendBuffer buffer{&out};
  Packer pk(buffer);
  pack_value(pk, value);
}

template <class T>
std::string encode(const T& value) {
  std::string out;
  encode_into(out, value);
  return out;
}

// ---- decoding ----

template <class T>
Status read_value(const msgpack::object& obj, T& out, const std::string& path);

namespace detail {

Status type_error(const std::string& path, std::string_view expected, const msgpack::object& got);
Status read_raw(const msgpack::object& obj, Raw& out);

template <class Int>
Status read_integer(const msgpack::object& obj, Int& out, const std::string& path) {
  if (obj.type == msgpack::type::POSITIVE_INTEGER) {
    uint64_t v = obj.via.u64;
    if (v > static_cast<uint64_t>(std::numeric_limits<Int>::max())) {
      return Status(Code::bad_request, "field \"" + path + "\": " + std::to_string(v) +
                                           " is out of range (at most " +
                                           std::to_string(std::numeric_limits<Int>::max()) + ")");
    }
    out = static_cast<Int>(v);
    return {};
  }
  if (obj.type == msgpack::type::NEGATIVE_INTEGER) {
    int64_t v = obj.via.i64;
    if constexpr (std::is_unsigned_v<Int>) {
      return Status(Code::bad_request, "field \"" + path + "\": expected a non-negative integer, got " +
                                           std::to_string(v));
    } else {
      if (v < static_cast<int64_t>(std::numeric_limits<Int>::min())) {
        return Status(Code::bad_request, "field \"" + path + "\": " + std::to_string(v) +
                                             " is out of range");
      }
      out = static_cast<Int>(v);
      return {};
    }
  }
  return type_error(path, std::is_unsigned_v<Int> ? "a non-negative integer" : "an integer", obj);
}

struct FieldReader {
  const msgpack::object& map;
  const std::string& prefix;
  Status status;

  template <class T>
  void operator()(const char* key, T& value) { read(key, value, /*required=*/true); }
  template <class T>
  void optional(const char* key, T& value) { read(key, value, /*required=*/false); }

 private:
  std::string path_of(const char* key) const { return prefix.empty() ? key : prefix + "." + key; }

  template <class T>
  void read(const char* key, T& value, bool required) {
    if (!status.ok()) return;
    const msgpack::object* field = find_key(map, key);
    if (field == nullptr || (is_optional<T>::value && field->type == msgpack::type::NIL)) {
      if (required && !is_optional<T>::value) {
        status = Status(Code::bad_request, "field \"" + path_of(key) + "\" is missing");
      }
      return;
    }
    status = read_value(*field, value, path_of(key));
  }
};

}  // namespace detail

// Reads `obj` into `out`; `path` names the value in errors ("" for the top level).
template <class T>
Status read_value(const msgpack::object& obj, T& out, const std::string& path) {
  using msgpack::type::object_type;
  if constexpr (std::is_same_v<T, bool>) {
    if (obj.type != object_type::BOOLEAN) return detail::type_error(path, "a boolean", obj);
    out = obj.via.boolean;
    return {};
  } else if constexpr (std::is_integral_v<T>) {
    return detail::read_integer(obj, out, path);
  } else if constexpr (std::is_floating_point_v<T>) {
    switch (obj.type) {
      case object_type::FLOAT32:
      case object_type::FLOAT64: out = static_cast<T>(obj.via.f64); return {};
      case object_type::POSITIVE_INTEGER: out = static_cast<T>(obj.via.u64); return {};
      case object_type::NEGATIVE_INTEGER: out = static_cast<T>(obj.via.i64); return {};
      default: return detail::type_error(path, "a number", obj);
    }
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (obj.type != object_type::STR) return detail::type_error(path, "a string", obj);
    out.assign(obj.via.str.ptr, obj.via.str.size);
    return {};
  } else if constexpr (std::is_same_v<T, Bytes>) {
    if (obj.type == object_type::BIN) {
      out.data.assign(obj.via.bin.ptr, obj.via.bin.size);
    } else if (obj.type == object_type::STR) {
      out.data.assign(obj.via.str.ptr, obj.via.str.size);
    } else {
      return detail::type_error(path, "binary data", obj);
    }
    return {};
  } else if constexpr (std::is_same_v<T, Raw>) {
    return detail::read_raw(obj, out);
  } else if constexpr (detail::is_optional<T>::value) {
    typename T::value_type value{};
    CAIRN_RETURN_IF_ERROR(read_value(obj, value, path));
    out = std::move(value);
    return {};
  } else if constexpr (detail::is_vector<T>::value) {
    if (obj.type != object_type::ARRAY) return detail::type_error(path, "an array", obj);
    out.clear();
    out.resize(obj.via.array.size);
    for (uint32_t i = 0; i < obj.via.array.size; ++i) {
      CAIRN_RETURN_IF_ERROR(read_value(obj.via.array.ptr[i], out[i], path + "[" + std::to_string(i) + "]"));
    }
    return {};
  } else if constexpr (detail::is_map<T>::value) {
    if (obj.type != object_type::MAP) return detail::type_error(path, "a map", obj);
    out.clear();
    for (uint32_t i = 0; i < obj.via.map.size; ++i) {
      const auto& kv = obj.via.map.ptr[i];
      if (kv.key.type != object_type::STR) return detail::type_error(path + " key", "a string", kv.key);
      std::string key(kv.key.via.str.ptr, kv.key.via.str.size);
      typename T::mapped_type value{};
      CAIRN_RETURN_IF_ERROR(read_value(kv.val, value, path + "." + key));
      out.emplace(std::move(key), std::move(value));
    }
    return {};
  } else {
    static_assert(detail::has_fields<T>::value, "wire: type has no fields() list");
    if (obj.type != object_type::MAP) {
      return detail::type_error(path.empty() ? std::string("body") : path, "a map", obj);
    }
    detail::FieldReader reader{obj, path, {}};
    out.fields(reader);
    return reader.status;
  }
}

// Decodes a message body. A nil or absent body reads as an empty map.
template <class T>
Result<T> decode(const msgpack::object& obj) {
  T out{};
  if (obj.type == msgpack::type::NIL) {
    msgpack::object empty_map;
    empty_map.type = msgpack::type::MAP;
    empty_map.via.map.size = 0;
    empty_map.via.map.ptr = nullptr;
    Status s = read_value(empty_map, out, "");
    if (!s.ok()) return s;
    return out;
  }
  Status s = read_value(obj, out, "");
  if (!s.ok()) return s;
  return out;
}

// Decodes a whole encoded message (e.g. a reply body) with the same limits as frames.
template <class T>
Result<T> decode_bytes(std::string_view bytes) {
  if (bytes.empty()) return decode<T>(msgpack::object());
  auto handle = unpack_map(bytes.data(), bytes.size());
  if (!handle.ok()) return handle.status();
  return decode<T>(handle->get());
}

}  // namespace cairn::wire
