// load_datasets: JSONL lines → documents (formats, masking, length policy), the validation split
// and the digest. Streaming is in data_stream.cc, the demo corpus in data_devil.cc.
#include "model/data.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "model/chat_template.h"
#include "model/detail/data_util.h"
#include "model/tokenizer.h"

namespace cairn {

using nlohmann::json;

std::string_view bad_line_reason_name(BadLineReason reason) {
  switch (reason) {
    case BadLineReason::invalid_json: return "invalid_json";
    case BadLineReason::missing_field: return "missing_field";
    case BadLineReason::wrong_type: return "wrong_type";
    case BadLineReason::too_long: return "too_long";
    case BadLineReason::no_trained_tokens: return "no_trained_tokens";
    case BadLineReason::template_error: return "template_error";
  }
  return "unknown";
}

int64_t DataReport::skipped_total() const {
  int64_t total = 0;
  for (const auto& [reason, count] : skipped) total += count;
  return total;
}

namespace {

// Axolotl's alpaca prompt (AlpacaPrompter, instruct style).
constexpr std::string_view kAlpacaSystem =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n";
constexpr std::string_view kAlpacaSystemNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";

// Bad lines logged one by one before only the counts are.
constexpr int64_t kLoggedBadLines = 10;

enum class Format { completion, alpaca, chat_template };

std::optional<Format> parse_format(const std::string& type) {
  if (type == "completion") return Format::completion;
  if (type == "alpaca") return Format::alpaca;
  if (type == "chat_template") return Format::chat_template;
  return std::nullopt;
}

struct LineError {
  BadLineReason reason;
  std::string message;
};

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::discarded: return "invalid";
    default: return "a number";
  }
}

// The string field `name` of `obj`: a LineError when missing (unless optional: then "") or not a
// string (null counts as missing).
std::optional<LineError> string_field(const json& obj, const char* name, bool optional, std::string& out,
                                      const std::string& where = "") {
  auto it = obj.find(name);
  std::string label = "\"" + where + name + "\"";
  if (it == obj.end() || it->is_null()) {
    if (optional) {
      out.clear();
      return std::nullopt;
    }
    return LineError{BadLineReason::missing_field, label + " is missing"};
  }
  if (!it->is_string()) {
    return LineError{BadLineReason::wrong_type, label + " must be a string, not " + json_type_name(*it)};
  }
  out = it->get<std::string>();
  return std::nullopt;
}

// Tokens of one example with their labels, built segment by segment.
struct TokenBuilder {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;

  void add(const std::vector<int32_t>& tokens, bool trained) {
    for (int32_t t : tokens) {
      ids.push_back(t);
      labels.push_back(trained ? t : kIgnoreLabel);
    }
  }
  void add(int32_t token, bool trained) { add(std::vector<int32_t>{token}, trained); }
};

// Everything one load needs to turn lines into documents. Constant after construction.
class ExampleBuilder {
 public:
  ExampleBuilder(const Tokenizer& tokenizer, const DataOptions& options, const ChatTemplate* chat_template)
      : tokenizer_(tokenizer), options_(options), chat_template_(chat_template) {
    bos_ = options.add_bos ? tokenizer.bos_id() : std::nullopt;
    eos_ = tokenizer.eos_id();
    for (const Tokenizer::AddedToken& t : tokenizer.added_tokens()) {
      if (tokenizer.bos_id() == t.id) chat_vars_.bos_token = t.content;
      if (eos_ == t.id) chat_vars_.eos_token = t.content;
    }
  }

  // The documents of one parsed line (several under LongExamplePolicy::split), or why it is bad.
  std::optional<LineError> build(Format format, const json& line, std::vector<Document>& out, DataReport& report) const {
    if (!line.is_object()) {
      return LineError{BadLineReason::invalid_json, std::string("a line must be a JSON object, not ") + json_type_name(line)};
    }
    TokenBuilder tokens;
    std::optional<LineError> problem;
    switch (format) {
      case Format::completion: problem = completion(line, tokens); break;
      case Format::alpaca: problem = alpaca(line, tokens); break;
      case Format::chat_template: problem = chat(line, tokens); break;
    }
    if (problem) return problem;
    if (options_.train_on_inputs) tokens.labels = tokens.ids;
    return finish(std::move(tokens), out, report);
  }

  const ChatTemplateVars& chat_vars() const { return chat_vars_; }

 private:
  std::optional<LineError> completion(const json& line, TokenBuilder& tokens) const {
    std::string text;
    if (auto e = string_field(line, "text", false, text)) return e;
    if (bos_) tokens.add(*bos_, true);
    tokens.add(tokenizer_.encode(text), true);
    if (eos_) tokens.add(*eos_, true);
    return std::nullopt;
  }

