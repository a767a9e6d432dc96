// The MLflow REST layer without a node: the JSON codec over fields() structs, and the routes
// against a fake Dispatcher that records each Call and answers it with a canned reply or error.
// Everything runs on the test thread: the fake answers inside dispatch(), or when the test says.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/detail/mlflow_json.h"
#include "cluster/mlflow_api.h"
#include "runtime/call.h"
#include "runtime/messages/registry.h"

namespace cairn {
namespace {

using mlflow_json::DecodeOptions;
using mlflow_json::Json;

const std::string kAdminToken = "an-admin-token-for-mlflow-tests-0123456789";
const std::string kClientToken = "a-client-token-for-mlflow-tests-0123456789";

// ---- codec ----

TEST(MlflowJson, EncodesRequiredFieldsAndNonEmptyOptionalOnes) {
  msg::RunInfo info;
  info.run_id = "r1";
  info.experiment_id = "0";
  info.status = "RUNNING";
  info.start_time = 1700000000123;
  info.lifecycle_stage = "active";
  Json j = mlflow_json::encode(info);
  EXPECT_EQ(j["run_id"], "r1");
  EXPECT_EQ(j["start_time"], 1700000000123);  // int64 as a JSON number
  EXPECT_TRUE(j["start_time"].is_number_integer());
  EXPECT_FALSE(j.contains("run_name"));       // optional and empty
  EXPECT_FALSE(j.contains("config_digest"));
  EXPECT_TRUE(j.contains("end_time"));        // optional numbers are always written
  EXPECT_EQ(j["end_time"], 0);
}

TEST(MlflowJson, RoundTripsNestedStructsListsMapsAndOptionals) {
  msg::ModelVersion v;
  v.name = "llama";
  v.version = "3";
  v.creation_timestamp = 17;
  v.status = "READY";
  v.tags = {{"k", "v"}, {"k2", ""}};
  v.aliases = {"prod"};
  v.metrics = {{"loss", 0.25}, {"nan", std::nan("")}};
  v.artifacts = {{"model.safetensors", std::string(64, 'a'), 12345678901ull}};
  msg::UpdateModelRequest u;
  u.name = "llama";
  u.description = "";

  Json j = mlflow_json::encode(v);
  EXPECT_EQ(j["metrics"]["nan"], "NaN");  // proto3's spelling of a non-finite double
  auto back = mlflow_json::decode<msg::ModelVersion>(j);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->name, "llama");
  EXPECT_EQ(back->tags.size(), 2u);
  EXPECT_EQ(back->tags[1].key, "k2");
  EXPECT_EQ(back->aliases, std::vector<std::string>{"prod"});
  EXPECT_EQ(back->metrics.at("loss"), 0.25);
  EXPECT_TRUE(std::isnan(back->metrics.at("nan")));
  EXPECT_EQ(back->artifacts.at(0).size, 12345678901ull);

  // An engaged std::optional is written even when empty: "set the description to ''".
  Json uj = mlflow_json::encode(u);
  ASSERT_TRUE(uj.contains("description"));
  auto u_back = mlflow_json::decode<msg::UpdateModelRequest>(uj);
  ASSERT_TRUE(u_back.ok());
  EXPECT_EQ(u_back->description, std::optional<std::string>(""));
  auto absent = mlflow_json::decode<msg::UpdateModelRequest>(Json{{"name", "m"}, {"description", nullptr}});
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->description.has_value());
}

TEST(MlflowJson, AcceptsProto3Int64StringsAndNonFiniteDoubleStrings) {
  auto m = mlflow_json::decode<msg::Metric>(
      Json::parse(R"({"key": "loss", "value": "NaN", "timestamp": "1700000000000", "step": "-3"})"));
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(std::isnan(m->value));
  EXPECT_EQ(m->timestamp, 1700000000000);
  EXPECT_EQ(m->step, -3);
  for (const char* text : {R"("Infinity")", R"("-Infinity")", R"("2.5e-3")", "7", "1e2"}) {
    auto v = mlflow_json::decode<msg::Metric>(Json{{"key", "k"}, {"value", Json::parse(text)}, {"timestamp", 1}});
    EXPECT_TRUE(v.ok()) << text;
  }
  auto whole_float = mlflow_json::decode<msg::Metric>(Json{{"key", "k"}, {"value", 1}, {"timestamp", 5.0}});
  ASSERT_TRUE(whole_float.ok());
  EXPECT_EQ(whole_float->timestamp, 5);
}

