// Loading, encoding, decoding and saving byte-level BPE tokenizers (training: tokenizer_train.cc).
#include "model/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/detail/tokenizer_model.h"

namespace cairn {
namespace detail {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Files

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return error(Code::io_error, path + ": cannot open for reading");
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) return error(Code::io_error, path + ": read failed");
  return content.str();
}

Result<json> read_json(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) return text.status();
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    return error(Code::invalid_argument, path + ": not valid JSON: " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Reading tokenizer.json fields: every failure names the file and the field.

class JsonReader {
 public:
  explicit JsonReader(std::string path) : path_(std::move(path)) {}

  Status fail(const std::string& where, const std::string& problem) const {
    return error(Code::invalid_argument, path_ + ": " + where + ": " + problem);
  }
  // A boolean field; `fallback` when absent or null.
  Status get_bool(const json& obj, const char* key, const std::string& where, bool fallback, bool* out) const {
    *out = fallback;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return {};
    if (!it->is_boolean()) return fail(where + "." + key, "expected true or false");
    *out = it->get<bool>();
    return {};
  }
  // A string field, or nullopt when absent or null.
  Status get_string(const json& obj, const char* key, const std::string& where, std::optional<std::string>* out) const {
    out->reset();
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return {};
    if (!it->is_string()) return fail(where + "." + key, "expected a string");
    *out = it->get<std::string>();
    return {};
  }
  static std::string type_of(const json& obj) {
    auto it = obj.find("type");
    return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
  }

 private:
  std::string path_;
};

Status read_byte_level(const JsonReader& r, const json& node, const std::string& where, PreTokenizerConfig* pre,
                       bool* use_regex) {
  CAIRN_RETURN_IF_ERROR(r.get_bool(node, "add_prefix_space", where, true, &pre->add_prefix_space));
  CAIRN_RETURN_IF_ERROR(r.get_bool(node, "trim_offsets", where, true, &pre->trim_offsets));
  return r.get_bool(node, "use_regex", where, true, use_regex);
}

Status read_split(const JsonReader& r, const json& node, const std::string& where, PreTokenizerConfig* pre) {
  auto pattern = node.find("pattern");
  if (pattern == node.end() || !pattern->is_object() || !pattern->contains("Regex") ||
      !(*pattern)["Regex"].is_string()) {
    return r.fail(where + ".pattern", "only {\"Regex\": ...} patterns are supported");
  }
  const std::string regex = (*pattern)["Regex"].get<std::string>();
  auto kind = split_pattern_from_regex(regex);
  if (!kind) {
    return r.fail(where + ".pattern.Regex",
                  "unsupported split pattern \"" + regex + "\" (supported: GPT-2's, Llama 3's and Qwen 2's)");
  }
  std::optional<std::string> behavior;
  CAIRN_RETURN_IF_ERROR(r.get_string(node, "behavior", where, &behavior));
  if (behavior.value_or("Isolated") != "Isolated") {
    return r.fail(where + ".behavior", "unsupported \"" + *behavior + "\" (only \"Isolated\")");
  }
  bool invert = false;
  CAIRN_RETURN_IF_ERROR(r.get_bool(node, "invert", where, false, &invert));
  if (invert) return r.fail(where + ".invert", "true is not supported");
  pre->pattern = *kind;
  return {};
}

Status read_pre_tokenizer(const JsonReader& r, const json& root, PreTokenizerConfig* pre) {
  auto it = root.find("pre_tokenizer");
  if (it == root.end() || it->is_null()) {
    return r.fail("pre_tokenizer", "missing; a byte-level BPE tokenizer needs a ByteLevel pre-tokenizer");
  }
  const json& node = *it;
  const std::string type = JsonReader::type_of(node);
  bool use_regex = true;
  if (type == "ByteLevel") {
    CAIRN_RETURN_IF_ERROR(read_byte_level(r, node, "pre_tokenizer", pre, &use_regex));
    pre->byte_level_splits = true;
    pre->pattern = use_regex ? SplitPattern::kGpt2 : SplitPattern::kNone;
    return {};
  }
  if (type != "Sequence") {
    return r.fail("pre_tokenizer",
                  "unsupported type \"" + type + "\" (supported: ByteLevel, Sequence of Split and ByteLevel)");
  }
  auto list = node.find("pretokenizers");
  if (list == node.end() || !list->is_array()) return r.fail("pre_tokenizer.pretokenizers", "expected an array");
  const auto& items = *list;
  auto item_type = [&](size_t i) { return JsonReader::type_of(items[i]); };
  if (items.size() == 1 && item_type(0) == "ByteLevel") {
    CAIRN_RETURN_IF_ERROR(read_byte_level(r, items[0], "pre_tokenizer.pretokenizers[0]", pre, &use_regex));
    pre->byte_level_splits = true;
    pre->pattern = use_regex ? SplitPattern::kGpt2 : SplitPattern::kNone;
    return {};
  }
  if (items.size() == 2 && item_type(0) == "Split" && item_type(1) == "ByteLevel") {
    CAIRN_RETURN_IF_ERROR(read_split(r, items[0], "pre_tokenizer.pretokenizers[0]", pre));
    CAIRN_RETURN_IF_ERROR(read_byte_level(r, items[1], "pre_tokenizer.pretokenizers[1]", pre, &use_regex));
    if (use_regex) {
      return r.fail("pre_tokenizer.pretokenizers[1].use_regex", "true after a Split is not supported (split twice)");
    }
    pre->byte_level_splits = false;
    return {};
  }
  std::string types;
  for (size_t i = 0; i < items.size(); ++i) types += (i ? ", " : "") + item_type(i);
  return r.fail("pre_tokenizer", "unsupported Sequence [" + types + "] (supported: [ByteLevel], [Split, ByteLevel])");
}

Status read_model(const JsonReader& r, const json& root, TokenizerModel* m) {
  auto it = root.find("model");
  if (it == root.end() || !it->is_object()) return r.fail("model", "missing");
  const json& model = *it;
  const std::string type = JsonReader::type_of(model);
  if (!type.empty() && type != "BPE") return r.fail("model.type", "unsupported \"" + type + "\" (only BPE)");

  // Options that byte-level BPE does not use must be off.
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0)) {
    return r.fail("model.dropout", "BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    std::optional<std::string> value;
    CAIRN_RETURN_IF_ERROR(r.get_string(model, key, "model", &value));
    if (value && !value->empty()) return r.fail(std::string("model.") + key, "not supported by byte-level BPE");
  }
  bool byte_fallback = false;
  CAIRN_RETURN_IF_ERROR(r.get_bool(model, "byte_fallback", "model", false, &byte_fallback));
  if (byte_fallback) return r.fail("model.byte_fallback", "true is not supported (that is SentencePiece-style BPE)");
  CAIRN_RETURN_IF_ERROR(r.get_bool(model, "ignore_merges", "model", false, &m->ignore_merges));
  CAIRN_RETURN_IF_ERROR(r.get_bool(model, "fuse_unk", "model", false, &m->rules.fuse_unk));
  CAIRN_RETURN_IF_ERROR(r.get_string(model, "unk_token", "model", &m->unk_token));

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) return r.fail("model.vocab", "expected an object of token -> id");
  for (auto entry = vocab->begin(); entry != vocab->end(); ++entry) {
    const json& value = entry.value();
    if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX) {
      return r.fail("model.vocab[\"" + entry.key() + "\"]", "expected an id in [0, 2^31)");
    }
    const auto id = static_cast<int32_t>(value.get<int64_t>());
    if (static_cast<size_t>(id) >= m->vocab.size()) m->vocab.resize(static_cast<size_t>(id) + 1);
    m->vocab[static_cast<size_t>(id)] = entry.key();
  }
  for (size_t id = 0; id < m->vocab.size(); ++id) {
    if (!m->vocab[id].empty()) m->vocab_ids.insert(static_cast<int32_t>(id), m->vocab);
  }

  auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) return r.fail("model.merges", "expected an array");
  m->merges.reserve(merges->size());
  std::string merged;
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& entry = (*merges)[i];
    std::string left, right;
    if (entry.is_string()) {  // "a b"
      const std::string& s = entry.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return r.fail("model.merges[" + std::to_string(i) + "]", "expected \"a b\", got \"" + s + "\"");
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {  // ["a", "b"]
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      return r.fail("model.merges[" + std::to_string(i) + "]", "expected \"a b\" or [\"a\", \"b\"]");
    }
    merged = left + right;
    const auto l = m->vocab_id(left), rr = m->vocab_id(right), mm = m->vocab_id(merged);
    for (auto [found, token] : {std::pair{l, &left}, std::pair{rr, &right}, std::pair{mm, &merged}}) {
      if (!found) {
        return r.fail("model.merges[" + std::to_string(i) + "]", "token \"" + *token + "\" is not in the vocabulary");
      }
    }
    m->merges.emplace_back(*l, *rr);
    m->rules.merges.insert(*l, *rr, Merge{static_cast<uint32_t>(i), *mm});
  }
  return {};
}

