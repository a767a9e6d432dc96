// The MLflow REST API of a real node, over raw HTTP/1.1 as an MLflow client speaks it: a training
// session (experiment, run, batched metrics, params and tags, metric history, a filtered search,
// finishing the run), then registering the run's model with versions and aliases, and the errors
// a client sees (unknown run, bad JSON, no or wrong token, MLflow's batch limits).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace cairn::testing {
namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::chrono::milliseconds kHttpTimeout = 10s;

struct MlflowReply {
  int status = 0;
  std::string headers;  // lower-cased
  std::string body;
  Json json;  // discarded when the body is not JSON
};

// One request over a fresh connection (Connection: close), read to the end.
Result<MlflowReply> mlflow_call(uint16_t port, const std::string& method, const std::string& target,
                                const std::string& body, const std::string& authorization) {
  auto conn = RawConnection::connect(port, {}, kHttpTimeout);
  if (!conn.ok()) return conn.status();
  std::string request = method + " /api/2.0/mlflow" + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!authorization.empty()) request += "Authorization: " + authorization + "\r\n";
  if (!body.empty()) request += "Content-Type: application/json\r\n";
  request += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  CAIRN_RETURN_IF_ERROR((*conn)->write(request, kHttpTimeout));
  auto text = (*conn)->read_to_end(kHttpTimeout);
  if (!text.ok()) return text.status();
  const auto header_end = text->find("\r\n\r\n");
  if (text->rfind("HTTP/1.1 ", 0) != 0 || header_end == std::string::npos) {
    return Status(Code::bad_frame, "not an HTTP response: " + text->substr(0, 200));
  }
  MlflowReply reply;
  reply.status = std::atoi(text->c_str() + 9);
  reply.headers = text->substr(0, header_end);
  std::transform(reply.headers.begin(), reply.headers.end(), reply.headers.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  reply.body = text->substr(header_end + 4);
  reply.json = Json::parse(reply.body, nullptr, /*allow_exceptions=*/false);
  return reply;
}

