// `cairn train ...` against a real node with the train role: submit with --watch (JSON lines and
// plain lines) until the job succeeds, list, status, logs, cancel, and a bad config whose error
// names the key. The job is tiny (hidden 32, 2 layers, sequence 32, a few steps): seconds.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

#include "node_process.h"
#include "test_util.h"
#include "tiny_job.h"

namespace cairn::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr auto kCommandTimeout = 120s;

std::string job_yaml(const std::string& data_path, int max_steps, const std::string& extra = "") {
  return tiny_job_yaml(data_path, "max_steps: " + std::to_string(max_steps) +
                                      "\nlogging_steps: 1\noutput_model: cli-tiny\nseed: 3\n" + extra);
}

struct Output {
  int code = -1;
  std::string text;  // stdout and stderr together

  // Every line that is a JSON object, in order.
  std::vector<json> json_lines() const {
    std::vector<json> lines;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line.front() != '{') continue;
      json parsed = json::parse(line, nullptr, false);
      if (!parsed.is_discarded()) lines.push_back(parsed);
    }
    return lines;
  }
};

// One node for the suite (starting one costs seconds on a loaded machine); each test submits its
// own jobs and finds them by id.
class TrainCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    NodeOptions options;
    options.config_yaml = "node:\n  roles: [echo, registry, train]\n";
    auto node = NodeProcess::start(options);
    if (!node.ok()) {
      start_error_ = new std::string(node.status().to_string());
      return;
    }
    node_ = std::move(node).value().release();
  }
  static void TearDownTestSuite() {
    delete node_;
    node_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(node_, nullptr) << (start_error_ ? *start_error_ : "");
    data_path_ = dir_.path("data.jsonl");
    ASSERT_TRUE(write_file(data_path_, tiny_completion_jsonl(40)).ok());
  }

  // Writes `yaml` as NAME and returns its path.
  std::string config(const std::string& name, const std::string& yaml) {
    EXPECT_TRUE(write_file(dir_.path(name), yaml).ok());
    return dir_.path(name);
  }

  // Runs `cairn ARGS... --connect ADDR --token TOKEN`.
  Output cairn(std::vector<std::string> args) {
    std::vector<std::string> argv = {CAIRN_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--connect", node_->address(), "--token", node_->client_token()});
    const std::string out_path = dir_.path("out-" + std::to_string(++runs_));
    auto code = run_program(argv, out_path, kCommandTimeout);
    return {code.ok() ? *code : -1, read_file(out_path)};
  }

  // The ids of the node's jobs (train list --json).
  std::vector<std::string> job_ids() {
    Output list = cairn({"train", "list", "--json"});
    EXPECT_EQ(list.code, 0) << list.text;
    std::vector<std::string> ids;
    auto lines = list.json_lines();
    if (lines.size() != 1) return ids;
    for (const auto& job : lines[0]["jobs"]) ids.push_back(job.value("job_id", ""));
    return ids;
  }

  static inline NodeProcess* node_ = nullptr;
  static inline std::string* start_error_ = nullptr;
  TempDir dir_;
  std::string data_path_;
  int runs_ = 0;
};

TEST_F(TrainCliTest, SubmitWatchJsonFollowsTheJobToSuccessThenListStatusAndLogsShowIt) {
  const std::string path = config("job.yaml", job_yaml(data_path_, 4, "bogus_key: 1\n"));
  Output submitted = cairn({"train", "submit", path, "--watch", "--json"});
  ASSERT_EQ(submitted.code, 0) << submitted.text << node_->diagnostics();
  auto lines = submitted.json_lines();
  ASSERT_GE(lines.size(), 2u) << submitted.text;
  // First the submit reply, with the unknown key named in a warning.
  const std::string job_id = lines.front().value("job_id", "");
  ASSERT_FALSE(job_id.empty()) << submitted.text;
  EXPECT_NE(lines.front().dump().find("bogus_key"), std::string::npos) << submitted.text;
  // Then JobStatus lines; the last one final.
  const json& last = lines.back();
  EXPECT_EQ(last.value("job_id", ""), job_id);
  EXPECT_EQ(last.value("state", ""), "succeeded") << submitted.text;
  EXPECT_EQ(last.value("step", 0), 4);
  EXPECT_EQ(last.value("total_steps", 0), 4);
  EXPECT_GT(last.value("loss", 0.0), 0.0);

  auto ids = job_ids();
  EXPECT_NE(std::find(ids.begin(), ids.end(), job_id), ids.end());
  Output table = cairn({"train", "list"});
  ASSERT_EQ(table.code, 0) << table.text;
  EXPECT_NE(table.text.find(job_id), std::string::npos) << table.text;
  EXPECT_NE(table.text.find("succeeded"), std::string::npos) << table.text;

  Output status = cairn({"train", "status", job_id});
  ASSERT_EQ(status.code, 0) << status.text;
  EXPECT_NE(status.text.find("succeeded"), std::string::npos) << status.text;
  EXPECT_NE(status.text.find("4/4 steps"), std::string::npos) << status.text;

  Output logs = cairn({"train", "logs", job_id, "--json"});
  ASSERT_EQ(logs.code, 0) << logs.text;
  bool saw_progress = false;
  for (const auto& event : logs.json_lines()) saw_progress |= event.value("kind", "") == "progress";
  EXPECT_TRUE(saw_progress) << logs.text;

  // A finished job's watch ends at once with its outcome and exit code.
  Output watched = cairn({"train", "status", job_id, "--watch"});
  EXPECT_EQ(watched.code, 0) << watched.text;
  EXPECT_NE(watched.text.find("succeeded"), std::string::npos) << watched.text;
}