// Hugging Face does not take the ids written in added_tokens as they are: on load it adds the
// tokens in order, each getting the id its content already has (in the vocabulary or an earlier
// added token), else the next free id (AddedVocabulary::add_tokens). Files it wrote agree; for
// others, this gives the ids it gives. Call after read_model.
Status read_added_tokens(const JsonReader& r, const json& root, TokenizerModel* m) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return {};
  if (!it->is_array()) return r.fail("added_tokens", "expected an array");
  const auto model_size = static_cast<int64_t>(m->vocab_ids.size());
  std::unordered_map<std::string, size_t> by_content;  // index in m->added
  int64_t max_added_id = -1;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& entry = (*it)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!entry.is_object()) return r.fail(where, "expected an object");
    Tokenizer::AddedToken token;
    auto id = entry.find("id");
    if (id == entry.end() || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() > INT32_MAX) {
      return r.fail(where + ".id", "expected an id in [0, 2^31)");
    }
    std::optional<std::string> content;
    CAIRN_RETURN_IF_ERROR(r.get_string(entry, "content", where, &content));
    if (!content || content->empty()) return r.fail(where + ".content", "expected a non-empty string");
    token.content = *content;
    // Defaults as Hugging Face's AddedToken::default().
    CAIRN_RETURN_IF_ERROR(r.get_bool(entry, "special", where, false, &token.special));
    CAIRN_RETURN_IF_ERROR(r.get_bool(entry, "single_word", where, false, &token.single_word));
    CAIRN_RETURN_IF_ERROR(r.get_bool(entry, "lstrip", where, false, &token.lstrip));
    CAIRN_RETURN_IF_ERROR(r.get_bool(entry, "rstrip", where, false, &token.rstrip));
    CAIRN_RETURN_IF_ERROR(r.get_bool(entry, "normalized", where, true, &token.normalized));
    if (auto seen = by_content.find(token.content); seen != by_content.end()) {
      token.id = m->added[seen->second].id;  // the same content again: new options, same id
      m->added[seen->second] = std::move(token);
      continue;
    }
    if (auto in_vocab = m->vocab_id(token.content)) {
      token.id = *in_vocab;
    } else if (max_added_id < 0) {
      token.id = static_cast<int32_t>(model_size);
    } else {
      token.id = static_cast<int32_t>(max_added_id >= model_size || model_size == 0 ? max_added_id + 1 : model_size);
    }
    max_added_id = std::max<int64_t>(max_added_id, token.id);
    by_content.emplace(token.content, m->added.size());
    m->added.push_back(std::move(token));
  }
  return {};
}