TEST(MlflowJson, ErrorsNameTheParameterAndWhatWasWrong) {
  auto missing = mlflow_json::decode<msg::LogBatchRequest>(Json::object());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::bad_request);
  EXPECT_EQ(missing.status().message(), "Missing value for required parameter 'run_id'");

  auto nested = mlflow_json::decode<msg::LogBatchRequest>(Json::parse(
      R"({"run_id": "r", "metrics": [{"key": "a", "value": 1, "timestamp": 1},
                                     {"key": "b", "value": "high", "timestamp": 1}]})"));
  ASSERT_FALSE(nested.ok());
  EXPECT_EQ(nested.status().message(), "Invalid value \"high\" for parameter 'metrics[1].value': expected a number");

  auto wrong_type = mlflow_json::decode<msg::RunIdRequest>(Json{{"run_id", 42}});
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_EQ(wrong_type.status().message(), "Invalid value 42 for parameter 'run_id': expected a string");

  for (const char* bad : {R"("12abc")", R"("")", R"(1.5)", R"("99999999999999999999")", R"(true)"}) {
    auto r = mlflow_json::decode<msg::Metric>(Json{{"key", "k"}, {"value", 1}, {"timestamp", Json::parse(bad)}});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("'timestamp': expected an integer"), std::string::npos) << bad;
  }
  auto negative = mlflow_json::decode<msg::SearchRunsRequest>(Json{{"experiment_ids", {"0"}}, {"max_results", -1}});
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find("expected a non-negative integer"), std::string::npos);
  auto not_list = mlflow_json::decode<msg::SearchRunsRequest>(Json{{"experiment_ids", "0"}});
  ASSERT_FALSE(not_list.ok());
  EXPECT_NE(not_list.status().message().find("'experiment_ids': expected a list"), std::string::npos);
  auto not_object = mlflow_json::decode<msg::RunIdRequest>(Json::array());
  ASSERT_FALSE(not_object.ok());
  EXPECT_NE(not_object.status().message().find("'body': expected an object"), std::string::npos);

  // A long bad value is quoted only in part.
  auto long_value = mlflow_json::decode<msg::RunIdRequest>(Json{{"run_id", Json::array({std::string(500, 'x')})}});
  ASSERT_FALSE(long_value.ok());
  EXPECT_LT(long_value.status().message().size(), 200u);
}

TEST(MlflowJson, IgnoresUnknownKeys) {
  auto r = mlflow_json::decode<msg::RunIdRequest>(Json{{"run_id", "r"}, {"run_uuid", "r"}, {"future", {1, 2}}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->run_id, "r");
}

TEST(MlflowJson, QueryStringsDecodeEscapesAndRepeatedKeys) {
  auto q = mlflow_json::parse_query("filter=name+LIKE+%27llama%25%27&order_by=name&order_by=version%20DESC&max_results=5&flag");
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  EXPECT_EQ((*q)["filter"], "name LIKE 'llama%'");
  EXPECT_EQ((*q)["order_by"], Json::array({"name", "version DESC"}));
  EXPECT_EQ((*q)["flag"], "");

  DecodeOptions query;
  query.from_query = true;
  auto search = mlflow_json::decode<msg::SearchModelsRequest>(*q, query);
  ASSERT_TRUE(search.ok()) << search.status().to_string();
  EXPECT_EQ(search->max_results, 5u);
  EXPECT_EQ(search->order_by, (std::vector<std::string>{"name", "version DESC"}));
  // One value for a list field is a list of one, in a query string only.
  auto single = mlflow_json::decode<msg::SearchModelsRequest>(Json{{"order_by", "name"}}, query);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->order_by, std::vector<std::string>{"name"});

  auto bad = mlflow_json::parse_query("name=a%2");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad %-escape in 'name'"), std::string::npos);
  EXPECT_FALSE(mlflow_json::parse_query("name=%zz").ok());
}

TEST(MlflowJson, Base64RoundTripsAndRejectsGarbage) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", "user:token", std::string("\0\xff\x10", 3)}) {
    auto back = mlflow_json::base64_decode(mlflow_json::base64_encode(s));
    ASSERT_TRUE(back.has_value()) << s;
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(mlflow_json::base64_encode("user:token"), "dXNlcjp0b2tlbg==");
  EXPECT_FALSE(mlflow_json::base64_decode("not base64!").has_value());
  EXPECT_FALSE(mlflow_json::base64_decode("a").has_value());
}

TEST(MlflowJson, DumpReplacesInvalidUtf8) {
  std::string text = mlflow_json::dump(Json{{"v", std::string("ok\xff")}});
  EXPECT_NE(text.find("ok"), std::string::npos);
}

// ---- routes ----

// Records every Call and answers it with `answer`, or keeps it for the test to answer later.
class FakeDispatcher final : public Dispatcher {
 public:
  void dispatch(CallPtr call) override {
    calls.push_back(call);
    if (answer) answer(call);
  }
  // nullptr: keep the call unanswered.
  std::function<void(const CallPtr&)> answer;
  std::vector<CallPtr> calls;
};