  // As Axolotl's InstructionPromptTokenizingStrategy: the prompt and the response are tokenized
  // apart, bos before the prompt, eos after the response.
  std::optional<LineError> alpaca(const json& line, TokenBuilder& tokens) const {
    std::string instruction, input, output;
    if (auto e = string_field(line, "instruction", false, instruction)) return e;
    if (auto e = string_field(line, "input", true, input)) return e;
    if (auto e = string_field(line, "output", false, output)) return e;
    std::string prompt;
    if (!input.empty()) {
      prompt = std::string(kAlpacaSystem) + "### Instruction:\n" + instruction + "\n\n### Input:\n" + input +
               "\n\n### Response:\n";
    } else {
      prompt = std::string(kAlpacaSystemNoInput) + "### Instruction:\n" + instruction + "\n\n### Response:\n";
    }
    if (bos_) tokens.add(*bos_, false);
    tokens.add(tokenizer_.encode(prompt), false);
    tokens.add(tokenizer_.encode(output), true);
    if (eos_) tokens.add(*eos_, true);
    return std::nullopt;
  }

  std::optional<LineError> chat(const json& line, TokenBuilder& tokens) const {
    auto it = line.find("messages");
    if (it == line.end() || it->is_null()) return LineError{BadLineReason::missing_field, "\"messages\" is missing"};
    if (!it->is_array()) {
      return LineError{BadLineReason::wrong_type, std::string("\"messages\" must be an array, not ") + json_type_name(*it)};
    }
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      std::string where = "messages[" + std::to_string(i) + "].";
      if (!m.is_object()) {
        return LineError{BadLineReason::wrong_type, "\"messages[" + std::to_string(i) + "]\" must be an object, not " +
                                                        json_type_name(m)};
      }
      ChatMessage message;
      if (auto e = string_field(m, "role", false, message.role, where)) return e;
      if (auto e = string_field(m, "content", false, message.content, where)) return e;
      messages.push_back(std::move(message));
    }
    std::vector<std::pair<std::string, bool>> segments;
    if (auto e = chat_segments(messages, segments)) return e;
    for (const auto& [text, trained] : segments) {
      if (!text.empty()) tokens.add(tokenizer_.encode(text), trained);
    }
    return std::nullopt;
  }

  // The rendered conversation cut into (text, trained) pieces. An assistant turn i is what
  // messages[0..i] adds to messages[0..i) rendered with the generation prompt (so its header stays
  // untrained): its content and end-of-turn token, without the whitespace after them. This needs a
  // template that renders each conversation as an extension of its prefixes, which real chat
  // templates do; a template that does not is reported as a template_error.
  std::optional<LineError> chat_segments(const std::vector<ChatMessage>& messages,
                                         std::vector<std::pair<std::string, bool>>& segments) const {
    ChatTemplateVars plain = chat_vars_, prompted = chat_vars_;
    plain.add_generation_prompt = false;
    prompted.add_generation_prompt = true;
    Result<std::string> full = chat_template_->render(messages, plain);
    if (!full.ok()) return LineError{BadLineReason::template_error, full.status().message()};
    size_t done = 0;
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].role != "assistant") continue;
      std::vector<ChatMessage> before(messages.begin(), messages.begin() + static_cast<ptrdiff_t>(i));
      std::vector<ChatMessage> through(messages.begin(), messages.begin() + static_cast<ptrdiff_t>(i) + 1);
      Result<std::string> turn_end = chat_template_->render(through, plain);
      if (!turn_end.ok()) return LineError{BadLineReason::template_error, turn_end.status().message()};
      // Templates without a generation prompt (Mistral's) start the turn right after the prefix.
      Result<std::string> turn_start = chat_template_->render(before, prompted);
      if (!turn_start.ok() || turn_end->compare(0, turn_start->size(), *turn_start) != 0) {
        turn_start = chat_template_->render(before, plain);
      }
      if (!turn_start.ok()) return LineError{BadLineReason::template_error, turn_start.status().message()};
      const std::string& start_text = *turn_start;
      const std::string& end_text = *turn_end;
      if (end_text.compare(0, start_text.size(), start_text) != 0 || full->compare(0, end_text.size(), end_text) != 0 ||
          start_text.size() < done) {
        return LineError{BadLineReason::template_error,
                         "the chat template does not render messages[" + std::to_string(i) +
                             "] as an extension of the conversation before it, so its tokens cannot be found"};
      }
      size_t begin = start_text.size(), end = end_text.size();
      while (end > begin && (end_text[end - 1] == ' ' || end_text[end - 1] == '\n' || end_text[end - 1] == '\t' ||
                             end_text[end - 1] == '\r')) {
        --end;
      }
      segments.emplace_back(full->substr(done, begin - done), false);
      segments.emplace_back(full->substr(begin, end - begin), true);
      done = end;
    }
    segments.emplace_back(full->substr(done), false);
    return std::nullopt;
  }

  // Masks each document's first label, applies the length policy, and drops what trains nothing.
  std::optional<LineError> finish(TokenBuilder tokens, std::vector<Document>& out, DataReport& report) const {
    const size_t max_len = static_cast<size_t>(options_.sequence_len);
    std::vector<TokenBuilder> pieces;
    if (tokens.ids.size() <= max_len) {
      pieces.push_back(std::move(tokens));
    } else if (options_.long_example_policy == LongExamplePolicy::drop) {
      return LineError{BadLineReason::too_long, std::to_string(tokens.ids.size()) + " tokens, more than sequence_len " +
                                                    std::to_string(options_.sequence_len)};
    } else if (options_.long_example_policy == LongExamplePolicy::truncate) {
      tokens.ids.resize(max_len);
      tokens.labels.resize(max_len);
      pieces.push_back(std::move(tokens));
      ++report.truncated;
    } else {
      for (size_t begin = 0; begin < tokens.ids.size(); begin += max_len) {
        size_t end = std::min(begin + max_len, tokens.ids.size());
        TokenBuilder piece;
        piece.ids.assign(tokens.ids.begin() + static_cast<ptrdiff_t>(begin), tokens.ids.begin() + static_cast<ptrdiff_t>(end));
        piece.labels.assign(tokens.labels.begin() + static_cast<ptrdiff_t>(begin),
                            tokens.labels.begin() + static_cast<ptrdiff_t>(end));
        pieces.push_back(std::move(piece));
      }
      ++report.split;
    }
    size_t kept = 0;
    for (TokenBuilder& piece : pieces) {
      if (piece.ids.empty()) continue;
      piece.labels[0] = kIgnoreLabel;
      bool trains = false;
      for (int32_t label : piece.labels) trains = trains || label != kIgnoreLabel;
      if (!trains) continue;
      Document doc;
      doc.input_ids = std::move(piece.ids);
      doc.labels = std::move(piece.labels);
      out.push_back(std::move(doc));
      ++kept;
    }
    if (kept == 0) return LineError{BadLineReason::no_trained_tokens, "no token is left to train on"};
    return std::nullopt;
  }

  const Tokenizer& tokenizer_;
  const DataOptions& options_;
  const ChatTemplate* chat_template_;  // null when no spec is chat_template
  std::optional<int32_t> bos_, eos_;
  ChatTemplateVars chat_vars_;
};