Status check_normalizer_and_decoder(const JsonReader& r, const json& root) {
  auto normalizer = root.find("normalizer");
  if (normalizer != root.end() && !normalizer->is_null()) {
    const std::string type = JsonReader::type_of(*normalizer);
    const bool empty_sequence = type == "Sequence" && normalizer->contains("normalizers") &&
                                (*normalizer)["normalizers"].is_array() && (*normalizer)["normalizers"].empty();
    if (!empty_sequence) return r.fail("normalizer", "unsupported type \"" + type + "\" (only null)");
  }
  auto decoder = root.find("decoder");
  if (decoder != root.end() && !decoder->is_null() && JsonReader::type_of(*decoder) != "ByteLevel") {
    return r.fail("decoder", "unsupported type \"" + JsonReader::type_of(*decoder) + "\" (only ByteLevel)");
  }
  return {};
}

Result<std::shared_ptr<TokenizerModel>> load_tokenizer_json(const std::string& path) {
  auto root = read_json(path);
  if (!root.ok()) return root.status();
  JsonReader r(path);
  if (!root->is_object()) return r.fail("top level", "expected an object");
  auto m = std::make_shared<TokenizerModel>();
  CAIRN_RETURN_IF_ERROR(check_normalizer_and_decoder(r, *root));
  CAIRN_RETURN_IF_ERROR(read_pre_tokenizer(r, *root, &m->pre_tokenizer));
  CAIRN_RETURN_IF_ERROR(read_model(r, *root, m.get()));
  CAIRN_RETURN_IF_ERROR(read_added_tokens(r, *root, m.get()));
  auto post = root->find("post_processor");
  if (post != root->end()) m->post_processor_json = post->dump();
  return m;
}