class MlflowRoutes : public ::testing::Test {
 protected:
  void SetUp() override {
    auto parsed = TokenStore::parse("admin " + kAdminToken + "\nclient " + kClientToken + "\n", "tokens");
    ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
    tokens_ = std::move(parsed).value();
    register_mlflow_routes(routes_, dispatcher_, tokens_);
    answer_with(msg::Empty{});
  }

  // The dispatcher answers every call with `reply`.
  template <class Reply>
  void answer_with(const Reply& reply) {
    dispatcher_.answer = [reply](const CallPtr& call) { call->reply(reply); };
  }
  void fail_with(const Status& status) {
    dispatcher_.answer = [status](const CallPtr& call) { call->fail(status); };
  }

  // Sends a request to the router; the slot holds the response once one is sent.
  std::shared_ptr<std::optional<HttpResponse>> start(const std::string& method, const std::string& target,
                                                     const std::string& body = "",
                                                     std::optional<std::string> authorization = std::nullopt) {
    HttpRequest request;
    request.method = method;
    auto q = target.find('?');
    request.path = std::string(kMlflowApiPrefix) + target.substr(0, q);
    if (q != std::string::npos) request.query = target.substr(q + 1);
    request.body = body;
    const std::string header = authorization.value_or("Bearer " + kClientToken);
    if (!header.empty()) request.headers["authorization"] = header;
    auto slot = std::make_shared<std::optional<HttpResponse>>();
    routes_.handle(request, HttpResponder([slot](HttpResponse r) { *slot = std::move(r); }));
    return slot;
  }
  // The response, if one was sent by the time the router returned.
  std::optional<HttpResponse> send(const std::string& method, const std::string& target, const std::string& body = "",
                                   std::optional<std::string> authorization = std::nullopt) {
    return *start(method, target, body, std::move(authorization));
  }

  // The body of the only call dispatched so far, decoded as the catalogue request T.
  template <class T>
  T only_call_body(std::string_view op) {
    EXPECT_EQ(dispatcher_.calls.size(), 1u);
    if (dispatcher_.calls.empty()) return T{};
    EXPECT_EQ(dispatcher_.calls[0]->op(), op);
    auto body = dispatcher_.calls[0]->template body<T>();
    EXPECT_TRUE(body.ok()) << body.status().to_string();
    return body.ok() ? *body : T{};
  }

  static Json json_of(const std::optional<HttpResponse>& response) {
    if (!response) return Json();
    return Json::parse(response->body);
  }

  TokenStore tokens_;
  HttpRouter routes_;
  FakeDispatcher dispatcher_;
};

TEST_F(MlflowRoutes, CreateExperimentSendsTheRequestAndAnswersTheReply) {
  answer_with(msg::CreateExperimentReply{"7"});
  auto response = send("POST", "/experiments/create",
                       R"({"name": "llama-sft", "artifact_location": "s3://x", "tags": [{"key": "team", "value": "nlp"}]})");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->content_type, "application/json");
  EXPECT_EQ(json_of(response), Json({{"experiment_id", "7"}}));
  auto body = only_call_body<msg::CreateExperimentRequest>(msg::kCreateExperiment);
  EXPECT_EQ(body.name, "llama-sft");
  EXPECT_EQ(body.artifact_location, "s3://x");
  ASSERT_EQ(body.tags.size(), 1u);
  EXPECT_EQ(body.tags[0].value, "nlp");
  EXPECT_EQ(dispatcher_.calls[0]->role(), Role::client);
  EXPECT_EQ(dispatcher_.calls[0]->client_name(), "mlflow-http");
}

TEST_F(MlflowRoutes, ExperimentGetAndGetByNameReadTheQueryString) {
  msg::ExperimentReply reply;
  reply.experiment.experiment_id = "3";
  reply.experiment.name = "a b";
  reply.experiment.lifecycle_stage = "active";
  answer_with(reply);
  auto by_id = send("GET", "/experiments/get?experiment_id=3");
  ASSERT_TRUE(by_id);
  EXPECT_EQ(by_id->status, 200);
  EXPECT_EQ(json_of(by_id)["experiment"]["name"], "a b");
  EXPECT_EQ(only_call_body<msg::GetExperimentRequest>(msg::kGetExperiment).experiment_id, "3");

  dispatcher_.calls.clear();
  auto by_name = send("GET", "/experiments/get-by-name?experiment_name=a%20b");
  ASSERT_TRUE(by_name);
  EXPECT_EQ(by_name->status, 200);
  auto body = only_call_body<msg::GetExperimentRequest>(msg::kGetExperiment);
  EXPECT_EQ(body.experiment_name, "a b");
  EXPECT_EQ(body.experiment_id, "");

  dispatcher_.calls.clear();
  auto missing = send("GET", "/experiments/get-by-name");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 400);
  EXPECT_EQ(json_of(missing)["error_code"], "INVALID_PARAMETER_VALUE");
  EXPECT_EQ(json_of(missing)["message"], "Missing value for required parameter 'experiment_name'");
  EXPECT_TRUE(dispatcher_.calls.empty());
}