Status check_options(const DataOptions& options) {
  if (options.sequence_len < 2) {
    return error(Code::invalid_argument, "sequence_len must be at least 2, not " + std::to_string(options.sequence_len));
  }
  if (!(options.val_set_size >= 0) || !std::isfinite(options.val_set_size) ||
      (options.val_set_size >= 1 && options.val_set_size != std::floor(options.val_set_size))) {
    return error(Code::invalid_argument, "val_set_size must be a fraction in [0, 1) or a whole count, not " +
                                             std::to_string(options.val_set_size));
  }
  return Status::ok_status();
}

std::string digest(const std::vector<DatasetSpec>& specs, const DataOptions& options, const Documents& train,
                   const Documents& val) {
  detail::Fnv1a64 h;
  h.str("cairn-data-v1");
  h.u64(static_cast<uint64_t>(options.sequence_len));
  h.u64(options.train_on_inputs);
  h.str(std::to_string(options.val_set_size));
  h.u64(options.seed);
  h.u64(static_cast<uint64_t>(options.long_example_policy));
  h.u64(options.add_bos);
  bool chat = false;
  for (const DatasetSpec& spec : specs) {
    h.str(spec.type);
    chat = chat || spec.type == "chat_template";
  }
  h.str(chat ? options.chat_template : "");
  for (const Documents* docs : {&train, &val}) {
    h.u64(docs->size());
    for (const Document& doc : *docs) {
      h.i32s(doc.input_ids);
      h.i32s(doc.labels);
    }
  }
  return h.hex();
}

}  // namespace

