// JSON <-> catalogue structs, driven by the same fields() list that drives the msgpack codec
// (runtime/wire.h), so the MLflow HTTP layer maps request and reply bodies with no per-field code.
//
// Decoding follows proto3's JSON mapping as MLflow's clients write it:
// - int64 fields accept numbers and decimal strings ("1700000000000"); doubles accept numbers and
//   the strings "NaN", "Infinity", "-Infinity" (and decimal strings);
// - null reads as "absent"; unknown keys are ignored (newer clients talk to older nodes);
// - a missing required field (v(key, member)) fails naming the parameter, as MLflow does.
// Query strings (GET, and DELETE without a body) arrive as strings; with
// DecodeOptions::from_query a list field also accepts one bare value (`?order_by=name`), and
// repeated keys make a list (`?experiment_ids=1&experiment_ids=2`).
//
// Encoding writes required fields always and optional ones unless empty (an empty string, list or
// map, or an unset std::optional); int64 as JSON numbers; non-finite doubles as proto3's strings.
// Every error is Code::bad_request and names the parameter's path, e.g. "metrics[2].value".
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/status.h"
#include "runtime/wire.h"

namespace cairn::mlflow_json {

using Json = nlohmann::json;

struct DecodeOptions {
  // The value came from a query string: a list field also accepts a single value. Default off.
  bool from_query = false;
};

// ---- helpers (mlflow_json.cc) ----

// "Invalid value <got> for parameter '<path>': expected <expected>".
Status invalid_value(const std::string& path, std::string_view expected, const Json& got);
Status missing_parameter(const std::string& path);
// Parses a whole decimal integer string into int64/uint64; false when it is not one or out of range.
bool parse_int64(std::string_view text, int64_t& out);
bool parse_uint64(std::string_view text, uint64_t& out);
// A double from a JSON number or a proto3 JSON string; false otherwise.
bool read_double(const Json& j, double& out);
Json double_to_json(double value);
std::string base64_encode(std::string_view bytes);
// Standard alphabet, padding optional; nullopt when not base64.
std::optional<std::string> base64_decode(std::string_view text);

// A query string ("a=1&b=x%20y&b=z") as a JSON object of strings, repeated keys as a list of
// strings. '+' is a space; %XX is decoded; a malformed escape fails naming the parameter.
Result<Json> parse_query(std::string_view query);

// The text of `value`, with invalid UTF-8 replaced (so a stored byte string can always be sent).
std::string dump(const Json& value);

// ---- decoding ----

template <class T>
Status decode_value(const Json& j, T& out, const std::string& path, const DecodeOptions& options);

namespace detail {

using wire::detail::has_fields;
using wire::detail::is_map;
using wire::detail::is_optional;
using wire::detail::is_vector;

template <class Int>
Status decode_integer(const Json& j, Int& out, const std::string& path) {
  const char* expected = std::is_unsigned_v<Int> ? "a non-negative integer" : "an integer";
  bool ok = false;
  if constexpr (std::is_unsigned_v<Int>) {
    uint64_t v = 0;
    if (j.is_number_unsigned()) {
      v = j.get<uint64_t>();
      ok = true;
    } else if (j.is_number_float()) {
      double d = j.get<double>();
      ok = d >= 0 && d < 18446744073709551616.0 && std::floor(d) == d;
      if (ok) v = static_cast<uint64_t>(d);
    } else if (j.is_string()) {
      ok = parse_uint64(j.get_ref<const std::string&>(), v);
    }
    if (ok && v > static_cast<uint64_t>(std::numeric_limits<Int>::max())) ok = false;
    if (ok) out = static_cast<Int>(v);
  } else {
    int64_t v = 0;
    if (j.is_number_unsigned()) {
      uint64_t u = j.get<uint64_t>();
      ok = u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      v = static_cast<int64_t>(u);
    } else if (j.is_number_integer()) {
      v = j.get<int64_t>();
      ok = true;
    } else if (j.is_number_float()) {
      double d = j.get<double>();
      ok = d >= -9223372036854775808.0 && d < 9223372036854775808.0 && std::floor(d) == d;
      if (ok) v = static_cast<int64_t>(d);
    } else if (j.is_string()) {
      ok = parse_int64(j.get_ref<const std::string&>(), v);
    }
    if (ok && (v < static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
               v > static_cast<int64_t>(std::numeric_limits<Int>::max()))) {
      ok = false;
    }
    if (ok) out = static_cast<Int>(v);
  }
  if (!ok) return invalid_value(path, expected, j);
  return {};
}

struct FieldDecoder {
  const Json& object;
  const std::string& prefix;
  const DecodeOptions& options;
  Status status;

  template <class T>
  void operator()(const char* key, T& value) { read(key, value, /*required=*/true); }
  template <class T>
  void optional(const char* key, T& value) { read(key, value, /*required=*/false); }

