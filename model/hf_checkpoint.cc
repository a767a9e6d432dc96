#include "model/hf_checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <system_error>
#include <vector>

#include "model/detail/files.h"
#include "model/detail/torch_error.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

bool file_exists(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

// Adds every tensor of `path` (all, or only those in `wanted` when it is given) to `out`.
Status read_weights(const std::string& path, const std::set<std::string>* wanted,
                    std::map<std::string, at::Tensor>* out) {
  auto reader = safetensors::Reader::open(path);
  if (!reader.ok()) return reader.status();
  if (wanted != nullptr) {
    for (const auto& name : *wanted) {
      if (reader->find(name) == nullptr) {
        return error(Code::data_loss, path + ": the index places tensor \"" + name + "\" here, but the file lacks it");
      }
    }
  }
  for (const auto& info : reader->tensors()) {
    if (wanted != nullptr && wanted->count(info.name) == 0) continue;
    auto tensor = safetensors::read_tensor(*reader, info);
    if (!tensor.ok()) return tensor.status();
    if (!out->emplace(info.name, std::move(*tensor)).second) {
      return error(Code::data_loss, path + ": tensor \"" + info.name + "\" is also in another shard");
    }
  }
  return Status::ok_status();
}

// The shards an index names, with the tensors each holds.
Result<std::map<std::string, std::set<std::string>>> read_index(const std::string& path) {
  auto text = detail::read_file(path);
  if (!text.ok()) return text.status();
  json index = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) return error(Code::data_loss, path + ": not a JSON object");
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object() || map->empty()) {
    return error(Code::data_loss, path + ": \"weight_map\" is missing, empty or not an object");
  }
  std::map<std::string, std::set<std::string>> shards;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return error(Code::data_loss, path + ": \"weight_map\" entry \"" + it.key() + "\" is not a file name");
    }
    const std::string file = it.value().get<std::string>();
    // Shards sit beside the index: a path would let an index reach any file.
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return error(Code::data_loss, path + ": \"weight_map\" entry \"" + it.key() + "\" names \"" + file +
                                        "\", not a file in the same directory");
    }
    shards[file].insert(it.key());
  }
  return shards;
}

std::string shard_name(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index, count);
  return name;
}

// Removes weights files that a save of the other layout (or another shard count) left behind.
void remove_stale_weights(const fs::path& dir, const std::set<std::string>& keep) {
  static const std::regex kShard(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (keep.count(name) != 0) continue;
    if (name == kSingleFile || name == kIndexFile || std::regex_match(name, kShard)) fs::remove(entry.path(), ec);
  }
}

}  // namespace

Result<LlamaModel> load_llama(const std::string& dir, const ModelOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return error(Code::not_found, dir + ": no such directory");
  auto config = read_llama_config(dir);
  if (!config.ok()) return config.status();

  std::map<std::string, at::Tensor> weights;
  const fs::path root(dir);
  std::string source;
  if (file_exists(root / kSingleFile)) {
    source = (root / kSingleFile).string();
    CAIRN_RETURN_IF_ERROR(read_weights(source, nullptr, &weights));
  } else if (file_exists(root / kIndexFile)) {
    source = (root / kIndexFile).string();
    auto shards = read_index(source);
    if (!shards.ok()) return shards.status();
    for (const auto& [file, names] : *shards) {
      CAIRN_RETURN_IF_ERROR(read_weights((root / file).string(), &names, &weights));
    }
  } else if (file_exists(root / "pytorch_model.bin") || file_exists(root / "pytorch_model.bin.index.json")) {
    return error(Code::invalid_argument, dir + ": only pytorch_model.bin weights: Cairn reads safetensors only "
                                               "(convert them with transformers' save_pretrained(safe_serialization=True))");
  } else {
    return error(Code::not_found, dir + ": no " + kSingleFile + " or " + kIndexFile);
  }
  auto model = LlamaModel::from_weights(*config, weights, options);
  if (!model.ok()) return model.status().with_context(source);
  return model;
}

Status save_llama(const LlamaModel& model, const std::string& dir, const SaveOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return error(Code::io_error, dir + ": cannot create: " + ec.message());
  auto weights = model.checkpoint_weights();
  if (!weights.ok()) return weights.status();

  // Greedy shards in checkpoint order, as save_pretrained fills them.
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (auto& [name, tensor] : *weights) {
    const uint64_t bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(name, tensor);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  const fs::path root(dir);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  std::set<std::string> written;
  if (shards.size() == 1) {
    CAIRN_RETURN_IF_ERROR(safetensors::write_tensors((root / kSingleFile).string(), shards[0], metadata));
    written.insert(kSingleFile);
  } else {
    json weight_map = json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string file = shard_name(i + 1, shards.size());
      CAIRN_RETURN_IF_ERROR(safetensors::write_tensors((root / file).string(), shards[i], metadata));
      for (const auto& [name, tensor] : shards[i]) weight_map[name] = file;
      written.insert(file);
    }
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    CAIRN_RETURN_IF_ERROR(detail::write_file_atomically((root / kIndexFile).string(), index.dump(2) + "\n"));
    written.insert(kIndexFile);
  }
  std::string_view dtype = model.dtype() == at::kBFloat16 ? "bfloat16"
                           : model.dtype() == at::kHalf   ? "float16"
                                                          : "float32";
  CAIRN_RETURN_IF_ERROR(
      detail::write_file_atomically((root / "config.json").string(), llama_config_to_json(model.config(), dtype)));
  CAIRN_RETURN_IF_ERROR(detail::write_file_atomically((root / "generation_config.json").string(),
                                                      generation_config_to_json(model.config())));
  remove_stale_weights(root, written);
  return Status::ok_status();
}

}  // namespace cairn
