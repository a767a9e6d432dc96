// `cairn generate` end to end: the built binary against the reference checkpoint.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace cairn {
namespace {

const std::string kTinyLlama = CAIRN_SOURCE_DIR "/../shared/fixtures/hf/tiny-llama";

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and, with capture_stderr, stderr
};

CommandResult run_cairn(const std::string& arguments, bool capture_stderr = false) {
  std::string command = std::string(CAIRN_BINARY) + " " + arguments + (capture_stderr ? " 2>&1" : " 2>/dev/null");
  CommandResult run;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.out.append(buffer.data(), n);
  int status = ::pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::vector<int64_t> reference_ids(const std::string& name) {
  auto reader = safetensors::Reader::open(kTinyLlama + "/reference.safetensors");
  EXPECT_TRUE(reader.ok()) << reader.status().to_string();
  const auto* info = reader->find(name);
  EXPECT_NE(info, nullptr) << name;
  const auto* data = reinterpret_cast<const int64_t*>(reader->data(*info));
  return std::vector<int64_t>(data, data + info->numel());
}

TEST(GenerateCliTest, GreedyJsonOutputMatchesTransformers) {
  std::vector<int64_t> prompt = reference_ids("prompt_ids");
  std::vector<int64_t> greedy = reference_ids("greedy_ids");
  std::string ids;
  for (size_t i = 0; i < prompt.size(); ++i) ids += (i ? "," : "") + std::to_string(prompt[i]);
  CommandResult run = run_cairn("generate --model " + kTinyLlama + " --prompt-ids " + ids + " --max-tokens 24 --ignore-eos --json");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  // Exactly one JSON object on stdout, keys in the documented order.
  EXPECT_EQ(run.out.rfind("{\"prompt_ids\":", 0), 0u) << run.out;
  auto out = nlohmann::json::parse(run.out);
  ASSERT_TRUE(out.is_object()) << run.out;
  EXPECT_EQ(out.size(), 3u);
  EXPECT_EQ(out["prompt_ids"].get<std::vector<int64_t>>(), prompt);
  EXPECT_EQ(out["output_ids"].get<std::vector<int64_t>>(),
            std::vector<int64_t>(greedy.begin() + static_cast<long>(prompt.size()), greedy.end()));
  EXPECT_TRUE(out["text"].is_string());
}

TEST(GenerateCliTest, SeededSamplingIsReproducibleAndEosStops) {
  const std::string args = "generate --model " + kTinyLlama +
                           " --prompt-ids 1,5,9 --max-tokens 40 --temperature 1.5 --top-p 0.95 --top-k 50 --seed 3 --json";
  CommandResult a = run_cairn(args), b = run_cairn(args);
  ASSERT_EQ(a.exit_code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  auto out = nlohmann::json::parse(a.out)["output_ids"].get<std::vector<int64_t>>();
  ASSERT_FALSE(out.empty());
  // Without --ignore-eos, an eos (2) can only be the last token.
  for (size_t i = 0; i + 1 < out.size(); ++i) EXPECT_NE(out[i], 2) << "generation went past eos at " << i;
}

TEST(GenerateCliTest, PromptTextUsesTheModelsTokenizer) {
  CommandResult run = run_cairn("generate --model " + kTinyLlama + " --prompt \"hello there\" --max-tokens 3 --ignore-eos --json");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  auto out = nlohmann::json::parse(run.out);
  EXPECT_FALSE(out["prompt_ids"].empty());
  EXPECT_EQ(out["output_ids"].size(), 3u);
}

TEST(GenerateCliTest, BadModelDirectoryNamesTheFile) {
  CommandResult missing = run_cairn("generate --model /nonexistent/model --prompt-ids 1,2 --max-tokens 2", true);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/model"), std::string::npos) << missing.out;

  CommandResult bad_ids = run_cairn("generate --model " + kTinyLlama + " --prompt-ids 1,x --max-tokens 2", true);
  EXPECT_EQ(bad_ids.exit_code, 1);
  EXPECT_NE(bad_ids.out.find("\"x\""), std::string::npos) << bad_ids.out;

  CommandResult out_of_vocab = run_cairn("generate --model " + kTinyLlama + " --prompt-ids 1,300 --max-tokens 2", true);
  EXPECT_EQ(out_of_vocab.exit_code, 1);
  EXPECT_NE(out_of_vocab.out.find("300"), std::string::npos) << out_of_vocab.out;
}

}  // namespace
}  // namespace cairn