 private:
  template <class T>
  void read(const char* key, T& value, bool required) {
    if (!status.ok()) return;
    const std::string path = prefix.empty() ? std::string(key) : prefix + "." + key;
    auto field = object.find(key);
    if (field == object.end() || field->is_null()) {
      if (required && !is_optional<T>::value) status = missing_parameter(path);
      return;
    }
    status = decode_value(*field, value, path, options);
  }
};

}  // namespace detail

template <class T>
Status decode_value(const Json& j, T& out, const std::string& path, const DecodeOptions& options) {
  if constexpr (std::is_same_v<T, bool>) {
    if (j.is_boolean()) {
      out = j.get<bool>();
    } else if (j.is_string() && (j == "true" || j == "false")) {
      out = j == "true";
    } else {
      return invalid_value(path, "a boolean", j);
    }
    return {};
  } else if constexpr (std::is_integral_v<T>) {
    return detail::decode_integer(j, out, path);
  } else if constexpr (std::is_floating_point_v<T>) {
    double d = 0;
    if (!read_double(j, d)) return invalid_value(path, "a number", j);
    out = static_cast<T>(d);
    return {};
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) return invalid_value(path, "a string", j);
    out = j.get<std::string>();
    return {};
  } else if constexpr (std::is_same_v<T, wire::Bytes>) {
    std::optional<std::string> bytes;
    if (j.is_string()) bytes = base64_decode(j.get_ref<const std::string&>());
    if (!bytes) return invalid_value(path, "base64 data", j);
    out.data = std::move(*bytes);
    return {};
  } else if constexpr (detail::is_optional<T>::value) {
    if (j.is_null()) {
      out.reset();
      return {};
    }
    typename T::value_type value{};
    CAIRN_RETURN_IF_ERROR(decode_value(j, value, path, options));
    out = std::move(value);
    return {};
  } else if constexpr (detail::is_vector<T>::value) {
    out.clear();
    if (!j.is_array()) {
      if (!options.from_query) return invalid_value(path, "a list", j);
      out.emplace_back();
      return decode_value(j, out.back(), path, options);
    }
    out.resize(j.size());
    for (size_t i = 0; i < j.size(); ++i) {
      CAIRN_RETURN_IF_ERROR(decode_value(j[i], out[i], path + "[" + std::to_string(i) + "]", options));
    }
    return {};
  } else if constexpr (detail::is_map<T>::value) {
    if (!j.is_object()) return invalid_value(path, "an object", j);
    out.clear();
    for (const auto& [key, item] : j.items()) {
      typename T::mapped_type value{};
      CAIRN_RETURN_IF_ERROR(decode_value(item, value, path + "." + key, options));
      out.emplace(key, std::move(value));
    }
    return {};
  } else {
    static_assert(!std::is_same_v<T, wire::Raw>, "mlflow_json: wire::Raw has no JSON form");
    static_assert(detail::has_fields<T>::value, "mlflow_json: type has no fields() list");
    if (!j.is_object()) return invalid_value(path.empty() ? std::string("body") : path, "an object", j);
    detail::FieldDecoder decoder{j, path, options, {}};
    out.fields(decoder);
    return decoder.status;
  }
}

// Reads a whole request body (a JSON object) into a fields() struct.
template <class T>
Result<T> decode(const Json& j, const DecodeOptions& options = {}) {
  T out{};
  Status s = decode_value(j, out, "", options);
  if (!s.ok()) return s;
  return out;
}

// ---- encoding ----

// The default `extras` of encode(): adds nothing.
struct NoExtras {
  template <class T>
  void operator()(const T&, Json&) const {}
};

template <class T, class Extras>
Json encode_value(const T& value, const Extras& extras);

namespace detail {

template <class T>
bool is_empty_value(const T& value) {
  if constexpr (is_optional<T>::value) {
    return !value.has_value();
  } else if constexpr (std::is_same_v<T, std::string> || is_vector<T>::value || is_map<T>::value) {
    return value.empty();
  } else if constexpr (std::is_same_v<T, wire::Bytes>) {
    return value.data.empty();
  } else {
    return false;  // numbers, booleans and structs are always written
  }
}

template <class Extras>
struct FieldEncoder {
  Json& object;
  const Extras& extras;

  template <class T>
  void operator()(const char* key, const T& value) {
    if constexpr (is_optional<T>::value) {
      if (!value) return;
    }
    object[key] = encode_value(value, extras);
  }
  template <class T>
  void optional(const char* key, const T& value) {
    if (!is_empty_value(value)) object[key] = encode_value(value, extras);
  }
};

}  // namespace detail

template <class T, class Extras>
Json encode_value(const T& value, const Extras& extras) {
  if constexpr (std::is_same_v<T, bool>) {
    return Json(value);
  } else if constexpr (std::is_integral_v<T>) {
    return Json(value);
  } else if constexpr (std::is_floating_point_v<T>) {
    return double_to_json(static_cast<double>(value));
  } else if constexpr (std::is_same_v<T, std::string>) {
    return Json(value);
  } else if constexpr (std::is_same_v<T, wire::Bytes>) {
    return Json(base64_encode(value.data));
  } else if constexpr (detail::is_optional<T>::value) {
    return value ? encode_value(*value, extras) : Json(nullptr);
  } else if constexpr (detail::is_vector<T>::value) {
    Json out = Json::array();
    for (const auto& item : value) out.push_back(encode_value(item, extras));
    return out;
  } else if constexpr (detail::is_map<T>::value) {
    Json out = Json::object();
    for (const auto& [key, item] : value) out[key] = encode_value(item, extras);
    return out;
  } else {
    static_assert(!std::is_same_v<T, wire::Raw>, "mlflow_json: wire::Raw has no JSON form");
    static_assert(detail::has_fields<T>::value, "mlflow_json: type has no fields() list");
    Json out = Json::object();
    detail::FieldEncoder<Extras> encoder{out, extras};
    const_cast<T&>(value).fields(encoder);  // fields() is shared with decoding
    extras(value, out);
    return out;
  }
}

// The JSON form of a fields() struct. `extras(value, json)` is called for every struct encoded,
// innermost first, to add fields the struct does not have (MLflow's compatibility fields).
template <class T, class Extras = NoExtras>
Json encode(const T& value, const Extras& extras = {}) {
  return encode_value(value, extras);
}

}  // namespace cairn::mlflow_json