TEST_F(MlflowRoutes, GetRunAnswersMlflowsRunShape) {
  msg::RunReply reply;
  reply.run.info.run_id = "abc";
  reply.run.info.experiment_id = "1";
  reply.run.info.status = "RUNNING";
  reply.run.info.start_time = 1700000000000;
  reply.run.info.lifecycle_stage = "active";
  reply.run.data.metrics = {{"loss", 0.5, 1700000000001, 10}};
  reply.run.data.params = {{"lr", "3e-4"}};
  answer_with(reply);
  auto response = send("GET", "/runs/get?run_id=abc");
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  Json run = json_of(response)["run"];
  EXPECT_EQ(run["info"]["run_id"], "abc");
  EXPECT_EQ(run["info"]["run_uuid"], "abc");  // for clients that still read it
  EXPECT_EQ(run["info"]["start_time"], 1700000000000);
  EXPECT_EQ(run["data"]["metrics"][0], Json({{"key", "loss"}, {"value", 0.5}, {"timestamp", 1700000000001}, {"step", 10}}));
  EXPECT_EQ(run["data"]["params"][0]["value"], "3e-4");
  EXPECT_FALSE(run["data"].contains("tags"));
  EXPECT_EQ(only_call_body<msg::RunIdRequest>(msg::kGetRun).run_id, "abc");
}

TEST_F(MlflowRoutes, CreateAndUpdateRunAcceptInt64AsStringsAndRunUuid) {
  msg::RunReply reply;
  reply.run.info.run_id = "r9";
  answer_with(reply);
  auto created = send("POST", "/runs/create",
                      R"({"experiment_id": "1", "start_time": "1700000000000", "run_name": "first",
                          "tags": [{"key": "mlflow.user", "value": "me"}], "user_id": "me"})");
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, 200);
  auto create = only_call_body<msg::CreateRunRequest>(msg::kCreateRun);
  EXPECT_EQ(create.start_time, 1700000000000);
  EXPECT_EQ(create.run_name, "first");
  EXPECT_EQ(create.user_id, "me");

  dispatcher_.calls.clear();
  msg::UpdateRunReply updated_reply;
  updated_reply.run_info.run_id = "r9";
  updated_reply.run_info.status = "FINISHED";
  answer_with(updated_reply);
  auto updated = send("POST", "/runs/update", R"({"run_uuid": "r9", "status": "FINISHED", "end_time": 1700000009999})");
  ASSERT_TRUE(updated);
  EXPECT_EQ(updated->status, 200);
  EXPECT_EQ(json_of(updated)["run_info"]["status"], "FINISHED");
  auto update = only_call_body<msg::UpdateRunRequest>(msg::kUpdateRun);
  EXPECT_EQ(update.run_id, "r9");  // from run_uuid
  EXPECT_EQ(update.end_time, 1700000009999);
}

TEST_F(MlflowRoutes, SingleItemWritesBecomeOneItemLogBatches) {
  auto metric = send("POST", "/runs/log-metric",
                     R"({"run_id": "r", "key": "loss", "value": 1.25, "timestamp": "1700000000000", "step": 3})");
  ASSERT_TRUE(metric);
  EXPECT_EQ(metric->status, 200);
  EXPECT_EQ(json_of(metric), Json::object());
  auto batch = only_call_body<msg::LogBatchRequest>(msg::kLogBatch);
  EXPECT_EQ(batch.run_id, "r");
  ASSERT_EQ(batch.metrics.size(), 1u);
  EXPECT_EQ(batch.metrics[0].key, "loss");
  EXPECT_EQ(batch.metrics[0].value, 1.25);
  EXPECT_EQ(batch.metrics[0].timestamp, 1700000000000);
  EXPECT_EQ(batch.metrics[0].step, 3);
  EXPECT_TRUE(batch.params.empty());

  dispatcher_.calls.clear();
  ASSERT_TRUE(send("POST", "/runs/log-parameter", R"({"run_id": "r", "key": "lr", "value": "3e-4"})"));
  batch = only_call_body<msg::LogBatchRequest>(msg::kLogBatch);
  ASSERT_EQ(batch.params.size(), 1u);
  EXPECT_EQ(batch.params[0].value, "3e-4");

  dispatcher_.calls.clear();
  ASSERT_TRUE(send("POST", "/runs/set-tag", R"({"run_id": "r", "key": "stage", "value": "sft"})"));
  batch = only_call_body<msg::LogBatchRequest>(msg::kLogBatch);
  ASSERT_EQ(batch.tags.size(), 1u);
  EXPECT_EQ(batch.tags[0].key, "stage");

  dispatcher_.calls.clear();
  auto no_timestamp = send("POST", "/runs/log-metric", R"({"run_id": "r", "key": "loss", "value": 1})");
  ASSERT_TRUE(no_timestamp);
  EXPECT_EQ(no_timestamp->status, 400);
  EXPECT_EQ(json_of(no_timestamp)["message"], "Missing value for required parameter 'timestamp'");
  EXPECT_TRUE(dispatcher_.calls.empty());
}