// GPT-2's original files: encoder.json (token -> id) and vocab.bpe ("#version" line, then "a b").
Result<std::shared_ptr<TokenizerModel>> load_gpt2_files(const std::string& encoder_path,
                                                        const std::string& merges_path) {
  auto encoder = read_json(encoder_path);
  if (!encoder.ok()) return encoder.status();
  if (!encoder->is_object()) return error(Code::invalid_argument, encoder_path + ": expected an object of token -> id");
  json root = {{"model", {{"type", "BPE"}, {"vocab", std::move(*encoder)}, {"merges", json::array()}}},
               {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}};
  auto text = read_file(merges_path);
  if (!text.ok()) return text.status();
  std::istringstream lines(*text);
  std::string line;
  json& merges = root["model"]["merges"];
  size_t line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    if (std::count(line.begin(), line.end(), ' ') != 1) {
      return error(Code::invalid_argument,
                   merges_path + ": line " + std::to_string(line_number) + ": expected \"a b\", got \"" + line + "\"");
    }
    merges.push_back(line);
  }
  // Read through the tokenizer.json path so both formats are checked the same way; an error names
  // whichever file holds the bad entry.
  JsonReader r(encoder_path + " + " + merges_path);
  auto m = std::make_shared<TokenizerModel>();
  CAIRN_RETURN_IF_ERROR(read_pre_tokenizer(r, root, &m->pre_tokenizer));
  CAIRN_RETURN_IF_ERROR(read_model(r, root, m.get()));
  if (auto id = m->vocab_id("<|endoftext|>")) {
    m->added.push_back({*id, "<|endoftext|>", /*special=*/true, false, false, false, /*normalized=*/false});
  }
  m->post_processor_json = kByteLevelPostProcessorJson;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Added tokens in text

// The last character of text[0, end) (walking back over UTF-8 continuation bytes), or nullopt.
std::optional<CharInfo> char_before(std::string_view text, size_t end, const UnicodeTable& table) {
  if (end == 0) return std::nullopt;
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (s[start] & 0xC0) == 0x80) --start;
  CharInfo c = char_info(s + start, s + end, table);
  if (start + c.len != end) c = {0, 1};  // an invalid trailing byte
  return c;
}

