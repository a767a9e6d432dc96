// `cairn tokenize`, `cairn detokenize` and `cairn tokenizer train`: model/tokenizer.h from the shell.
//
//   cairn tokenize --tokenizer PATH (--text TEXT | --file FILE) [--json]
//   cairn detokenize --tokenizer PATH (--ids 1,2,3 | --file FILE) [--json]
//   cairn tokenizer train --corpus FILE... --vocab-size N --out tokenizer.json
//                         [--min-frequency N] [--special-token TOKEN]...
//
// PATH is a tokenizer.json, or a directory holding tokenizer.json or GPT-2's encoder.json with
// vocab.bpe. FILE may be "-" for standard input. Errors go to stderr as "cairn COMMAND: problem"
// (naming the file) with exit code 1.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "model/tokenizer.h"

namespace cairn::cli {
namespace {

using nlohmann::json;

constexpr const char* kTokenizerHelp = "tokenizer.json, or a directory with it or with encoder.json + vocab.bpe";

[[noreturn]] void fail(const std::string& command, const std::string& message) {
  std::cerr << "cairn " << command << ": " << message << "\n";
  std::exit(kExitError);
}

std::string read_input(const std::string& command, const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(command, path + ": cannot open for reading");
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail(command, path + ": read failed");
  return content.str();
}

Tokenizer load_tokenizer(const std::string& command, const std::string& path) {
  auto tokenizer = Tokenizer::load(path);
  if (!tokenizer.ok()) fail(command, tokenizer.status().to_string());
  return std::move(*tokenizer);
}

// Ids as "1,2,3", "1 2 3" (any mix of commas and whitespace), a JSON array or {"ids": [...]}.
std::vector<int32_t> parse_ids(const std::string& command, const std::string& where, const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  std::vector<int32_t> ids;
  if (first != std::string::npos && (text[first] == '[' || text[first] == '{')) {
    try {
      json parsed = json::parse(text);
      if (parsed.is_object()) parsed = parsed.at("ids");
      for (const auto& id : parsed) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
          fail(command, where + ": " + id.dump() + " is not a token id");
        }
        ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
    } catch (const json::exception& e) {
      fail(command, where + ": expected a JSON array of ids or {\"ids\": [...]}: " + e.what());
    }
    return ids;
  }
  std::string token;
  std::istringstream in(text);
  auto flush = [&] {
    if (token.empty()) return;
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size() || id < 0 || id > INT32_MAX) {
      fail(command, where + ": \"" + token + "\" is not a token id");
    }
    ids.push_back(static_cast<int32_t>(id));
    token.clear();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      flush();
    } else {
      token.push_back(c);
    }
  }
  flush();
  return ids;
}

struct TokenizeArgs {
  std::string tokenizer;
  std::string text;
  std::string file;
  bool json = false;
};

struct DetokenizeArgs {
  std::string tokenizer;
  std::string ids;
  std::string file;
  bool json = false;
};

struct TrainArgs {
  std::vector<std::string> corpus;
  size_t vocab_size = BpeTrainOptions{}.vocab_size;
  size_t min_frequency = BpeTrainOptions{}.min_frequency;
  std::vector<std::string> special_tokens = BpeTrainOptions{}.special_tokens;
  std::string out;
};

void add_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids (no special tokens added)");
  cmd->add_option("--tokenizer", args->tokenizer, kTokenizerHelp)->required();
  auto* text = cmd->add_option("--text", args->text, "The text to encode");
  auto* file = cmd->add_option("--file", args->file, "A file to encode (\"-\" for standard input)");
  text->excludes(file);
  cmd->add_flag("--json", args->json, "Print {\"ids\": [...]} instead of space-separated ids");
  cmd->callback([args, text, file] {
    if (text->count() == 0 && file->count() == 0) fail("tokenize", "give --text TEXT or --file FILE");
    const Tokenizer tokenizer = load_tokenizer("tokenize", args->tokenizer);
    const std::string input = file->count() ? read_input("tokenize", args->file) : args->text;
    const std::vector<int32_t> ids = tokenizer.encode(input);
    if (args->json) {
      std::cout << json{{"ids", ids}}.dump() << "\n";
    } else {
      std::string line;
      for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
      std::cout << line << "\n";
    }
    std::exit(kExitOk);
  });
}

void add_detokenize(CLI::App& app) {
  auto args = std::make_shared<DetokenizeArgs>();
  auto* cmd = app.add_subcommand("detokenize", "Decode token ids to text");
  cmd->add_option("--tokenizer", args->tokenizer, kTokenizerHelp)->required();
  auto* ids = cmd->add_option("--ids", args->ids, "Ids separated by commas, e.g. 15496,995");
  auto* file = cmd->add_option("--file", args->file,
                               "A file of ids: separated by commas or whitespace, a JSON array, or {\"ids\": [...]} "
                               "(\"-\" for standard input)");
  ids->excludes(file);
  cmd->add_flag("--json", args->json, "Print {\"text\": \"...\"} instead of the bare text");
  cmd->callback([args, ids, file] {
    if (ids->count() == 0 && file->count() == 0) fail("detokenize", "give --ids 1,2,3 or --file FILE");
    const Tokenizer tokenizer = load_tokenizer("detokenize", args->tokenizer);
    const std::vector<int32_t> parsed = file->count()
                                            ? parse_ids("detokenize", args->file, read_input("detokenize", args->file))
                                            : parse_ids("detokenize", "--ids", args->ids);
    for (int32_t id : parsed) {
      if (static_cast<size_t>(id) >= tokenizer.vocab_size()) {
        fail("detokenize", "id " + std::to_string(id) + " is outside the vocabulary (size " +
                               std::to_string(tokenizer.vocab_size()) + ")");
      }
    }
    const std::string text = tokenizer.decode(parsed);
    if (args->json) {
      std::cout << json{{"text", text}}.dump() << "\n";
    } else {
      std::cout << text;
    }
    std::exit(kExitOk);
  });
}

void add_train(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* group = app.add_subcommand("tokenizer", "Tokenizer tools");
  group->require_subcommand(1);
  auto* cmd = group->add_subcommand("train", "Learn a byte-level BPE vocabulary; writes a Hugging Face tokenizer.json");
  cmd->add_option("--corpus", args->corpus, "Text files to learn from")->required()->expected(1, -1);
  cmd->add_option("--vocab-size", args->vocab_size, "Tokens in the result, counting special and byte tokens")
      ->capture_default_str();
  cmd->add_option("--min-frequency", args->min_frequency, "Pairs seen fewer times are never merged")
      ->capture_default_str();
  cmd->add_option("--special-token", args->special_tokens, "Special tokens, ids 0, 1, ... (repeat the flag)")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Where to write tokenizer.json")->required();
  cmd->callback([args] {
    BpeTrainOptions options;
    options.vocab_size = args->vocab_size;
    options.min_frequency = args->min_frequency;
    options.special_tokens = args->special_tokens;
    options.progress = [](const std::string& line) { std::cerr << "cairn tokenizer train: " << line << "\n"; };
    auto trained = train_bpe(args->corpus, options);
    if (!trained.ok()) fail("tokenizer train", trained.status().to_string());
    const Status saved = save_tokenizer_json(*trained, args->out);
    if (!saved.ok()) fail("tokenizer train", saved.to_string());
    std::cerr << "cairn tokenizer train: wrote " << args->out << " (" << trained->vocab_size() << " tokens)\n";
    std::exit(kExitOk);
  });
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  add_tokenize(app);
  add_detokenize(app);
  add_train(app);
}

}  // namespace cairn::cli