TEST_F(MlflowRoutes, LogBatchAndSearchRunsPassTheirBodiesThrough) {
  auto logged = send("POST", "/runs/log-batch", R"({"run_id": "r",
      "metrics": [{"key": "loss", "value": 2, "timestamp": 1, "step": 0}, {"key": "loss", "value": "NaN", "timestamp": 2}],
      "params": [{"key": "lr", "value": "1e-3"}], "tags": [{"key": "t", "value": "v"}]})");
  ASSERT_TRUE(logged);
  EXPECT_EQ(logged->status, 200);
  auto batch = only_call_body<msg::LogBatchRequest>(msg::kLogBatch);
  ASSERT_EQ(batch.metrics.size(), 2u);
  EXPECT_TRUE(std::isnan(batch.metrics[1].value));
  EXPECT_EQ(batch.params.size(), 1u);
  EXPECT_EQ(batch.tags.size(), 1u);

  dispatcher_.calls.clear();
  msg::SearchRunsReply reply;
  reply.runs.resize(2);
  reply.runs[0].info.run_id = "a";
  reply.runs[1].info.run_id = "b";
  reply.next_page_token = "tok";
  answer_with(reply);
  auto searched = send("POST", "/runs/search",
                       R"({"experiment_ids": ["1", "2"], "filter": "metrics.loss < 2 and params.lr = '3e-4'",
                           "run_view_type": "ACTIVE_ONLY", "max_results": 10, "order_by": ["metrics.loss ASC"]})");
  ASSERT_TRUE(searched);
  ASSERT_EQ(searched->status, 200);
  Json j = json_of(searched);
  EXPECT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][1]["info"]["run_uuid"], "b");
  EXPECT_EQ(j["next_page_token"], "tok");
  auto search = only_call_body<msg::SearchRunsRequest>(msg::kSearchRuns);
  EXPECT_EQ(search.experiment_ids, (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(search.filter, "metrics.loss < 2 and params.lr = '3e-4'");
  EXPECT_EQ(search.max_results, 10u);
  EXPECT_EQ(search.order_by, std::vector<std::string>{"metrics.loss ASC"});
}

TEST_F(MlflowRoutes, MetricHistoryReadsTheQueryString) {
  msg::MetricHistoryReply reply;
  reply.metrics = {{"loss", 3, 1, 0}, {"loss", 2, 2, 1}};
  answer_with(reply);
  auto response = send("GET", "/metrics/get-history?run_id=r&metric_key=loss&max_results=100");
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200);
  EXPECT_EQ(json_of(response)["metrics"][1]["step"], 1);
  auto body = only_call_body<msg::GetMetricHistoryRequest>(msg::kGetMetricHistory);
  EXPECT_EQ(body.run_id, "r");
  EXPECT_EQ(body.metric_key, "loss");
  EXPECT_EQ(body.max_results, 100u);
}

