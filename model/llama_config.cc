#include "model/llama_config.h"

#include <nlohmann/json.hpp>

#include "model/detail/files.h"

namespace cairn {
namespace {

using nlohmann::json;

Status bad_key(const std::string& key, const json& value, const std::string& allowed) {
  return error(Code::invalid_argument, "\"" + key + "\" is " + value.dump() + ": " + allowed);
}

// Typed readers: a missing or null key leaves *out as it is (the default); a value of the wrong
// type or out of range is an error that names the key. `prefix` names the enclosing object.
class KeyReader {
 public:
  KeyReader(const json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  const json* find(const std::string& key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::string name(const std::string& key) const { return prefix_ + key; }

  Status positive_int(const std::string& key, int64_t* out) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    if (!v->is_number_integer() || v->get<int64_t>() <= 0) return bad_key(name(key), *v, "must be a positive integer");
    *out = v->get<int64_t>();
    return Status::ok_status();
  }
  Status token_id(const std::string& key, std::optional<int64_t>* out) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    if (!v->is_number_integer() || v->get<int64_t>() < 0) return bad_key(name(key), *v, "must be a token id (>= 0) or null");
    *out = v->get<int64_t>();
    return Status::ok_status();
  }
  // A token id or a list of them.
  Status token_ids(const std::string& key, std::vector<int64_t>* out) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    std::vector<int64_t> ids;
    auto add = [&](const json& id) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0) return false;
      ids.push_back(id.get<int64_t>());
      return true;
    };
    bool ok = v->is_array() ? true : add(*v);
    if (v->is_array()) {
      for (const auto& id : *v) ok = ok && add(id);
    }
    if (!ok) return bad_key(name(key), *v, "must be a token id (>= 0), a list of them, or null");
    *out = std::move(ids);
    return Status::ok_status();
  }
  Status number(const std::string& key, double* out, bool positive) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    if (!v->is_number()) return bad_key(name(key), *v, "must be a number");
    double d = v->get<double>();
    if (positive ? !(d > 0) : !(d >= 0)) {
      return bad_key(name(key), *v, positive ? "must be greater than 0" : "must be at least 0");
    }
    *out = d;
    return Status::ok_status();
  }
  Status boolean(const std::string& key, bool* out) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    if (!v->is_boolean()) return bad_key(name(key), *v, "must be true or false");
    *out = v->get<bool>();
    return Status::ok_status();
  }
  Status string(const std::string& key, std::string* out) const {
    const json* v = find(key);
    if (v == nullptr) return Status::ok_status();
    if (!v->is_string()) return bad_key(name(key), *v, "must be a string");
    *out = v->get<std::string>();
    return Status::ok_status();
  }

 private:
  const json& object_;
  std::string prefix_;
};