Result<TokenizedDataset> load_datasets(const std::vector<DatasetSpec>& specs, const Tokenizer& tokenizer,
                                       const DataOptions& options) {
  CAIRN_RETURN_IF_ERROR(check_options(options));
  if (specs.empty()) return error(Code::invalid_argument, "datasets: at least one dataset is needed");
  std::vector<Format> formats;
  bool any_chat = false;
  for (const DatasetSpec& spec : specs) {
    std::optional<Format> format = parse_format(spec.type);
    if (!format) {
      return error(Code::invalid_argument, spec.path + ": unknown dataset type \"" + spec.type +
                                               "\" (expected completion, alpaca or chat_template)");
    }
    formats.push_back(*format);
    any_chat = any_chat || *format == Format::chat_template;
  }
  std::optional<ChatTemplate> chat_template;
  if (any_chat) {
    Result<ChatTemplate> parsed =
        ChatTemplate::parse(options.chat_template.empty() ? std::string(chatml_template()) : options.chat_template);
    if (!parsed.ok()) return parsed.status();
    chat_template = std::move(parsed).value();
  }
  ExampleBuilder builder(tokenizer, options, chat_template ? &*chat_template : nullptr);
  if (any_chat && (builder.chat_vars().bos_token.empty() || builder.chat_vars().eos_token.empty())) {
    spdlog::warn("data: the tokenizer's bos/eos are not added tokens; the chat template sees bos_token=\"{}\" "
                 "eos_token=\"{}\"",
                 builder.chat_vars().bos_token, builder.chat_vars().eos_token);
  }

  TokenizedDataset result;
  DataReport& report = result.report;
  // One entry per usable line: its documents (more than one only under LongExamplePolicy::split).
  std::vector<std::vector<Document>> examples;
  for (size_t s = 0; s < specs.size(); ++s) {
    const std::string& path = specs[s].path;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::error_code ec;
      bool exists = std::filesystem::exists(path, ec);
      return error(exists ? Code::io_error : Code::not_found,
                   path + (exists ? ": cannot open the dataset" : ": no such dataset file"));
    }
    std::string text;
    int64_t line_number = 0;
    while (std::getline(in, text)) {
      ++line_number;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      if (text.find_first_not_of(" \t") == std::string::npos) continue;
      ++report.lines;
      std::optional<LineError> problem;
      std::vector<Document> docs;
      json line;
      try {
        line = json::parse(text);
      } catch (const json::exception& e) {
        // nlohmann's message says where the JSON breaks.
        problem = LineError{BadLineReason::invalid_json, e.what()};
      }
      if (!problem) problem = builder.build(formats[s], line, docs, report);
      if (problem) {
        std::string message = path + ":" + std::to_string(line_number) + ": " +
                              std::string(bad_line_reason_name(problem->reason)) + ": " + problem->message;
        if (options.bad_line_policy == BadLinePolicy::fail) return error(Code::invalid_argument, message);
        int64_t seen = report.skipped_total();
        if (seen < kLoggedBadLines) spdlog::warn("data: skipping {}", message);
        ++report.skipped[problem->reason];
        if (report.bad_lines.size() < DataReport::kMaxReportedBadLines) {
          report.bad_lines.push_back(BadLine{path, line_number, problem->reason, std::move(message)});
        }
        continue;
      }
      for (Document& doc : docs) {
        doc.dataset = static_cast<int32_t>(s);
        doc.line = line_number;
      }
      examples.push_back(std::move(docs));
      ++report.examples;
    }
    if (in.bad()) return error(Code::io_error, path + ": read failed");
  }
  if (examples.empty()) {
    return error(Code::invalid_argument, "datasets: no usable example (" + std::to_string(report.lines) +
                                             " lines read, " + std::to_string(report.skipped_total()) + " skipped)");
  }

  // The validation split, by example, chosen by seed; both sets keep file order.
  const int64_t n = static_cast<int64_t>(examples.size());
  int64_t n_val = options.val_set_size >= 1 ? static_cast<int64_t>(options.val_set_size)
                                            : static_cast<int64_t>(std::ceil(options.val_set_size * static_cast<double>(n)));
  if (n_val >= n) {
    return error(Code::invalid_argument, "val_set_size " + std::to_string(options.val_set_size) + " leaves no training example out of " +
                                             std::to_string(n));
  }
  std::vector<bool> is_val(static_cast<size_t>(n), false);
  if (n_val > 0) {
    std::vector<int64_t> order = detail::seeded_permutation(n, detail::derive_seed(options.seed, "val_split", 0));
    for (int64_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
  }
  auto train = std::make_shared<Documents>();
  auto val = std::make_shared<Documents>();
  for (int64_t i = 0; i < n; ++i) {
    for (Document& doc : examples[i]) (is_val[i] ? val : train)->push_back(std::move(doc));
  }

  result.digest = digest(specs, options, *train, *val);
  result.train = std::move(train);
  result.val = std::move(val);
  result.sequence_len = options.sequence_len;
  result.pad_id = tokenizer.eos_id().value_or(0);

  std::string skipped;
  for (const auto& [reason, count] : report.skipped) {
    skipped += (skipped.empty() ? "" : ", ") + std::string(bad_line_reason_name(reason)) + " " + std::to_string(count);
  }
  spdlog::info("data: {} lines from {} file(s): {} examples ({} train documents, {} val), {} skipped{}{}{}", report.lines,
               specs.size(), report.examples, result.train->size(), result.val->size(), report.skipped_total(),
               skipped.empty() ? "" : " (", skipped, skipped.empty() ? "" : ")");
  return result;
}

}  // namespace cairn