TEST_F(MlflowRoutes, RegisteredModelEndpointsMapToTheirOps) {
  msg::ModelReply model;
  model.registered_model.name = "llama";
  model.registered_model.latest_versions.resize(1);
  model.registered_model.latest_versions[0].version = "2";
  answer_with(model);
  auto created = send("POST", "/registered-models/create", R"({"name": "llama", "description": "d"})");
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, 200);
  EXPECT_EQ(json_of(created)["registered_model"]["latest_versions"][0]["current_stage"], "None");
  EXPECT_EQ(only_call_body<msg::CreateModelRequest>(msg::kCreateModel).description, "d");

  dispatcher_.calls.clear();
  ASSERT_EQ(send("GET", "/registered-models/get?name=llama")->status, 200);
  EXPECT_EQ(only_call_body<msg::ModelNameRequest>(msg::kGetModel).name, "llama");

  dispatcher_.calls.clear();
  ASSERT_EQ(send("PATCH", "/registered-models/update", R"({"name": "llama", "description": "new"})")->status, 200);
  EXPECT_EQ(only_call_body<msg::UpdateModelRequest>(msg::kUpdateModel).description, std::optional<std::string>("new"));

  dispatcher_.calls.clear();
  answer_with(msg::Empty{});
  auto deleted = send("DELETE", "/registered-models/delete", R"({"name": "llama"})");
  ASSERT_EQ(deleted->status, 200);
  EXPECT_EQ(json_of(deleted), Json::object());
  EXPECT_EQ(only_call_body<msg::ModelNameRequest>(msg::kDeleteModel).name, "llama");

  dispatcher_.calls.clear();
  answer_with(msg::SearchModelsReply{});
  auto searched = send("GET", "/registered-models/search?filter=name+LIKE+%27ll%25%27&max_results=50&order_by=name+ASC");
  ASSERT_EQ(searched->status, 200);
  EXPECT_EQ(json_of(searched), Json({{"registered_models", Json::array()}}));
  auto search = only_call_body<msg::SearchModelsRequest>(msg::kSearchModels);
  EXPECT_EQ(search.filter, "name LIKE 'll%'");
  EXPECT_EQ(search.max_results, 50u);
  EXPECT_EQ(search.order_by, std::vector<std::string>{"name ASC"});

  dispatcher_.calls.clear();
  answer_with(model);
  ASSERT_EQ(send("POST", "/registered-models/set-tag", R"({"name": "llama", "key": "k", "value": "v"})")->status, 200);
  auto set_tag = only_call_body<msg::UpdateModelRequest>(msg::kUpdateModel);
  ASSERT_EQ(set_tag.set_tags.size(), 1u);
  EXPECT_EQ(set_tag.set_tags[0].value, "v");
  EXPECT_FALSE(set_tag.description.has_value());  // a tag write leaves the description alone

  dispatcher_.calls.clear();
  ASSERT_EQ(send("DELETE", "/registered-models/delete-tag?name=llama&key=k")->status, 200);
  EXPECT_EQ(only_call_body<msg::UpdateModelRequest>(msg::kUpdateModel).delete_tags, std::vector<std::string>{"k"});
}

TEST_F(MlflowRoutes, LatestVersionsIgnoreStagesAndMarkEveryVersionStageNone) {
  msg::LatestVersionsReply reply;
  reply.model_versions.resize(1);
  reply.model_versions[0].name = "llama";
  reply.model_versions[0].version = "4";
  reply.model_versions[0].status = "READY";
  answer_with(reply);
  for (const auto& [method, target, body] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"POST", "/registered-models/get-latest-versions", R"({"name": "llama", "stages": ["Production"]})"},
           {"GET", "/registered-models/get-latest-versions?name=llama&stages=Staging", ""}}) {
    dispatcher_.calls.clear();
    auto response = send(method, target, body);
    ASSERT_TRUE(response);
    ASSERT_EQ(response->status, 200) << response->body;
    Json v = json_of(response)["model_versions"][0];
    EXPECT_EQ(v["version"], "4");
    EXPECT_EQ(v["current_stage"], "None");
    EXPECT_EQ(only_call_body<msg::ModelNameRequest>(msg::kGetLatestVersions).name, "llama");
  }
}

TEST_F(MlflowRoutes, AliasesSetDeleteAndResolve) {
  ASSERT_EQ(send("POST", "/registered-models/alias", R"({"name": "llama", "alias": "prod", "version": "2"})")->status,
            200);
  auto set = only_call_body<msg::SetAliasRequest>(msg::kSetAlias);
  EXPECT_EQ(set.alias, "prod");
  EXPECT_EQ(set.version, "2");

  // DELETE takes a JSON body, or the query string when it has none (as MLflow's server does).
  for (const auto& [target, body] : std::vector<std::pair<std::string, std::string>>{
           {"/registered-models/alias", R"({"name": "llama", "alias": "prod"})"},
           {"/registered-models/alias?name=llama&alias=prod", ""}}) {
    dispatcher_.calls.clear();
    ASSERT_EQ(send("DELETE", target, body)->status, 200);
    auto deleted = only_call_body<msg::AliasRequest>(msg::kDeleteAlias);
    EXPECT_EQ(deleted.name, "llama");
    EXPECT_EQ(deleted.alias, "prod");
  }

  dispatcher_.calls.clear();
  msg::VersionReply version;
  version.model_version.name = "llama";
  version.model_version.version = "2";
  version.model_version.aliases = {"prod"};
  answer_with(version);
  auto resolved = send("GET", "/registered-models/alias?name=llama&alias=prod");
  ASSERT_EQ(resolved->status, 200);
  EXPECT_EQ(json_of(resolved)["model_version"]["aliases"], Json::array({"prod"}));
  auto get = only_call_body<msg::GetVersionRequest>(msg::kGetVersion);
  EXPECT_EQ(get.alias, "prod");
  EXPECT_EQ(get.version, "");
}