// Reads the rope type and its parameters from `rope` (rope_parameters or rope_scaling), whose
// theta, if any, replaces the one already in *out.
Status parse_rope(const json& rope, const std::string& key, RopeParameters* out) {
  if (!rope.is_object()) return bad_key(key, rope, "must be an object");
  KeyReader r(rope, key + ".");
  std::string type = "default";
  std::string type_key = r.find("rope_type") != nullptr ? "rope_type" : "type";
  CAIRN_RETURN_IF_ERROR(r.string(type_key, &type));
  if (type == "default") {
    out->type = RopeType::standard;
  } else if (type == "linear") {
    out->type = RopeType::linear;
  } else if (type == "llama3") {
    out->type = RopeType::llama3;
  } else {
    return bad_key(r.name(type_key), json(type), "must be \"default\", \"linear\" or \"llama3\"");
  }
  CAIRN_RETURN_IF_ERROR(r.number("rope_theta", &out->theta, /*positive=*/true));
  if (const json* partial = r.find("partial_rotary_factor"); partial != nullptr && *partial != json(1.0)) {
    return bad_key(r.name("partial_rotary_factor"), *partial, "only 1.0 (rotary on the whole head) is supported");
  }
  if (out->type == RopeType::standard) return Status::ok_status();
  std::vector<std::string> required = {"factor"};
  if (out->type == RopeType::llama3) {
    required.insert(required.end(), {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  }
  for (const auto& name : required) {
    if (r.find(name) == nullptr) {
      return error(Code::invalid_argument, "\"" + r.name(name) + "\" is missing: rope type \"" + type + "\" needs it");
    }
  }
  CAIRN_RETURN_IF_ERROR(r.number("factor", &out->factor, /*positive=*/true));
  CAIRN_RETURN_IF_ERROR(r.number("low_freq_factor", &out->low_freq_factor, /*positive=*/true));
  CAIRN_RETURN_IF_ERROR(r.number("high_freq_factor", &out->high_freq_factor, /*positive=*/true));
  CAIRN_RETURN_IF_ERROR(r.positive_int("original_max_position_embeddings", &out->original_max_position_embeddings));
  if (out->type == RopeType::llama3 && !(out->high_freq_factor > out->low_freq_factor)) {
    return error(Code::invalid_argument, "\"" + r.name("high_freq_factor") + "\" (" +
                                             std::to_string(out->high_freq_factor) + ") must exceed \"" +
                                             r.name("low_freq_factor") + "\" (" +
                                             std::to_string(out->low_freq_factor) + ")");
  }
  return Status::ok_status();
}

Status parse_config_object(const json& config, LlamaConfig* out) {
  if (!config.is_object()) return error(Code::invalid_argument, "not a JSON object");
  KeyReader r(config, "");
  std::string model_type = "llama";
  CAIRN_RETURN_IF_ERROR(r.string("model_type", &model_type));
  if (model_type != "llama") return bad_key("model_type", json(model_type), "only \"llama\" is supported");
  std::string act = "silu";
  CAIRN_RETURN_IF_ERROR(r.string("hidden_act", &act));
  if (act != "silu") return bad_key("hidden_act", json(act), "only \"silu\" (SwiGLU) is supported");

  LlamaConfig c;
  CAIRN_RETURN_IF_ERROR(r.positive_int("vocab_size", &c.vocab_size));
  CAIRN_RETURN_IF_ERROR(r.positive_int("hidden_size", &c.hidden_size));
  CAIRN_RETURN_IF_ERROR(r.positive_int("intermediate_size", &c.intermediate_size));
  CAIRN_RETURN_IF_ERROR(r.positive_int("num_hidden_layers", &c.num_hidden_layers));
  CAIRN_RETURN_IF_ERROR(r.positive_int("num_attention_heads", &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  CAIRN_RETURN_IF_ERROR(r.positive_int("num_key_value_heads", &c.num_key_value_heads));
  if (c.hidden_size % c.num_attention_heads != 0 && r.find("head_dim") == nullptr) {
    return error(Code::invalid_argument, "\"num_attention_heads\" (" + std::to_string(c.num_attention_heads) +
                                             ") must divide \"hidden_size\" (" + std::to_string(c.hidden_size) +
                                             ") when \"head_dim\" is not given");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  CAIRN_RETURN_IF_ERROR(r.positive_int("head_dim", &c.head_dim));
  CAIRN_RETURN_IF_ERROR(r.positive_int("max_position_embeddings", &c.max_position_embeddings));
  CAIRN_RETURN_IF_ERROR(r.number("rms_norm_eps", &c.rms_norm_eps, /*positive=*/true));
  CAIRN_RETURN_IF_ERROR(r.boolean("tie_word_embeddings", &c.tie_word_embeddings));
  CAIRN_RETURN_IF_ERROR(r.boolean("attention_bias", &c.attention_bias));
  CAIRN_RETURN_IF_ERROR(r.boolean("mlp_bias", &c.mlp_bias));
  CAIRN_RETURN_IF_ERROR(r.number("attention_dropout", &c.attention_dropout, /*positive=*/false));
  if (c.attention_dropout >= 1) {
    return bad_key("attention_dropout", json(c.attention_dropout), "must be in [0, 1)");
  }
  CAIRN_RETURN_IF_ERROR(r.number("initializer_range", &c.initializer_range, /*positive=*/false));
  CAIRN_RETURN_IF_ERROR(r.token_id("bos_token_id", &c.bos_token_id));
  CAIRN_RETURN_IF_ERROR(r.token_id("pad_token_id", &c.pad_token_id));
  CAIRN_RETURN_IF_ERROR(r.token_ids("eos_token_id", &c.eos_token_ids));
  CAIRN_RETURN_IF_ERROR(r.string("torch_dtype", &c.checkpoint_dtype));
  CAIRN_RETURN_IF_ERROR(r.string("dtype", &c.checkpoint_dtype));

  // transformers 5 keeps theta and scaling in rope_parameters; earlier versions at the top level.
  CAIRN_RETURN_IF_ERROR(r.number("rope_theta", &c.rope.theta, /*positive=*/true));
  if (const json* params = r.find("rope_parameters"); params != nullptr) {
    CAIRN_RETURN_IF_ERROR(parse_rope(*params, "rope_parameters", &c.rope));
  } else if (const json* scaling = r.find("rope_scaling"); scaling != nullptr) {
    CAIRN_RETURN_IF_ERROR(parse_rope(*scaling, "rope_scaling", &c.rope));
  }
  CAIRN_RETURN_IF_ERROR(c.validate());
  *out = std::move(c);
  return Status::ok_status();
}

std::string_view rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::standard: return "default";
    case RopeType::linear: return "linear";
    case RopeType::llama3: return "llama3";
  }
  return "default";
}

json rope_json(const RopeParameters& rope, bool with_theta) {
  json out = {{"rope_type", rope_type_name(rope.type)}};
  if (with_theta) out["rope_theta"] = rope.theta;
  if (rope.type != RopeType::standard) out["factor"] = rope.factor;
  if (rope.type == RopeType::llama3) {
    out["low_freq_factor"] = rope.low_freq_factor;
    out["high_freq_factor"] = rope.high_freq_factor;
    out["original_max_position_embeddings"] = rope.original_max_position_embeddings;
  }
  return out;
}

json optional_id(const std::optional<int64_t>& id) { return id ? json(*id) : json(nullptr); }

json eos_json(const std::vector<int64_t>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

}  // namespace

Status LlamaConfig::validate() const {
  auto bad = [](const std::string& key, int64_t value, const std::string& allowed) {
    return error(Code::invalid_argument, "\"" + key + "\" is " + std::to_string(value) + ": " + allowed);
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size}, {"hidden_size", hidden_size}, {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers}, {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads}, {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [key, value] : sizes) {
    if (value <= 0) return bad(key, value, "must be a positive integer");
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return bad("num_key_value_heads", num_key_value_heads,
               "must divide \"num_attention_heads\" (" + std::to_string(num_attention_heads) + ")");
  }
  if (head_dim % 2 != 0) return bad("head_dim", head_dim, "must be even (rotary embeddings rotate pairs)");
  if (!(rms_norm_eps > 0)) return error(Code::invalid_argument, "\"rms_norm_eps\" must be greater than 0");
  if (!(rope.theta > 0)) return error(Code::invalid_argument, "\"rope_theta\" must be greater than 0");
  if (!(rope.factor > 0)) return error(Code::invalid_argument, "rope \"factor\" must be greater than 0");
  if (!(attention_dropout >= 0 && attention_dropout < 1)) {
    return error(Code::invalid_argument, "\"attention_dropout\" must be in [0, 1)");
  }
  for (int64_t id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return bad("eos_token_id", id, "must be a token id below vocab_size (" + std::to_string(vocab_size) + ")");
    }
  }
  if (bos_token_id && (*bos_token_id < 0 || *bos_token_id >= vocab_size)) {
    return bad("bos_token_id", *bos_token_id, "must be a token id below vocab_size (" + std::to_string(vocab_size) + ")");
  }
  if (pad_token_id && (*pad_token_id < 0 || *pad_token_id >= vocab_size)) {
    return bad("pad_token_id", *pad_token_id, "must be a token id below vocab_size (" + std::to_string(vocab_size) + ")");
  }
  return Status::ok_status();
}

Result<LlamaConfig> parse_llama_config(std::string_view json_text, const std::string& source) {
  json config = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return error(Code::invalid_argument, source + ": not valid JSON");
  LlamaConfig out;
  Status status = parse_config_object(config, &out);
  if (!status.ok()) return status.with_context(source);
  return out;
}

Result<LlamaConfig> read_llama_config(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  auto text = detail::read_file(config_path);
  if (!text.ok()) return text.status();
  auto config = parse_llama_config(*text, config_path);
  if (!config.ok()) return config.status();

  const std::string generation_path = dir + "/generation_config.json";
  auto generation_text = detail::read_file(generation_path);
  if (!generation_text.ok()) {
    if (generation_text.status().code() == Code::not_found) return config;
    return generation_text.status();
  }
  json generation = json::parse(*generation_text, nullptr, /*allow_exceptions=*/false);
  if (generation.is_discarded() || !generation.is_object()) {
    return error(Code::invalid_argument, generation_path + ": not a JSON object");
  }
  Status status = KeyReader(generation, "").token_ids("eos_token_id", &config->eos_token_ids);
  if (status.ok()) status = config->validate();
  if (!status.ok()) return status.with_context(generation_path);
  return config;
}

std::string llama_config_to_json(const LlamaConfig& c, std::string_view dtype) {
  json out = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_bias", c.attention_bias},
      {"mlp_bias", c.mlp_bias},
      {"attention_dropout", c.attention_dropout},
      {"initializer_range", c.initializer_range},
      {"pretraining_tp", 1},
      {"use_cache", true},
      {"bos_token_id", optional_id(c.bos_token_id)},
      {"eos_token_id", eos_json(c.eos_token_ids)},
      {"pad_token_id", optional_id(c.pad_token_id)},
      // transformers 4 reads these two; 5 reads rope_parameters (and accepts the others).
      {"rope_theta", c.rope.theta},
      {"rope_scaling", c.rope.type == RopeType::standard ? json(nullptr) : rope_json(c.rope, false)},
      {"rope_parameters", rope_json(c.rope, true)},
      {"torch_dtype", dtype},
      {"dtype", dtype},
  };
  return out.dump(2) + "\n";
}

std::string generation_config_to_json(const LlamaConfig& c) {
  json out = {{"bos_token_id", optional_id(c.bos_token_id)},
              {"eos_token_id", eos_json(c.eos_token_ids)},
              {"pad_token_id", optional_id(c.pad_token_id)}};
  return out.dump(2) + "\n";
}

std::string_view precision_name(Precision precision) {
  switch (precision) {
    case Precision::float32: return "float32";
    case Precision::bfloat16: return "bfloat16";
    case Precision::float16: return "float16";
  }
  return "float32";
}

std::optional<Precision> precision_from_name(std::string_view name) {
  if (name == "float32" || name == "fp32") return Precision::float32;
  if (name == "bfloat16" || name == "bf16") return Precision::bfloat16;
  if (name == "float16" || name == "fp16") return Precision::float16;
  return std::nullopt;
}

}  // namespace cairn