// Hugging Face's find_matches: splits `text` on the added tokens of one matcher, honouring
// single_word, lstrip and rstrip. on_text gets the text between tokens, on_token each token's id.
template <class OnText, class OnToken>
void split_on_added(const TokenizerModel& m, const AddedTokenMatcher& matcher, const std::vector<size_t>& index,
                    std::string_view text, OnText&& on_text, OnToken&& on_token) {
  if (matcher.empty()) {
    on_text(text);
    return;
  }
  const UnicodeTable& table = UnicodeTable::get();
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const auto* end = s + text.size();
  size_t start_offset = 0;
  size_t from = 0;
  while (auto match = matcher.find(text, from)) {
    from = match->end;
    const Tokenizer::AddedToken& token = m.added[index[match->token]];
    size_t start = match->begin, stop = match->end;
    if (token.single_word) {
      auto before = char_before(text, start, table);
      const bool start_ok = !before || !(before->flags & kWord);
      const bool stop_ok = stop == text.size() || !(char_info(s + stop, end, table).flags & kWord);
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (auto before = char_before(text, new_start, table)) {
        if (!(before->flags & kSpace)) break;
        new_start -= before->len;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        const CharInfo c = char_info(s + stop, end, table);
        if (!(c.flags & kSpace)) break;
        stop += c.len;
      }
      from = stop;
    }
    if (start_offset < start) on_text(text.substr(start_offset, start - start_offset));
    on_token(token.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(text.substr(start_offset));
}

// The state of one encode() call.
struct Encoder {
  const TokenizerModel& m;
  WordCache& cache;
  std::vector<int32_t>* out;
  BpeScratch scratch;
  std::string prefixed_segment;
  std::string prefixed_piece;

  void word(std::string_view w) {
    if (w.size() == 1) {
      const int32_t id = m.rules.byte_ids[static_cast<uint8_t>(w[0])];
      if (id >= 0) {
        out->push_back(id);
        return;
      }
    }
    const uint64_t hash = hash_bytes(w.data(), w.size());
    if (cache.find(w, hash, out)) return;
    const size_t before = out->size();
    bool whole = false;
    if (m.ignore_merges) {
      if (auto id = m.vocab_by_bytes.find(w, m.id_bytes)) {
        out->push_back(*id);
        whole = true;
      }
    }
    if (!whole) bpe_merge_word(m.rules, w, &scratch, out);
    cache.insert(w, hash, out->data() + before, out->size() - before);
  }

  // Text between added tokens.
  void segment(std::string_view text) {
    if (text.empty()) return;
    const PreTokenizerConfig& pre = m.pre_tokenizer;
    if (pre.byte_level_splits && pre.add_prefix_space && text[0] != ' ') {
      prefixed_segment.assign(1, ' ');
      prefixed_segment.append(text);
      text = prefixed_segment;
    }
    PieceScanner scanner(pre.pattern, text);
    std::string_view piece;
    while (scanner.next(&piece)) {
      if (!pre.byte_level_splits && pre.add_prefix_space && piece[0] != ' ') {
        prefixed_piece.assign(1, ' ');
        prefixed_piece.append(piece);
        word(prefixed_piece);
      } else {
        word(piece);
      }
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// AddedTokenMatcher

void AddedTokenMatcher::build(const std::vector<std::string>& tokens) {
  nodes_.assign(1, Node{});
  std::fill(std::begin(starts_), std::end(starts_), false);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& token = tokens[t];
    if (token.empty()) continue;
    starts_[static_cast<uint8_t>(token[0])] = true;
    int32_t node = 0;
    for (char c : token) {
      const auto byte = static_cast<uint8_t>(c);
      int32_t next = child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        auto& children = nodes_[node].children;
        children.insert(std::lower_bound(children.begin(), children.end(), std::pair<uint8_t, int32_t>{byte, -1}),
                        {byte, next});
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  const auto& children = nodes_[node].children;
  auto it = std::lower_bound(children.begin(), children.end(), std::pair<uint8_t, int32_t>{byte, -1});
  return it != children.end() && it->first == byte ? it->second : -1;
}

std::optional<AddedTokenMatcher::Match> AddedTokenMatcher::find(std::string_view text, size_t from) const {
  if (empty()) return std::nullopt;
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  for (size_t p = from; p < text.size(); ++p) {
    if (!starts_[s[p]]) continue;
    int32_t node = 0;
    std::optional<Match> longest;
    for (size_t q = p; q < text.size(); ++q) {
      node = child(node, s[q]);
      if (node < 0) break;
      if (nodes_[node].token >= 0) longest = Match{p, q + 1, static_cast<size_t>(nodes_[node].token)};
    }
    if (longest) return longest;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// TokenizerModel

void TokenizerModel::finish() {
  std::sort(added.begin(), added.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  vocab_size = vocab.size();
  for (const auto& token : added) vocab_size = std::max(vocab_size, static_cast<size_t>(token.id) + 1);
  id_bytes.assign(vocab_size, std::string());
  id_known.assign(vocab_size, false);
  // What decode() writes for a token: its bytes when all its characters are in the byte alphabet,
  // else its UTF-8 as it is (Hugging Face's ByteLevel decoder does the same).
  auto set_bytes = [&](int32_t id, const std::string& token, bool model_token) {
    auto bytes = token_to_bytes(token);
    const bool byte_level = bytes.has_value();
    id_bytes[static_cast<size_t>(id)] = byte_level ? std::move(*bytes) : token;
    id_known[static_cast<size_t>(id)] = true;
    if (byte_level && model_token && ignore_merges) vocab_by_bytes.insert(id, id_bytes);
  };
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (!vocab[id].empty()) set_bytes(static_cast<int32_t>(id), vocab[id], true);
  }
  for (const auto& token : added) {
    set_bytes(token.id, token.content, false);
    added_ids[token.content] = token.id;
  }
  for (int b = 0; b < 256; ++b) {
    rules.byte_ids[b] = vocab_id(bytes_to_token(std::string(1, static_cast<char>(b)))).value_or(-1);
  }
  if (unk_token) {
    if (auto id = token_id(*unk_token)) rules.unk_id = *id;
  }
  std::vector<std::string> raw, normalized;
  raw_index.clear();
  normalized_index.clear();
  for (size_t i = 0; i < added.size(); ++i) {
    if (added[i].normalized) {
      normalized.push_back(added[i].content);
      normalized_index.push_back(i);
    } else {
      raw.push_back(added[i].content);
      raw_index.push_back(i);
    }
  }
  match_raw.build(raw);
  match_normalized.build(normalized);
}

void TokenizerModel::encode(std::string_view text, std::vector<int32_t>* out) const {
  // One call at a time uses the shared cache; a concurrent call gets a private one rather than wait.
  std::unique_lock<std::mutex> lock(cache_mutex, std::try_to_lock);
  std::optional<WordCache> private_cache;
  if (!lock.owns_lock()) private_cache.emplace(kSharedCacheWords);
  Encoder encoder{*this, lock.owns_lock() ? shared_cache : *private_cache, out, {}, {}, {}};
  out->reserve(out->size() + text.size() / 3);
  split_on_added(*this, match_raw, raw_index, text,
                 [&](std::string_view between) {
                   split_on_added(*this, match_normalized, normalized_index, between,
                                  [&](std::string_view piece) { encoder.segment(piece); },
                                  [&](int32_t id) { out->push_back(id); });
                 },
                 [&](int32_t id) { out->push_back(id); });
}

std::string TokenizerModel::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<size_t>(id) < vocab_size && id_known[static_cast<size_t>(id)]) {
      bytes += id_bytes[static_cast<size_t>(id)];
    }
  }
  return utf8_lossy(std::move(bytes));
}

std::optional<int32_t> TokenizerModel::token_id(std::string_view token) const {
  const std::string key(token);
  if (auto it = added_ids.find(key); it != added_ids.end()) return it->second;
  return vocab_id(token);
}

Status TokenizerModel::resolve_bos_eos(const std::string& dir) {
  // Each file is optional; one that is there must be valid JSON.
  auto read_config = [&](const char* name) -> Result<std::optional<json>> {
    if (dir.empty() || !is_file(dir + "/" + name)) return std::optional<json>();
    auto config = read_json(dir + "/" + name);
    if (!config.ok()) return config.status();
    if (!config->is_object()) return error(Code::invalid_argument, dir + "/" + name + ": expected an object");
    return std::optional<json>(std::move(*config));
  };
  // tokenizer_config.json: "bos_token": "<s>" or {"content": "<s>", ...}
  auto tokenizer_config = read_config("tokenizer_config.json");
  if (!tokenizer_config.ok()) return tokenizer_config.status();
  if (const auto& config = *tokenizer_config) {
    auto lookup = [&](const char* key) -> std::optional<int32_t> {
      auto it = config->find(key);
      if (it == config->end()) return std::nullopt;
      if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
        return token_id((*it)["content"].get<std::string>());
      }
      if (it->is_string()) return token_id(it->get<std::string>());
      return std::nullopt;
    };
    if (!bos_id) bos_id = lookup("bos_token");
    if (!eos_id) eos_id = lookup("eos_token");
  }
  // generation_config.json, then config.json: "bos_token_id": 1, "eos_token_id": 2 or [2, 3]
  for (const char* name : {"generation_config.json", "config.json"}) {
    auto model_config = read_config(name);
    if (!model_config.ok()) return model_config.status();
    const auto& config = *model_config;
    if (!config) continue;
    auto lookup = [&](const char* key) -> std::optional<int32_t> {
      auto it = config->find(key);
      if (it == config->end()) return std::nullopt;
      const json& value = it->is_array() && !it->empty() ? (*it)[0] : *it;
      if (!value.is_number_integer()) return std::nullopt;
      const int64_t id = value.get<int64_t>();
      if (id < 0 || static_cast<size_t>(id) >= vocab_size) return std::nullopt;
      return static_cast<int32_t>(id);
    };
    if (!bos_id) bos_id = lookup("bos_token_id");
    if (!eos_id) eos_id = lookup("eos_token_id");
  }
  // Well-known special tokens.
  auto special = [&](std::initializer_list<const char*> names) -> std::optional<int32_t> {
    for (const char* name : names) {
      if (auto it = added_ids.find(name); it != added_ids.end()) return it->second;
    }
    return std::nullopt;
  };
  if (!bos_id) bos_id = special({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  if (!eos_id) eos_id = special({"<|end_of_text|>", "</s>", "<|endoftext|>"});
  return {};
}

}  // namespace detail

// -----------------------------------------------------------------------------------------------
// Tokenizer

Result<Tokenizer> Tokenizer::load(const std::string& path_or_dir) {
  std::string dir;
  Result<std::shared_ptr<detail::TokenizerModel>> model = error(Code::internal, "unset");
  if (detail::is_file(path_or_dir)) {
    dir = detail::parent_dir(path_or_dir);
    model = detail::load_tokenizer_json(path_or_dir);
  } else if (detail::is_directory(path_or_dir)) {
    dir = path_or_dir;
    if (detail::is_file(dir + "/tokenizer.json")) {
      model = detail::load_tokenizer_json(dir + "/tokenizer.json");
    } else if (detail::is_file(dir + "/encoder.json") && detail::is_file(dir + "/vocab.bpe")) {
      model = detail::load_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
    } else {
      return error(Code::not_found, path_or_dir + ": no tokenizer.json, nor encoder.json with vocab.bpe");
    }
  } else {
    return error(Code::not_found, path_or_dir + ": no such file or directory");
  }
  if (!model.ok()) return model.status();
  (*model)->finish();
  CAIRN_RETURN_IF_ERROR((*model)->resolve_bos_eos(dir));
  return Tokenizer(std::move(*model));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  model_->encode(text, &ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return model_->decode(ids); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return model_->token_id(token); }

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const auto& added = model_->added;
  auto it = std::lower_bound(added.begin(), added.end(), id, [](const AddedToken& t, int32_t v) { return t.id < v; });
  if (it != added.end() && it->id == id) return it->content;
  if (id >= 0 && static_cast<size_t>(id) < model_->vocab.size() && !model_->vocab[static_cast<size_t>(id)].empty()) {
    return model_->vocab[static_cast<size_t>(id)];
  }
  return std::nullopt;
}

size_t Tokenizer::vocab_size() const { return model_->vocab_size; }
std::optional<int32_t> Tokenizer::bos_id() const { return model_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return model_->eos_id; }
const std::vector<Tokenizer::AddedToken>& Tokenizer::added_tokens() const { return model_->added; }

// -----------------------------------------------------------------------------------------------
// Saving

Status save_tokenizer_json(const Tokenizer& tokenizer, const std::string& path) {
  using nlohmann::ordered_json;
  const detail::TokenizerModel& m = *tokenizer.model_;
  // The small sections go through ordered_json (keys in Hugging Face's order); the vocabulary and
  // merges are written directly: ordered_json inserts in linear time, too slow for 100k+ entries.
  auto quote = [](const std::string& s) { return ordered_json(s).dump(); };
  std::string out;
  try {
    ordered_json added = ordered_json::array();
    for (const auto& t : m.added) {
      added.push_back({{"id", t.id}, {"content", t.content}, {"single_word", t.single_word}, {"lstrip", t.lstrip},
                       {"rstrip", t.rstrip}, {"normalized", t.normalized}, {"special", t.special}});
    }
    const auto& pre = m.pre_tokenizer;
    ordered_json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", pre.add_prefix_space},
                               {"trim_offsets", pre.trim_offsets},
                               {"use_regex", pre.byte_level_splits && pre.pattern == detail::SplitPattern::kGpt2}};
    ordered_json pre_tokenizer;
    if (pre.byte_level_splits) {
      pre_tokenizer = std::move(byte_level);
    } else {
      ordered_json split = {{"type", "Split"},
                            {"pattern", {{"Regex", std::string(detail::split_pattern_regex(pre.pattern))}}},
                            {"behavior", "Isolated"},
                            {"invert", false}};
      pre_tokenizer = {{"type", "Sequence"}, {"pretokenizers", {std::move(split), std::move(byte_level)}}};
    }
    const ordered_json decoder = {
        {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};

    out += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
    out += "  \"added_tokens\": " + added.dump() + ",\n";
    out += "  \"normalizer\": null,\n";
    out += "  \"pre_tokenizer\": " + pre_tokenizer.dump() + ",\n";
    out += "  \"post_processor\": " + ordered_json::parse(m.post_processor_json).dump() + ",\n";
    out += "  \"decoder\": " + decoder.dump() + ",\n";
    out += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n";
    out += "    \"unk_token\": " + (m.unk_token ? quote(*m.unk_token) : std::string("null")) + ",\n";
    out += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
    out += std::string("    \"fuse_unk\": ") + (m.rules.fuse_unk ? "true" : "false") + ",\n";
    out += "    \"byte_fallback\": false,\n";
    out += std::string("    \"ignore_merges\": ") + (m.ignore_merges ? "true" : "false") + ",\n";
    out += "    \"vocab\": {";
    bool first = true;
    for (size_t id = 0; id < m.vocab.size(); ++id) {
      if (m.vocab[id].empty()) continue;
      out += first ? "\n      " : ",\n      ";
      out += quote(m.vocab[id]) + ": " + std::to_string(id);
      first = false;
    }
    out += "\n    },\n    \"merges\": [";
    for (size_t i = 0; i < m.merges.size(); ++i) {
      out += i ? ",\n      " : "\n      ";
      out += quote(m.vocab[static_cast<size_t>(m.merges[i].first)] + " " +
                   m.vocab[static_cast<size_t>(m.merges[i].second)]);
    }
    out += "\n    ]\n  }\n}\n";
  } catch (const nlohmann::json::exception& e) {
    return error(Code::invalid_argument, path + ": cannot write the tokenizer as JSON: " + e.what());
  }
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return error(Code::io_error, path + ": cannot open for writing");
  file << out;
  file.close();
  if (!file) return error(Code::io_error, path + ": write failed");
  return {};
}

}  // namespace cairn