TEST_F(MlflowRoutes, ModelVersionEndpointsAndDownloadUri) {
  msg::VersionReply version;
  version.model_version.name = "llama";
  version.model_version.version = "3";
  version.model_version.run_id = "r";
  version.model_version.status = "READY";
  answer_with(version);
  auto created = send("POST", "/model-versions/create",
                      R"({"name": "llama", "source": "runs:/r/model", "run_id": "r", "run_link": "ignored"})");
  ASSERT_EQ(created->status, 200);
  EXPECT_EQ(json_of(created)["model_version"]["status"], "READY");
  auto create = only_call_body<msg::CreateVersionRequest>(msg::kCreateVersion);
  EXPECT_EQ(create.source, "runs:/r/model");
  EXPECT_FALSE(create.create_model);  // MLflow's semantics: the model must exist

  dispatcher_.calls.clear();
  ASSERT_EQ(send("GET", "/model-versions/get?name=llama&version=3")->status, 200);
  auto get = only_call_body<msg::GetVersionRequest>(msg::kGetVersion);
  EXPECT_EQ(get.version, "3");
  EXPECT_EQ(get.alias, "");

  dispatcher_.calls.clear();
  auto no_version = send("GET", "/model-versions/get?name=llama");
  EXPECT_EQ(no_version->status, 400);
  EXPECT_TRUE(dispatcher_.calls.empty());

  auto uri = send("GET", "/model-versions/get-download-uri?name=llama&version=3");
  ASSERT_EQ(uri->status, 200);
  EXPECT_EQ(json_of(uri), Json({{"artifact_uri", "cairn://llama/3"}}));

  dispatcher_.calls.clear();
  ASSERT_EQ(send("PATCH", "/model-versions/update", R"({"name": "llama", "version": "3", "description": "x"})")->status,
            200);
  EXPECT_EQ(only_call_body<msg::UpdateVersionRequest>(msg::kUpdateVersion).description, std::optional<std::string>("x"));

  dispatcher_.calls.clear();
  ASSERT_EQ(send("POST", "/model-versions/set-tag", R"({"name": "llama", "version": "3", "key": "k", "value": "v"})")
                ->status,
            200);
  EXPECT_EQ(only_call_body<msg::UpdateVersionRequest>(msg::kUpdateVersion).set_tags.size(), 1u);

  dispatcher_.calls.clear();
  answer_with(msg::SearchVersionsReply{});
  ASSERT_EQ(send("GET", "/model-versions/search?filter=name%3D%27llama%27&max_results=10000")->status, 200);
  auto search = only_call_body<msg::SearchVersionsRequest>(msg::kSearchVersions);
  EXPECT_EQ(search.filter, "name='llama'");
  EXPECT_EQ(search.max_results, 10000u);
}

TEST_F(MlflowRoutes, ErrorsTakeMlflowsShapeAndStatus) {
  const std::vector<std::tuple<Code, int, std::string>> cases = {
      {Code::not_found, 404, "RESOURCE_DOES_NOT_EXIST"},
      {Code::already_exists, 400, "RESOURCE_ALREADY_EXISTS"},
      {Code::bad_request, 400, "INVALID_PARAMETER_VALUE"},
      {Code::invalid_argument, 400, "INVALID_PARAMETER_VALUE"},
      {Code::permission_denied, 403, "PERMISSION_DENIED"},
      {Code::unavailable, 503, "TEMPORARILY_UNAVAILABLE"},
      {Code::overloaded, 503, "TEMPORARILY_UNAVAILABLE"},
      {Code::shutting_down, 503, "TEMPORARILY_UNAVAILABLE"},
      {Code::timeout, 504, "DEADLINE_EXCEEDED"},
      {Code::io_error, 500, "INTERNAL_ERROR"},
      {Code::internal, 500, "INTERNAL_ERROR"},
      {Code::data_loss, 500, "DATA_LOSS"},
  };
  for (const auto& [code, http_status, error_code] : cases) {
    fail_with(Status(code, "registry.get_run: run \"nope\" does not exist"));
    auto response = send("GET", "/runs/get?run_id=nope");
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, http_status) << code_name(code);
    EXPECT_EQ(json_of(response), Json({{"error_code", error_code},
                                       {"message", "registry.get_run: run \"nope\" does not exist"}}))
        << code_name(code);
  }
}

TEST_F(MlflowRoutes, MalformedJsonIsABadRequestNamingThePosition) {
  auto response = send("POST", "/runs/create", R"({"experiment_id": "1",, })");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 400);
  Json j = json_of(response);
  EXPECT_EQ(j["error_code"], "BAD_REQUEST");
  const std::string message = j["message"];
  EXPECT_NE(message.find("malformed JSON request body at byte 23"), std::string::npos) << message;
  EXPECT_NE(message.find("column 23"), std::string::npos) << message;

  auto not_object = send("POST", "/runs/create", "[1, 2]");
  EXPECT_EQ(not_object->status, 400);
  EXPECT_EQ(json_of(not_object)["message"], "the request body must be a JSON object, got array");
  EXPECT_TRUE(dispatcher_.calls.empty());
}