// Standard base64 with padding, for Basic credentials.
std::string base64(const std::string& plain) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < plain.size(); i += 3) {
    uint32_t n = uint32_t(uint8_t(plain[i])) << 16;
    if (i + 1 < plain.size()) n |= uint32_t(uint8_t(plain[i + 1])) << 8;
    if (i + 2 < plain.size()) n |= uint8_t(plain[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < plain.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < plain.size() ? kAlphabet[n & 63] : '=';
  }
  return out;
}

class MlflowHttp : public SharedNodeTest {
 protected:
  static void SetUpTestSuite() { start_node({}); }
  void SetUp() override {
    SharedNodeTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_NE(node_->http_port(), 0);
  }

  // A request with the client token as MLFLOW_TRACKING_TOKEN sends it.
  MlflowReply call(const std::string& method, const std::string& target, const Json& body = Json()) {
    return call_as("Bearer " + node_->client_token(), method, target, body.is_null() ? "" : body.dump());
  }
  MlflowReply call_as(const std::string& authorization, const std::string& method, const std::string& target,
                      const std::string& body) {
    auto reply = mlflow_call(node_->http_port(), method, target, body, authorization);
    EXPECT_TRUE(reply.ok()) << method << " " << target << ": " << reply.status().to_string() << "\n"
                            << node_->diagnostics();
    return reply.ok() ? std::move(reply).value() : MlflowReply{};
  }
};

#define EXPECT_HTTP(reply, expected_status) \
  EXPECT_EQ((reply).status, expected_status) << (reply).body

TEST_F(MlflowHttp, TrainingSessionThenRegistryWithAliases) {
  // Experiment.
  auto experiment = call("POST", "/experiments/create", {{"name", "llama-sft"}, {"tags", {{{"key", "team"}, {"value", "nlp"}}}}});
  ASSERT_EQ(experiment.status, 200) << experiment.body;
  const std::string experiment_id = experiment.json["experiment_id"];
  auto by_name = call("GET", "/experiments/get-by-name?experiment_name=llama-sft");
  ASSERT_EQ(by_name.status, 200) << by_name.body;
  EXPECT_EQ(by_name.json["experiment"]["experiment_id"], experiment_id);
  EXPECT_EQ(by_name.json["experiment"]["lifecycle_stage"], "active");
  auto by_id = call("GET", "/experiments/get?experiment_id=" + experiment_id);
  ASSERT_EQ(by_id.status, 200) << by_id.body;
  EXPECT_EQ(by_id.json["experiment"]["name"], "llama-sft");
  auto experiments = call("POST", "/experiments/search", {{"filter", "name = 'llama-sft'"}, {"max_results", 10}});
  ASSERT_EQ(experiments.status, 200) << experiments.body;
  ASSERT_EQ(experiments.json["experiments"].size(), 1u);

  // A run, as mlflow.start_run() creates it (start_time as proto3 JSON's int64 string).
  auto run = call("POST", "/runs/create",
                  {{"experiment_id", experiment_id},
                   {"run_name", "sft-lr-3e-4"},
                   {"user_id", "alice"},
                   {"start_time", "1700000000000"},
                   {"tags", {{{"key", "mlflow.user"}, {"value", "alice"}}}}});
  ASSERT_EQ(run.status, 200) << run.body;
  const std::string run_id = run.json["run"]["info"]["run_id"];
  EXPECT_EQ(run.json["run"]["info"]["run_uuid"], run_id);
  EXPECT_EQ(run.json["run"]["info"]["status"], "RUNNING");
  EXPECT_EQ(run.json["run"]["info"]["start_time"], 1700000000000);

  // Training: batched metrics, params, tags, then single-item writes.
  Json metrics = Json::array();
  for (int step = 0; step < 100; ++step) {
    metrics.push_back({{"key", "loss"}, {"value", 3.0 - step * 0.02}, {"timestamp", 1700000000000 + step}, {"step", step}});
  }
  auto batch = call("POST", "/runs/log-batch",
                    {{"run_id", run_id},
                     {"metrics", metrics},
                     {"params", {{{"key", "lr"}, {"value", "3e-4"}}, {{"key", "batch_size"}, {"value", "8"}}}},
                     {"tags", {{{"key", "stage"}, {"value", "sft"}}}}});
  EXPECT_HTTP(batch, 200);
  EXPECT_EQ(batch.json, Json::object());
  EXPECT_HTTP(call("POST", "/runs/log-metric",
                   {{"run_id", run_id}, {"key", "accuracy"}, {"value", 0.91}, {"timestamp", "1700000000200"}, {"step", 99}}),
              200);
  EXPECT_HTTP(call("POST", "/runs/log-parameter", {{"run_id", run_id}, {"key", "epochs"}, {"value", "3"}}), 200);
  EXPECT_HTTP(call("POST", "/runs/set-tag", {{"run_id", run_id}, {"key", "stage"}, {"value", "sft-done"}}), 200);

  auto history = call("GET", "/metrics/get-history?run_id=" + run_id + "&metric_key=loss");
  ASSERT_EQ(history.status, 200) << history.body;
  ASSERT_EQ(history.json["metrics"].size(), 100u);
  EXPECT_EQ(history.json["metrics"][0]["step"], 0);
  EXPECT_EQ(history.json["metrics"][99]["step"], 99);
  EXPECT_DOUBLE_EQ(history.json["metrics"][99]["value"].get<double>(), 3.0 - 99 * 0.02);

  // A second run that the filter must leave out.
  auto other = call("POST", "/runs/create", {{"experiment_id", experiment_id}, {"start_time", 1700000001000}});
  ASSERT_EQ(other.status, 200) << other.body;
  const std::string other_id = other.json["run"]["info"]["run_id"];
  EXPECT_HTTP(call("POST", "/runs/log-batch",
                   {{"run_id", other_id},
                    {"metrics", {{{"key", "loss"}, {"value", 5.0}, {"timestamp", 1700000001001}}}},
                    {"params", {{{"key", "lr"}, {"value", "1e-3"}}}}}),
              200);

  auto found = call("POST", "/runs/search",
                    {{"experiment_ids", {experiment_id}},
                     {"filter", "metrics.loss < 2 and params.lr = '3e-4'"},
                     {"run_view_type", "ACTIVE_ONLY"},
                     {"max_results", 100},
                     {"order_by", {"metrics.loss ASC"}}});
  ASSERT_EQ(found.status, 200) << found.body;
  ASSERT_EQ(found.json["runs"].size(), 1u) << found.body;
  EXPECT_EQ(found.json["runs"][0]["info"]["run_id"], run_id);
  auto all = call("POST", "/runs/search", {{"experiment_ids", {experiment_id}}});
  ASSERT_EQ(all.status, 200) << all.body;
  EXPECT_EQ(all.json["runs"].size(), 2u);

  // Finish the run.
  auto finished = call("POST", "/runs/update", {{"run_id", run_id}, {"status", "FINISHED"}, {"end_time", 1700000009000}});
  ASSERT_EQ(finished.status, 200) << finished.body;
  EXPECT_EQ(finished.json["run_info"]["status"], "FINISHED");
  EXPECT_EQ(finished.json["run_info"]["end_time"], 1700000009000);
  auto got = call("GET", "/runs/get?run_id=" + run_id);
  ASSERT_EQ(got.status, 200) << got.body;
  EXPECT_EQ(got.json["run"]["info"]["status"], "FINISHED");
  std::map<std::string, std::string> params;
  for (const auto& p : got.json["run"]["data"]["params"]) params[p["key"]] = p["value"];
  EXPECT_EQ(params, (std::map<std::string, std::string>{{"lr", "3e-4"}, {"batch_size", "8"}, {"epochs", "3"}}));
  std::map<std::string, double> latest;
  for (const auto& m : got.json["run"]["data"]["metrics"]) latest[m["key"]] = m["value"];
  EXPECT_DOUBLE_EQ(latest.at("loss"), 3.0 - 99 * 0.02);
  EXPECT_DOUBLE_EQ(latest.at("accuracy"), 0.91);
  std::map<std::string, std::string> tags;
  for (const auto& t : got.json["run"]["data"]["tags"]) tags[t["key"]] = t["value"];
  EXPECT_EQ(tags["stage"], "sft-done");

  // Register the run's model: mlflow.register_model creates the model, then a version.
  const std::string model = "llama-sft-model";
  auto created = call("POST", "/registered-models/create", {{"name", model}, {"description", "SFT of llama"}});
  ASSERT_EQ(created.status, 200) << created.body;
  EXPECT_EQ(created.json["registered_model"]["name"], model);
  auto v1 = call("POST", "/model-versions/create",
                 {{"name", model}, {"source", "runs:/" + run_id + "/model"}, {"run_id", run_id}});
  ASSERT_EQ(v1.status, 200) << v1.body;
  EXPECT_EQ(v1.json["model_version"]["version"], "1");
  EXPECT_EQ(v1.json["model_version"]["run_id"], run_id);
  EXPECT_EQ(v1.json["model_version"]["status"], "READY");
  EXPECT_EQ(v1.json["model_version"]["current_stage"], "None");
  auto v2 = call("POST", "/model-versions/create", {{"name", model}, {"source", "runs:/" + other_id + "/model"}, {"run_id", other_id}});
  ASSERT_EQ(v2.status, 200) << v2.body;
  EXPECT_EQ(v2.json["model_version"]["version"], "2");

  EXPECT_HTTP(call("POST", "/registered-models/alias", {{"name", model}, {"alias", "production"}, {"version", "1"}}), 200);
  auto by_alias = call("GET", "/registered-models/alias?name=" + model + "&alias=production");
  ASSERT_EQ(by_alias.status, 200) << by_alias.body;
  EXPECT_EQ(by_alias.json["model_version"]["version"], "1");
  EXPECT_EQ(by_alias.json["model_version"]["run_id"], run_id);
  EXPECT_EQ(by_alias.json["model_version"]["aliases"], Json::array({"production"}));

  auto latest_versions = call("POST", "/registered-models/get-latest-versions", {{"name", model}, {"stages", {"None"}}});
  ASSERT_EQ(latest_versions.status, 200) << latest_versions.body;
  ASSERT_EQ(latest_versions.json["model_versions"].size(), 1u);
  EXPECT_EQ(latest_versions.json["model_versions"][0]["version"], "2");

  auto registered = call("GET", "/registered-models/get?name=" + model);
  ASSERT_EQ(registered.status, 200) << registered.body;
  EXPECT_EQ(registered.json["registered_model"]["aliases"], Json::array({{{"alias", "production"}, {"version", "1"}}}));
  auto models = call("GET", "/registered-models/search?filter=name+LIKE+%27llama%25%27");
  ASSERT_EQ(models.status, 200) << models.body;
  ASSERT_EQ(models.json["registered_models"].size(), 1u);

  auto versions = call("GET", "/model-versions/search?filter=name%3D%27" + model + "%27");
  ASSERT_EQ(versions.status, 200) << versions.body;
  EXPECT_EQ(versions.json["model_versions"].size(), 2u);
  auto version = call("GET", "/model-versions/get?name=" + model + "&version=2");
  ASSERT_EQ(version.status, 200) << version.body;
  EXPECT_EQ(version.json["model_version"]["run_id"], other_id);
  auto updated = call("PATCH", "/model-versions/update", {{"name", model}, {"version", "2"}, {"description", "lr 1e-3"}});
  ASSERT_EQ(updated.status, 200) << updated.body;
  EXPECT_EQ(updated.json["model_version"]["description"], "lr 1e-3");
  auto uri = call("GET", "/model-versions/get-download-uri?name=" + model + "&version=1");
  ASSERT_EQ(uri.status, 200) << uri.body;
  EXPECT_EQ(uri.json, Json({{"artifact_uri", "cairn://" + model + "/1"}}));

  // Move, then delete the alias.
  EXPECT_HTTP(call("POST", "/registered-models/alias", {{"name", model}, {"alias", "production"}, {"version", "2"}}), 200);
  EXPECT_EQ(call("GET", "/registered-models/alias?name=" + model + "&alias=production").json["model_version"]["version"], "2");
  EXPECT_HTTP(call("DELETE", "/registered-models/alias", {{"name", model}, {"alias", "production"}}), 200);
  auto gone = call("GET", "/registered-models/alias?name=" + model + "&alias=production");
  EXPECT_EQ(gone.status, 404) << gone.body;
  EXPECT_EQ(gone.json["error_code"], "RESOURCE_DOES_NOT_EXIST");
}

TEST_F(MlflowHttp, ErrorsComeInMlflowsShape) {
  auto unknown = call("GET", "/runs/get?run_id=0123456789abcdef0123456789abcdef");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(unknown.json["error_code"], "RESOURCE_DOES_NOT_EXIST");
  EXPECT_TRUE(unknown.json["message"].is_string());

  auto bad_json = call_as("Bearer " + node_->client_token(), "POST", "/runs/create", R"({"experiment_id": "0",)");
  EXPECT_EQ(bad_json.status, 400) << bad_json.body;
  EXPECT_EQ(bad_json.json["error_code"], "BAD_REQUEST");
  EXPECT_NE(bad_json.json["message"].get<std::string>().find("at byte"), std::string::npos) << bad_json.body;

  auto no_token = call_as("", "GET", "/experiments/get?experiment_id=0", "");
  EXPECT_EQ(no_token.status, 401) << no_token.body;
  EXPECT_EQ(no_token.json["error_code"], "UNAUTHENTICATED");
  EXPECT_NE(no_token.headers.find("www-authenticate: bearer"), std::string::npos) << no_token.headers;
  auto wrong_token = call_as("Bearer not-a-token", "GET", "/experiments/get?experiment_id=0", "");
  EXPECT_EQ(wrong_token.status, 401) << wrong_token.body;

  // MLFLOW_TRACKING_USERNAME/PASSWORD with the token as the password.
  auto basic = call_as("Basic " + base64("alice:" + node_->client_token()), "GET",
                       "/experiments/get?experiment_id=0", "");
  EXPECT_EQ(basic.status, 200) << basic.body;
  EXPECT_EQ(basic.json["experiment"]["name"], "Default");

  auto missing = call("POST", "/runs/log-batch", {{"metrics", Json::array()}});
  EXPECT_EQ(missing.status, 400) << missing.body;
  EXPECT_EQ(missing.json["error_code"], "INVALID_PARAMETER_VALUE");
  EXPECT_EQ(missing.json["message"], "Missing value for required parameter 'run_id'");

  auto duplicate = call("POST", "/experiments/create", {{"name", "twice"}});
  ASSERT_EQ(duplicate.status, 200) << duplicate.body;
  auto again = call("POST", "/experiments/create", {{"name", "twice"}});
  EXPECT_EQ(again.status, 400) << again.body;
  EXPECT_EQ(again.json["error_code"], "RESOURCE_ALREADY_EXISTS");
}

TEST_F(MlflowHttp, LogBatchEnforcesMlflowsLimitsAndWriteOnceParams) {
  auto run = call("POST", "/runs/create", {{"experiment_id", "0"}});
  ASSERT_EQ(run.status, 200) << run.body;
  const std::string run_id = run.json["run"]["info"]["run_id"];

  Json metrics = Json::array();
  for (int i = 0; i < 1001; ++i) metrics.push_back({{"key", "m"}, {"value", i}, {"timestamp", 1}, {"step", i}});
  auto too_many = call("POST", "/runs/log-batch", {{"run_id", run_id}, {"metrics", metrics}});
  EXPECT_EQ(too_many.status, 400) << too_many.body;
  EXPECT_EQ(too_many.json["error_code"], "INVALID_PARAMETER_VALUE");
  EXPECT_NE(too_many.json["message"].get<std::string>().find("1000"), std::string::npos) << too_many.body;

  Json params = Json::array();
  for (int i = 0; i < 101; ++i) params.push_back({{"key", "p" + std::to_string(i)}, {"value", "v"}});
  auto too_many_params = call("POST", "/runs/log-batch", {{"run_id", run_id}, {"params", params}});
  EXPECT_EQ(too_many_params.status, 400) << too_many_params.body;
  EXPECT_NE(too_many_params.json["message"].get<std::string>().find("100"), std::string::npos) << too_many_params.body;

  Json tags = Json::array();
  for (int i = 0; i < 101; ++i) tags.push_back({{"key", "t" + std::to_string(i)}, {"value", "v"}});
  auto too_many_tags = call("POST", "/runs/log-batch", {{"run_id", run_id}, {"tags", tags}});
  EXPECT_EQ(too_many_tags.status, 400) << too_many_tags.body;

  metrics.erase(metrics.begin());  // exactly 1000 is allowed
  EXPECT_HTTP(call("POST", "/runs/log-batch", {{"run_id", run_id}, {"metrics", metrics}}), 200);

  EXPECT_HTTP(call("POST", "/runs/log-parameter", {{"run_id", run_id}, {"key", "lr"}, {"value", "1e-4"}}), 200);
  EXPECT_HTTP(call("POST", "/runs/log-parameter", {{"run_id", run_id}, {"key", "lr"}, {"value", "1e-4"}}), 200);
  auto changed = call("POST", "/runs/log-parameter", {{"run_id", run_id}, {"key", "lr"}, {"value", "2e-4"}});
  EXPECT_EQ(changed.status, 400) << changed.body;
  EXPECT_EQ(changed.json["error_code"], "INVALID_PARAMETER_VALUE");
}

}  // namespace
}  // namespace cairn::testing