TEST_F(TrainCliTest, SubmitWatchPrintsPlainProgressLinesWithoutATerminal) {
  Output submitted = cairn({"train", "submit", config("job.yaml", job_yaml(data_path_, 3)), "--watch"});
  ASSERT_EQ(submitted.code, 0) << submitted.text << node_->diagnostics();
  EXPECT_NE(submitted.text.find("submitted job "), std::string::npos) << submitted.text;
  EXPECT_NE(submitted.text.find("step 3/3"), std::string::npos) << submitted.text;
  EXPECT_NE(submitted.text.find("succeeded"), std::string::npos) << submitted.text;
  EXPECT_EQ(submitted.text.find('\r'), std::string::npos) << "no in-place redraws without a terminal";
}

TEST_F(TrainCliTest, InvalidConfigIsRejectedNamingTheKey) {
  const size_t jobs_before = job_ids().size();
  const std::string path = config("bad.yaml", job_yaml(data_path_, 4, "warmup_steps: fast\n"));
  Output text = cairn({"train", "submit", path});
  EXPECT_EQ(text.code, 1) << text.text;
  EXPECT_NE(text.text.find("invalid_argument"), std::string::npos) << text.text;
  EXPECT_NE(text.text.find("warmup_steps"), std::string::npos) << text.text;
  EXPECT_NE(text.text.find("fast"), std::string::npos) << text.text;

  Output as_json = cairn({"train", "submit", path, "--json"});
  EXPECT_EQ(as_json.code, 1) << as_json.text;
  auto lines = as_json.json_lines();
  ASSERT_EQ(lines.size(), 1u) << as_json.text;
  EXPECT_EQ(lines[0]["error"].value("code", ""), "invalid_argument");
  EXPECT_NE(lines[0]["error"].value("message", "").find("warmup_steps"), std::string::npos) << as_json.text;

  // An override is checked the same way.
  Output overridden = cairn({"train", "submit", config("ok.yaml", job_yaml(data_path_, 4)), "--set", "micro_batch_size=-3"});
  EXPECT_EQ(overridden.code, 1) << overridden.text;
  EXPECT_NE(overridden.text.find("micro_batch_size"), std::string::npos) << overridden.text;

  EXPECT_EQ(job_ids().size(), jobs_before) << "rejected configs make no job";
}

TEST_F(TrainCliTest, CancelStopsARunningJobAndItsWatchFailsWithTheReason) {
  Output submitted = cairn({"train", "submit", config("long.yaml", job_yaml(data_path_, 100000)), "--json"});
  ASSERT_EQ(submitted.code, 0) << submitted.text << node_->diagnostics();
  const std::string job_id = submitted.json_lines().at(0).value("job_id", "");
  ASSERT_FALSE(job_id.empty());

  Output cancelled = cairn({"train", "cancel", job_id});
  EXPECT_EQ(cancelled.code, 0) << cancelled.text;
  EXPECT_NE(cancelled.text.find(job_id), std::string::npos) << cancelled.text;

  Output watched = cairn({"train", "status", job_id, "--watch", "--json"});
  EXPECT_EQ(watched.code, 1) << watched.text;
  auto lines = watched.json_lines();
  ASSERT_FALSE(lines.empty()) << watched.text;
  EXPECT_EQ(lines.back().value("state", ""), "cancelled") << watched.text;
  EXPECT_LT(lines.back().value("step", 0), 100000);

  Output unknown = cairn({"train", "status", "job-does-not-exist"});
  EXPECT_EQ(unknown.code, 1) << unknown.text;
  EXPECT_NE(unknown.text.find("not_found"), std::string::npos) << unknown.text;
}

}  // namespace
}  // namespace cairn::testing