TEST_F(MlflowRoutes, AuthenticatesBearerAndBasicAndRefusesEverythingElse) {
  for (const std::string& authorization : std::vector<std::string>{"", "Bearer wrong-token", "Bearer", "Token " + kClientToken,
        "Basic " + mlflow_json::base64_encode(kClientToken), "Basic !!!"}) {
    auto response = send("GET", "/runs/get?run_id=r", "", authorization);
    ASSERT_TRUE(response) << authorization;
    EXPECT_EQ(response->status, 401) << authorization;
    EXPECT_EQ(json_of(response)["error_code"], "UNAUTHENTICATED") << authorization;
    EXPECT_EQ(response->headers["www-authenticate"], "Bearer realm=\"cairn\", Basic realm=\"cairn\"");
    EXPECT_EQ(response->body.find(kClientToken), std::string::npos);  // never echoed
  }
  EXPECT_TRUE(dispatcher_.calls.empty());
  EXPECT_NE(json_of(send("GET", "/runs/get?run_id=r", "", ""))["message"].get<std::string>().find("MLFLOW_TRACKING_TOKEN"),
            std::string::npos);

  answer_with(msg::RunReply{});
  ASSERT_EQ(send("GET", "/runs/get?run_id=r", "", "bearer " + kAdminToken)->status, 200);
  ASSERT_EQ(send("GET", "/runs/get?run_id=r", "", "Basic " + mlflow_json::base64_encode("alice:" + kClientToken))->status,
            200);
  ASSERT_EQ(dispatcher_.calls.size(), 2u);
  EXPECT_EQ(dispatcher_.calls[0]->role(), Role::admin);
  EXPECT_EQ(dispatcher_.calls[1]->role(), Role::client);
}

TEST_F(MlflowRoutes, AnswersWhenTheDispatcherRepliesLater) {
  dispatcher_.answer = nullptr;
  auto first = start("GET", "/runs/get?run_id=r1");
  auto second = start("GET", "/runs/get?run_id=r2");
  EXPECT_FALSE(*first);  // the sinks wait for their calls
  EXPECT_FALSE(*second);
  ASSERT_EQ(dispatcher_.calls.size(), 2u);

  msg::RunReply reply;
  reply.run.info.run_id = "r2";
  dispatcher_.calls[1]->reply(reply);
  ASSERT_TRUE(*second);
  EXPECT_EQ((*second)->status, 200);
  EXPECT_EQ(json_of(*second)["run"]["info"]["run_id"], "r2");
  EXPECT_FALSE(*first);

  dispatcher_.calls[0]->fail(Status(Code::not_found, "run \"r1\" does not exist"));
  ASSERT_TRUE(*first);
  EXPECT_EQ((*first)->status, 404);
  dispatcher_.calls[0]->reply(reply);  // after the final reply: dropped by the Call
  EXPECT_EQ((*first)->status, 404);
}

TEST_F(MlflowRoutes, ACallDroppedWithoutAReplyAnswersTemporarilyUnavailable) {
  dispatcher_.answer = nullptr;
  auto slot = start("GET", "/runs/get?run_id=r");
  EXPECT_FALSE(*slot);
  dispatcher_.calls.clear();  // the last reference to the Call: it answers on its way out
  ASSERT_TRUE(*slot);
  EXPECT_EQ((*slot)->status, 503);
  EXPECT_EQ(json_of(*slot)["error_code"], "TEMPORARILY_UNAVAILABLE");
}

TEST_F(MlflowRoutes, AReplyThatDoesNotDecodeIsAnInternalError) {
  answer_with(msg::CreateExperimentReply{"1"});  // not a RunReply: "run" is missing
  auto response = send("GET", "/runs/get?run_id=r");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 500);
  EXPECT_EQ(json_of(response)["error_code"], "INTERNAL_ERROR");
}

TEST_F(MlflowRoutes, StagesAndOtherUnsupportedEndpointsSaySo) {
  auto response = send("POST", "/model-versions/transition-stage", R"({"name": "m", "version": "1", "stage": "Production"})");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 501);
  EXPECT_EQ(json_of(response)["error_code"], "NOT_IMPLEMENTED");
  EXPECT_NE(json_of(response)["message"].get<std::string>().find("alias"), std::string::npos);
  EXPECT_TRUE(dispatcher_.calls.empty());
}

}  // namespace
}  // namespace cairn
