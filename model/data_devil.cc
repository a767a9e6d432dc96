// The demo corpus: The Devil's Dictionary from Debian's dict-devil (dictd format: an index of
// "headword<TAB>offset<TAB>length" with offsets and lengths in dictd's base64, and the text as a
// dictzip file, which is gzip with random-access data in an extra field that plain gzip readers
// skip).
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "model/data.h"
#include "model/detail/files.h"

namespace cairn {

namespace {

// dictd's base64 numbers: big-endian digits of "A-Za-z0-9+/".
std::optional<uint64_t> decode_dictd_number(const std::string& text) {
  static const std::string kDigits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    size_t digit = kDigits.find(c);
    if (digit == std::string::npos) return std::nullopt;
    value = value * 64 + digit;
  }
  return value;
}

// The decompressed contents of a gzip (or dictzip) file.
Result<std::string> gunzip(const std::string& path, const std::string& compressed) {
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return error(Code::internal, path + ": inflateInit2 failed");
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  z.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buffer);
    z.avail_out = sizeof buffer;
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      std::string what = z.msg != nullptr ? z.msg : "inflate error " + std::to_string(rc);
      inflateEnd(&z);
      return error(Code::data_loss, path + ": " + what);
    }
    out.append(buffer, sizeof buffer - z.avail_out);
    if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      return error(Code::data_loss, path + ": truncated gzip data");
    }
  }
  inflateEnd(&z);
  return out;
}

}  // namespace

Result<std::vector<std::string>> devil_corpus_documents(const std::string& dictd_dir) {
  const std::string index_path = (std::filesystem::path(dictd_dir) / "devil.index").string();
  const std::string dict_path = (std::filesystem::path(dictd_dir) / "devil.dict.dz").string();
  Result<std::string> index = detail::read_file(index_path);
  if (!index.ok()) return index.status();
  Result<std::string> compressed = detail::read_file(dict_path);
  if (!compressed.ok()) return compressed.status();
  Result<std::string> text = gunzip(dict_path, *compressed);
  if (!text.ok()) return text.status();

  std::vector<std::string> documents;
  std::set<std::pair<uint64_t, uint64_t>> seen;  // several headwords may share one entry
  std::istringstream lines(*index);
  std::string line;
  int64_t line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (line.empty()) continue;
    size_t tab1 = line.find('\t');
    size_t tab2 = tab1 == std::string::npos ? std::string::npos : line.find('\t', tab1 + 1);
    std::optional<uint64_t> offset, length;
    if (tab2 != std::string::npos) {
      offset = decode_dictd_number(line.substr(tab1 + 1, tab2 - tab1 - 1));
      length = decode_dictd_number(line.substr(tab2 + 1));
    }
    if (!offset || !length || *offset + *length > text->size()) {
      return error(Code::data_loss, index_path + ":" + std::to_string(line_number) + ": bad index entry");
    }
    // dictd's metadata entries: 00-database-info, 00databaseurl, ...
    if (line.compare(0, 2, "00") == 0) continue;
    if (!seen.insert({*offset, *length}).second) continue;
    std::string entry = text->substr(*offset, *length);
    while (!entry.empty() && (entry.back() == '\n' || entry.back() == ' ')) entry.pop_back();
    if (!entry.empty()) documents.push_back(std::move(entry));
  }
  if (documents.empty()) return error(Code::data_loss, index_path + ": no entries");
  return documents;
}

Status write_completion_jsonl(const std::vector<std::string>& documents, const std::string& path) {
  std::string out;
  for (const std::string& doc : documents) {
    out += nlohmann::json{{"text", doc}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out += '\n';
  }
  return detail::write_file_atomically(path, out);
}

}  // namespace cairn
