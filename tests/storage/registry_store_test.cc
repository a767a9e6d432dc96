// RegistryStore behaviour: what depends on key order and reopening against both MemoryKvStore
// and the RocksDB store (real files in a fresh temporary directory, closed and reopened), the
// rest against MemoryKvStore; then failure injection (memory only) and a scale smoke check on
// RocksDB that prints timings (not asserted: timing is the benchmark's job).
#include "storage/registry_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "storage/kv_store.h"
#include "tests/storage/test_dir.h"

namespace cairn::storage {
namespace {

using testing::TestDir;

constexpr int64_t kNow = 1'700'000'000'000;
const std::string kShaA(64, 'a');
const std::string kShaB(64, 'b');
const std::string kShaC(64, 'c');

// The value of an ok result; fails the test (by throwing, which gtest reports) otherwise.
template <class T>
T must(Result<T> result) {
  if (!result.ok()) throw std::runtime_error("unexpected error: " + result.status().to_string());
  return std::move(*result);
}

void must(const Status& status) {
  if (!status.ok()) throw std::runtime_error("unexpected error: " + status.to_string());
}

template <class T>
Status status_of(const Result<T>& result) {
  return result.ok() ? Status() : result.status();
}

// Checks that `status` failed with `code` and a message containing every part.
void expect_error(const Status& status, Code code, std::initializer_list<std::string_view> parts) {
  ASSERT_FALSE(status.ok()) << "expected " << code_name(code) << ", got ok";
  EXPECT_EQ(status.code(), code) << status.to_string();
  for (std::string_view part : parts) {
    EXPECT_NE(status.message().find(part), std::string::npos)
        << "message lacks \"" << part << "\": " << status.message();
  }
}

template <class T>
void expect_error(const Result<T>& result, Code code,
                  std::initializer_list<std::string_view> parts) {
  expect_error(status_of(result), code, parts);
}

msg::Metric metric(std::string key, double value, int64_t step, int64_t timestamp) {
  msg::Metric m;
  m.key = std::move(key);
  m.value = value;
  m.step = step;
  m.timestamp = timestamp;
  return m;
}

// ---- Backends ----

class MemoryBackend {
 public:
  KvStore& open() {
    if (!kv_) kv_ = std::make_unique<MemoryKvStore>(registry_families());
    return *kv_;
  }
  void close() {}  // contents stay: "reopen" builds a new RegistryStore on the same data
  MemoryKvStore* memory() { return kv_.get(); }

 private:
  std::unique_ptr<MemoryKvStore> kv_;
};

class RocksBackend {
 public:
  KvStore& open() {
    if (!kv_) kv_ = must(open_rocks_store({dir_.path("db"), registry_families()}));
    return *kv_;
  }
  void close() { kv_.reset(); }
  MemoryKvStore* memory() { return nullptr; }

 private:
  TestDir dir_;
  std::unique_ptr<KvStore> kv_;
};

template <class Backend>
class RegistryStoreTest : public ::testing::Test {
 public:
  void SetUp() override { reopen(); }

  // Closes the store and its KvStore (RocksDB: closes the database) and opens both again.
  void reopen() {
    store_.reset();
    backend_.close();
    RegistryStoreOptions options;
    options.sync = sync_;
    store_ = must(RegistryStore::open(backend_.open(), options));
  }

  RegistryStore& store() { return *store_; }

  std::string make_experiment(const std::string& name, std::vector<msg::Tag> tags = {}) {
    msg::CreateExperimentRequest request;
    request.name = name;
    request.tags = std::move(tags);
    return must(store().create_experiment(request, kNow)).experiment_id;
  }

  std::string make_run(const std::string& experiment_id, const std::string& name,
                       int64_t start_time) {
    msg::CreateRunRequest request;
    request.experiment_id = experiment_id;
    request.run_name = name;
    request.start_time = start_time;
    return must(store().create_run(request, kNow)).info.run_id;
  }

  // Logs one request and commits it on its own.
  Status log(const std::string& run_id, std::vector<msg::Metric> metrics,
             std::vector<msg::Param> params = {}, std::vector<msg::Tag> tags = {}) {
    msg::LogBatchRequest request;
    request.run_id = run_id;
    request.metrics = std::move(metrics);
    request.params = std::move(params);
    request.tags = std::move(tags);
    LogBatchGroup group;
    CAIRN_RETURN_IF_ERROR(store().stage_log_batch(request, group, kNow));
    return store().commit(group);
  }

  std::vector<std::string> search_ids(const std::vector<std::string>& experiments,
                                      const std::string& filter,
                                      std::vector<std::string> order_by = {},
                                      const std::string& view = "ACTIVE_ONLY") {
    msg::SearchRunsRequest request;
    request.experiment_ids = experiments;
    request.filter = filter;
    request.order_by = std::move(order_by);
    request.run_view_type = view;
    auto reply = must(store().search_runs(request));
    std::vector<std::string> ids;
    for (const auto& run : reply.runs) ids.push_back(run.info.run_id);
    return ids;
  }

  // Every page of a search, concatenated; checks that the last page has no token.
  std::vector<std::string> all_pages(msg::SearchRunsRequest request, uint32_t page_size) {
    request.max_results = page_size;
    std::vector<std::string> ids;
    for (int pages = 0; pages < 1000; ++pages) {
      auto reply = must(store().search_runs(request));
      EXPECT_LE(reply.runs.size(), page_size);
      for (const auto& run : reply.runs) ids.push_back(run.info.run_id);
      if (reply.next_page_token.empty()) return ids;
      request.page_token = reply.next_page_token;
    }
    ADD_FAILURE() << "paging did not end";
    return ids;
  }

  msg::ModelVersion make_version(const std::string& model,
                                 std::vector<msg::ArtifactRef> artifacts = {},
                                 const std::string& run_id = "") {
    msg::CreateVersionRequest request;
    request.name = model;
    request.create_model = true;
    request.artifacts = std::move(artifacts);
    request.run_id = run_id;
    return must(store().create_version(request, kNow));
  }

  Backend backend_;
  std::unique_ptr<RegistryStore> store_;
  // Logic tests write unsynced: a sync costs ~6 ms on a shared disk, and what it buys is
  // RocksDB's to keep. EverythingSurvivesReopen syncs.
  bool sync_ = false;
};

// Tests that depend on key order, on-disk encoding or reopening run on both stores; the rest
// (validation and logic over the KvStore contract, which storage_test checks for both) run on
// the memory store only: opening and closing a 9-family RocksDB costs ~0.5 s per test on a
// loaded machine.
using Backends = ::testing::Types<MemoryBackend, RocksBackend>;
TYPED_TEST_SUITE(RegistryStoreTest, Backends);
template <class Backend>
class RegistryLogicTest : public RegistryStoreTest<Backend> {};
TYPED_TEST_SUITE(RegistryLogicTest, ::testing::Types<MemoryBackend>);

std::vector<std::string> sorted(std::vector<std::string> items) {
  std::sort(items.begin(), items.end());
  return items;
}

// ---- Experiments ----

TYPED_TEST(RegistryStoreTest, OpenCreatesTheDefaultExperimentOnce) {
  msg::GetExperimentRequest by_id;
  by_id.experiment_id = "0";
  auto experiment = must(this->store().get_experiment(by_id));
  EXPECT_EQ(experiment.name, "Default");
  EXPECT_EQ(experiment.lifecycle_stage, "active");
  this->reopen();
  EXPECT_EQ(this->make_experiment("first"), "1");
  msg::SearchExperimentsRequest all;
  all.view_type = "ALL";
  EXPECT_EQ(must(this->store().search_experiments(all)).experiments.size(), 2u);
}

TYPED_TEST(RegistryLogicTest, ExperimentCrud) {
  const std::string id = this->make_experiment("exp-a", {{"team", "vision"}, {"team", "nlp"}});
  EXPECT_EQ(id, "1");
  EXPECT_EQ(this->make_experiment("exp-b"), "2");

  msg::GetExperimentRequest by_name;
  by_name.experiment_name = "exp-a";
  auto experiment = must(this->store().get_experiment(by_name));
  EXPECT_EQ(experiment.experiment_id, id);
  EXPECT_EQ(experiment.creation_time, kNow);
  ASSERT_EQ(experiment.tags.size(), 1u);
  EXPECT_EQ(experiment.tags[0].value, "nlp");  // a repeated key keeps its last value

  msg::CreateExperimentRequest again;
  again.name = "exp-a";
  expect_error(this->store().create_experiment(again, kNow), Code::already_exists,
               {"name", "'exp-a'", "already exists"});

  must(this->store().delete_experiment(id, kNow + 5));
  must(this->store().delete_experiment(id, kNow + 6));  // again: ok
  experiment = must(this->store().get_experiment(by_name));
  EXPECT_EQ(experiment.lifecycle_stage, "deleted");
  EXPECT_EQ(experiment.last_update_time, kNow + 5);
  expect_error(this->store().create_experiment(again, kNow), Code::already_exists, {"deleted"});

  msg::CreateRunRequest run;
  run.experiment_id = id;
  expect_error(this->store().create_run(run, kNow), Code::bad_request,
               {"experiment_id", "is deleted"});

  expect_error(this->store().delete_experiment("0", kNow), Code::bad_request, {"Default"});
  expect_error(this->store().delete_experiment("77", kNow), Code::not_found, {"'77'"});
  expect_error(this->store().delete_experiment("x1", kNow), Code::bad_request,
               {"experiment_id", "not an experiment id"});
  msg::GetExperimentRequest both;
  both.experiment_id = "1";
  both.experiment_name = "exp-a";
  expect_error(this->store().get_experiment(both), Code::bad_request, {"exactly one"});
  expect_error(this->store().get_experiment(msg::GetExperimentRequest{}), Code::bad_request,
               {"exactly one"});
}

TYPED_TEST(RegistryLogicTest, ExperimentValidationNamesTheField) {
  msg::CreateExperimentRequest request;
  expect_error(this->store().create_experiment(request, kNow), Code::bad_request, {"name"});
  request.name = std::string(501, 'x');
  expect_error(this->store().create_experiment(request, kNow), Code::bad_request,
               {"name", "501 characters", "limit is 500"});
  request.name = std::string(500, 'x');
  EXPECT_TRUE(this->store().create_experiment(request, kNow).ok());
  request.name = "ok";
  request.artifact_location = "runs:/abc";
  expect_error(this->store().create_experiment(request, kNow), Code::bad_request,
               {"artifact_location", "runs:/"});
  request.artifact_location = "";
  request.tags = {{"bad key!", "v"}};
  expect_error(this->store().create_experiment(request, kNow), Code::bad_request,
               {"tags[0].key", "'bad key!'", "alphanumerics"});
  request.tags = {{"k", std::string(5001, 'v')}};
  expect_error(this->store().create_experiment(request, kNow), Code::bad_request,
               {"tags[0].value", "limit is 5000"});
}

TYPED_TEST(RegistryLogicTest, SearchExperimentsFiltersOrdersAndPages) {
  this->make_experiment("exp-a", {{"team", "x"}});
  const std::string b = this->make_experiment("exp-b");
  this->make_experiment("other", {{"team", "y"}});
  must(this->store().delete_experiment(b, kNow));

  auto names = [&](msg::SearchExperimentsRequest request) {
    std::vector<std::string> out;
    for (const auto& e : must(this->store().search_experiments(request)).experiments) {
      out.push_back(e.name);
    }
    return out;
  };
  msg::SearchExperimentsRequest request;
  request.filter = "name LIKE 'exp%'";
  EXPECT_EQ(names(request), (std::vector<std::string>{"exp-a"}));
  request.view_type = "ALL";
  EXPECT_EQ(sorted(names(request)), (std::vector<std::string>{"exp-a", "exp-b"}));
  request.view_type = "DELETED_ONLY";
  EXPECT_EQ(names(request), (std::vector<std::string>{"exp-b"}));
  request.view_type = "ACTIVE_ONLY";
  request.filter = "tags.team = 'x'";
  EXPECT_EQ(names(request), (std::vector<std::string>{"exp-a"}));
  request.filter = "attributes.name != 'Default' and tags.team IN ('x', 'y')";
  request.order_by = {"name DESC"};
  EXPECT_EQ(names(request), (std::vector<std::string>{"other", "exp-a"}));
  request.view_type = "SOME";
  expect_error(this->store().search_experiments(request), Code::bad_request, {"view_type"});

  // Pages of one, in name order.
  msg::SearchExperimentsRequest paged;
  paged.order_by = {"name"};
  paged.max_results = 1;
  std::vector<std::string> seen;
  while (true) {
    auto reply = must(this->store().search_experiments(paged));
    for (const auto& e : reply.experiments) seen.push_back(e.name);
    if (reply.next_page_token.empty()) break;
    paged.page_token = reply.next_page_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"Default", "exp-a", "other"}));

  // A token only works for the query that issued it.
  paged.page_token = "";
  auto first = must(this->store().search_experiments(paged));
  paged.page_token = first.next_page_token;
  paged.order_by = {"name DESC"};
  expect_error(this->store().search_experiments(paged), Code::bad_request,
               {"page_token", "different query"});
  paged.page_token = "not*a*token";
  expect_error(this->store().search_experiments(paged), Code::bad_request, {"page_token"});
}

// ---- Runs ----

TYPED_TEST(RegistryLogicTest, RunCrud) {
  msg::CreateExperimentRequest experiment_request;
  experiment_request.name = "e";
  experiment_request.artifact_location = "s3://bucket/e";
  const std::string experiment =
      must(this->store().create_experiment(experiment_request, kNow)).experiment_id;

  msg::CreateRunRequest request;
  request.experiment_id = experiment;
  request.run_name = "first";
  request.user_id = "ada";
  request.tags = {{"k", "v"}};
  request.config_digest = "sha256:c";
  request.dataset_digest = "sha256:d";
  auto run = must(this->store().create_run(request, kNow));
  const std::string id = run.info.run_id;
  ASSERT_EQ(id.size(), 32u);
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(run.info.status, "RUNNING");
  EXPECT_EQ(run.info.start_time, kNow);  // 0 means now
  EXPECT_EQ(run.info.lifecycle_stage, "active");
  EXPECT_EQ(run.info.artifact_uri, "s3://bucket/e/" + id + "/artifacts");

  auto got = must(this->store().get_run(id));
  EXPECT_EQ(got.info.run_name, "first");
  EXPECT_EQ(got.info.user_id, "ada");
  EXPECT_EQ(got.info.config_digest, "sha256:c");
  EXPECT_EQ(got.info.dataset_digest, "sha256:d");
  ASSERT_EQ(got.data.tags.size(), 2u);  // k, and mlflow.runName kept equal to run_name
  EXPECT_EQ(got.data.tags[0].key, "k");
  EXPECT_EQ(got.data.tags[1].key, "mlflow.runName");
  EXPECT_EQ(got.data.tags[1].value, "first");

  // A child run: explicit parent must exist; the MLflow tag fills it too.
  msg::CreateRunRequest child;
  child.experiment_id = experiment;
  child.parent_run_id = id;
  EXPECT_EQ(must(this->store().create_run(child, kNow)).info.parent_run_id, id);
  child.parent_run_id = std::string(32, 'f');
  expect_error(this->store().create_run(child, kNow), Code::not_found, {"parent_run_id"});
  child.parent_run_id = "";
  child.tags = {{"mlflow.parentRunId", id}, {"mlflow.runName", "from-tag"}};
  auto tagged = must(this->store().create_run(child, kNow));
  EXPECT_EQ(tagged.info.parent_run_id, id);
  EXPECT_EQ(tagged.info.run_name, "from-tag");

  msg::UpdateRunRequest update;
  update.run_id = id;
  update.status = "FINISHED";
  auto info = must(this->store().update_run(update, kNow + 100));
  EXPECT_EQ(info.status, "FINISHED");
  EXPECT_EQ(info.end_time, kNow + 100);  // terminal status without end_time: now
  update.status = "";
  update.run_name = "renamed";
  update.end_time = kNow + 7;
  info = must(this->store().update_run(update, kNow + 200));
  EXPECT_EQ(info.run_name, "renamed");
  EXPECT_EQ(info.end_time, kNow + 7);
  got = must(this->store().get_run(id));
  EXPECT_EQ(got.data.tags[1].value, "renamed");
  update.status = "DONE";
  expect_error(this->store().update_run(update, kNow), Code::bad_request, {"status", "'DONE'"});

  must(this->store().delete_run(id, kNow));
  must(this->store().delete_run(id, kNow));  // again: ok
  EXPECT_EQ(must(this->store().get_run(id)).info.lifecycle_stage, "deleted");
  update.status = "KILLED";
  expect_error(this->store().update_run(update, kNow), Code::bad_request, {"deleted"});

  expect_error(this->store().get_run("nope"), Code::not_found, {"'nope'"});
  expect_error(this->store().get_run(std::string(32, '0')), Code::not_found, {"not found"});
  request.experiment_id = "999";
  expect_error(this->store().create_run(request, kNow), Code::not_found, {"'999'"});
  request.experiment_id = "";
  EXPECT_EQ(must(this->store().create_run(request, kNow)).info.experiment_id, "0");
  request.start_time = -1;
  expect_error(this->store().create_run(request, kNow), Code::bad_request, {"start_time"});
}

// ---- log_batch ----

TYPED_TEST(RegistryLogicTest, ParamsAreWriteOnceTagsOverwrite) {
  const std::string run = this->make_run("0", "r", kNow);
  must(this->log(run, {}, {{"lr", "0.1"}}, {{"t", "1"}}));
  must(this->log(run, {}, {{"lr", "0.1"}}, {{"t", "2"}}));  // same value again: ok
  expect_error(this->log(run, {}, {{"lr", "0.2"}}), Code::bad_request,
               {"params[0]", "'lr'", "'0.1'", "'0.2'", "write-once"});
  auto got = must(this->store().get_run(run));
  ASSERT_EQ(got.data.params.size(), 1u);
  EXPECT_EQ(got.data.params[0].value, "0.1");
  EXPECT_EQ(got.data.tags[1].key, "t");
  EXPECT_EQ(got.data.tags[1].value, "2");

  // Within one group: the second request conflicts with the first, which is not yet committed.
  msg::LogBatchRequest first;
  first.run_id = run;
  first.params = {{"batch", "32"}};
  first.metrics = {metric("m", 1, 0, 1)};
  msg::LogBatchRequest second = first;
  second.params = {{"batch", "64"}};
  second.metrics = {metric("m", 2, 1, 1), metric("m", 3, 2, 1)};
  LogBatchGroup group;
  must(this->store().stage_log_batch(first, group, kNow));
  expect_error(this->store().stage_log_batch(second, group, kNow), Code::bad_request,
               {"'batch'", "'32'", "'64'"});
  EXPECT_EQ(group.requests(), 1u);  // the failed stage left the group as it was
  EXPECT_EQ(group.points(), 1u);
  second.params = {{"batch", "32"}};
  must(this->store().stage_log_batch(second, group, kNow));
  EXPECT_EQ(group.requests(), 2u);
  EXPECT_EQ(group.points(), 3u);
  EXPECT_EQ(must(this->store().get_run(run)).data.metrics.size(), 0u);  // nothing durable yet
  must(this->store().commit(group));
  EXPECT_TRUE(group.empty());
  got = must(this->store().get_run(run));
  ASSERT_EQ(got.data.params.size(), 2u);
  EXPECT_EQ(got.data.params[0].key, "batch");
  ASSERT_EQ(got.data.metrics.size(), 1u);
  EXPECT_EQ(got.data.metrics[0].value, 3);

  expect_error(this->log(run, {}, {{"a", "1"}, {"b", "2"}, {"a", "1"}}), Code::bad_request,
               {"params", "duplicate key 'a'", "params[0]", "params[2]"});
  must(this->store().commit(group));  // an empty group: nothing to write
}

TYPED_TEST(RegistryLogicTest, LogBatchValidationNamesFieldsAndLimits) {
  const std::string run = this->make_run("0", "r", kNow);
  expect_error(this->log(run, {metric("ok", 1, 0, 0), metric("bad key!", 1, 0, 0)}),
               Code::bad_request, {"metrics[1].key", "'bad key!'"});
  expect_error(this->log(run, {metric("/abs", 1, 0, 0)}), Code::bad_request,
               {"metrics[0].key", "'/abs'", "resolve"});
  expect_error(this->log(run, {metric("a/../b", 1, 0, 0)}), Code::bad_request, {"metrics[0].key"});
  expect_error(this->log(run, {metric("..a", 1, 0, 0)}), Code::bad_request, {"metrics[0].key"});
  expect_error(this->log(run, {metric("a//b", 1, 0, 0)}), Code::bad_request, {"metrics[0].key"});
  expect_error(this->log(run, {metric(std::string(251, 'k'), 1, 0, 0)}), Code::bad_request,
               {"metrics[0].key", "limit is 250"});
  expect_error(this->log(run, {metric("", 1, 0, 0)}), Code::bad_request, {"metrics[0].key"});
  expect_error(this->log(run, {metric("m", 1, 0, -5)}), Code::bad_request,
               {"metrics[0].timestamp", "-5"});
  must(this->log(run, {metric("eval/loss v2:x.y-z_", 1, -3, 0)}));  // every allowed char; step < 0
  expect_error(this->log(run, {}, {{"p", std::string(6001, 'v')}}), Code::bad_request,
               {"params[0].value", "limit is 6000"});
  must(this->log(run, {}, {{"p", std::string(6000, 'v')}}));
  // Characters, not bytes: 6000 two-byte characters fit.
  std::string wide;
  for (int i = 0; i < 6000; ++i) wide += "\xc3\xa9";
  must(this->log(run, {}, {{"wide", wide}}));
  expect_error(this->log(run, {}, {}, {{"t", std::string(8001, 'v')}}), Code::bad_request,
               {"tags[0].value", "limit is 8000"});
  must(this->log(run, {}, {}, {{"t", std::string(8000, 'v')}}));

  std::vector<msg::Metric> many(1001, metric("m", 1, 0, 0));
  expect_error(this->log(run, many), Code::bad_request, {"metrics", "at most 1000", "1001"});
  std::vector<msg::Param> params;
  for (int i = 0; i < 101; ++i) params.push_back({"p" + std::to_string(i), "v"});
  expect_error(this->log(run, {}, params), Code::bad_request, {"params", "at most 100"});
  std::vector<msg::Tag> tags(101, msg::Tag{"t", "v"});
  expect_error(this->log(run, {}, {}, tags), Code::bad_request, {"tags", "at most 100"});
  params.resize(100);
  tags.resize(100);
  std::vector<msg::Metric> metrics(900, metric("m", 1, 0, 0));
  expect_error(this->log(run, metrics, params, tags), Code::bad_request,
               {"at most 1000 items", "1100"});
  expect_error(this->log(std::string(32, 'e'), {metric("m", 1, 0, 0)}), Code::not_found,
               {"run_id"});
}

TYPED_TEST(RegistryLogicTest, LoggingToFinishedRunsIsAllowedButNotToDeletedRuns) {
  const std::string run = this->make_run("0", "r", kNow);
  msg::UpdateRunRequest finish;
  finish.run_id = run;
  finish.status = "FINISHED";
  must(this->store().update_run(finish, kNow));
  must(this->log(run, {metric("m", 1, 0, 0)}));
  must(this->store().delete_run(run, kNow));
  expect_error(this->log(run, {metric("m", 1, 0, 0)}), Code::bad_request, {"run_id", "is deleted"});
}

TYPED_TEST(RegistryLogicTest, LatestMetricFollowsMlflowRule) {
  const std::string run = this->make_run("0", "r", kNow);
  auto latest = [&](const std::string& key) {
    for (const auto& m : must(this->store().get_run(run)).data.metrics) {
      if (m.key == key) return m;
    }
    throw std::runtime_error("no metric " + key);
  };
  must(this->log(run,
                 {metric("loss", 5, 1, 100), metric("loss", 1, 3, 50), metric("loss", 9, 3, 40)}));
  EXPECT_EQ(latest("loss").value, 1);  // max (step, timestamp) = (3, 50)
  must(this->log(run, {metric("loss", 0, 2, 999)}));
  EXPECT_EQ(latest("loss").value, 1);  // an older step logged later does not win
  must(this->log(run, {metric("loss", 2, 3, 50)}));
  EXPECT_EQ(latest("loss").value, 2);  // a tie goes to the greater value
  must(this->log(run, {metric("loss", std::nan(""), 4, 0), metric("acc", INFINITY, 0, 0),
                       metric("neg", -INFINITY, 0, 0)}));
  EXPECT_TRUE(std::isnan(latest("loss").value));
  EXPECT_EQ(latest("acc").value, INFINITY);
  EXPECT_EQ(latest("neg").value, -INFINITY);
  auto run_data = must(this->store().get_run(run)).data;
  ASSERT_EQ(run_data.metrics.size(), 3u);  // sorted by key
  EXPECT_EQ(run_data.metrics[0].key, "acc");
  EXPECT_EQ(run_data.metrics[2].key, "neg");
}

TYPED_TEST(RegistryStoreTest, MetricHistoryIsOrderedAndPaged) {
  const std::string run = this->make_run("0", "r", kNow);
  std::vector<msg::Metric> points;
  for (int step = 24; step >= 0; --step)
    points.push_back(metric("loss", step * 0.5, step, 1000 + step));
  must(this->log(run, std::vector<msg::Metric>(points.begin(), points.begin() + 10)));
  must(this->log(run, std::vector<msg::Metric>(points.begin() + 10, points.end())));
  must(this->log(run, {metric("loss", 0.5, 1, 1001)}));  // the same point again: stored once
  must(this->log(run, {metric("loss", 99, 1, 1001)}));   // same step and time, another value
  must(this->log(run, {metric("lossy", 7, 0, 0)}));      // a key that extends "loss"
  must(this->log(run, {metric("nan", std::nan(""), 0, 0), metric("nan", std::nan(""), 0, 0)}));

  msg::GetMetricHistoryRequest request;
  request.run_id = run;
  request.metric_key = "loss";
  request.max_results = 10;
  std::vector<msg::Metric> all;
  int pages = 0;
  while (true) {
    auto reply = must(this->store().get_metric_history(request));
    ++pages;
    all.insert(all.end(), reply.metrics.begin(), reply.metrics.end());
    if (reply.next_page_token.empty()) break;
    request.page_token = reply.next_page_token;
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(all.size(), 26u);
  for (size_t i = 1; i < all.size(); ++i) {
    EXPECT_LE(std::make_pair(all[i - 1].step, all[i - 1].timestamp),
              std::make_pair(all[i].step, all[i].timestamp));
  }
  EXPECT_EQ(all[0].step, 0);
  EXPECT_EQ(all[0].timestamp, 1000);
  EXPECT_EQ(all[0].key, "loss");
  EXPECT_EQ(all[1].value, 0.5);
  EXPECT_EQ(all[2].value, 99);
  EXPECT_EQ(all.back().step, 24);

  request.metric_key = "nan";
  request.page_token = "";
  auto nan = must(this->store().get_metric_history(request));
  ASSERT_EQ(nan.metrics.size(), 1u);
  EXPECT_TRUE(std::isnan(nan.metrics[0].value));
  request.metric_key = "absent";
  EXPECT_TRUE(must(this->store().get_metric_history(request)).metrics.empty());
  request.metric_key = "bad!";
  expect_error(this->store().get_metric_history(request), Code::bad_request, {"metric_key"});
  request.run_id = std::string(32, 'a');
  request.metric_key = "loss";
  expect_error(this->store().get_metric_history(request), Code::not_found, {"run_id"});
}

// ---- search_runs ----

// Five runs with a spread of metrics, params, tags and attributes.
template <class Test>
std::map<std::string, std::string> make_search_fixture(Test& test, const std::string& experiment) {
  std::map<std::string, std::string> ids;
  ids["r1"] = test.make_run(experiment, "alpha-1", kNow + 1);
  ids["r2"] = test.make_run(experiment, "alpha-2", kNow + 2);
  ids["r3"] = test.make_run(experiment, "beta", kNow + 3);
  ids["r4"] = test.make_run(experiment, "Beta-2", kNow + 4);
  ids["r5"] = test.make_run(experiment, "gamma", kNow + 5);
  must(test.log(ids["r1"], {metric("loss", 0.5, 0, 0), metric("acc", 0.9, 0, 0)},
                {{"lr", "3e-4"}, {"opt", "adam"}}, {{"team", "a"}}));
  must(test.log(ids["r2"], {metric("loss", 1.2, 0, 0)}, {{"lr", "1e-3"}, {"opt", "sgd"}},
                {{"team", "b"}}));
  must(test.log(ids["r3"], {metric("loss", 2.5, 0, 0)}, {{"lr", "3e-4"}}, {{"team", "A"}}));
  must(test.log(ids["r4"], {metric("my metric", 7, 0, 0)}, {}, {{"my tag", "x"}}));
  must(test.log(ids["r5"], {metric("loss", std::nan(""), 0, 0)}));
  msg::UpdateRunRequest finish;
  finish.run_id = ids["r1"];
  finish.status = "FINISHED";
  must(test.store().update_run(finish, kNow + 10));
  finish.run_id = ids["r3"];
  finish.status = "FAILED";
  must(test.store().update_run(finish, kNow + 10));
  return ids;
}

TYPED_TEST(RegistryLogicTest, SearchRunsFilterGrammar) {
  const std::string experiment = this->make_experiment("e");
  auto ids = make_search_fixture(*this, experiment);
  auto names = [&](const std::string& filter) {
    std::vector<std::string> out;
    for (const auto& id : this->search_ids({experiment}, filter)) {
      for (const auto& [name, run_id] : ids) {
        if (run_id == id) out.push_back(name);
      }
    }
    return sorted(out);
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names(""), (V{"r1", "r2", "r3", "r4", "r5"}));
  EXPECT_EQ(names("metrics.loss < 2"), (V{"r1", "r2"}));
  EXPECT_EQ(names("metrics.loss < 2 and params.lr = '3e-4'"), (V{"r1"}));
  EXPECT_EQ(names("params.lr = \"3e-4\""), (V{"r1", "r3"}));
  EXPECT_EQ(names("tags.team != 'a'"), (V{"r2", "r3"}));  // runs without the tag never match
  EXPECT_EQ(names("attributes.status = 'FINISHED'"), (V{"r1"}));
  EXPECT_EQ(names("attributes.status IN ('FINISHED', 'FAILED')"), (V{"r1", "r3"}));
  EXPECT_EQ(names("attributes.status NOT IN ('RUNNING')"), (V{"r1", "r3"}));
  EXPECT_EQ(names("attributes.run_name LIKE 'alpha%'"), (V{"r1", "r2"}));
  EXPECT_EQ(names("attributes.run_name LIKE 'beta%'"), (V{"r3"}));
  EXPECT_EQ(names("attributes.run_name ILIKE 'beta%'"), (V{"r3", "r4"}));
  EXPECT_EQ(names("attributes.run_name LIKE 'alpha-_'"), (V{"r1", "r2"}));
  EXPECT_EQ(names("tags.team IN ('a', 'b')"), (V{"r1", "r2"}));
  EXPECT_EQ(names("tags.team ILIKE 'a'"), (V{"r1", "r3"}));
  EXPECT_EQ(names("params.opt NOT IN ('adam')"), (V{"r2"}));
  EXPECT_EQ(names("params.opt LIKE '%a%'"), (V{"r1"}));
  EXPECT_EQ(names("metrics.`my metric` >= 7"), (V{"r4"}));
  EXPECT_EQ(names("tags.\"my tag\" = 'x'"), (V{"r4"}));
  EXPECT_EQ(names("metrics.loss != 0.5"), (V{"r2", "r3", "r5"}));  // NaN != 0.5
  EXPECT_EQ(names("metrics.loss > 1 AND metrics.loss <= 2.5"), (V{"r2", "r3"}));
  EXPECT_EQ(names("metrics.loss = 1.2"), (V{"r2"}));
  EXPECT_EQ(names("metrics.acc > 0.5 and tags.team = 'a' and attributes.status = 'FINISHED'"),
            (V{"r1"}));
  EXPECT_EQ(names("attributes.start_time >= " + std::to_string(kNow + 4)), (V{"r4", "r5"}));
  EXPECT_EQ(names("attributes.created < " + std::to_string(kNow + 2)), (V{"r1"}));
  EXPECT_EQ(names("attributes.end_time > 0"), (V{"r1", "r3"}));
  EXPECT_EQ(names("attributes.run_id = '" + ids["r2"] + "'"), (V{"r2"}));
  EXPECT_EQ(names("attributes.run_id IN ('" + ids["r2"] + "', '" + ids["r4"] + "')"),
            (V{"r2", "r4"}));
  EXPECT_EQ(names("tags.mlflow.runName = 'gamma'"), (V{"r5"}));
  EXPECT_EQ(names("metrics.nothing > 0"), V{});

  msg::SearchRunsRequest bad;
  bad.experiment_ids = {experiment};
  bad.filter = "metrics.loss < 1 or params.lr = '1'";
  expect_error(this->store().search_runs(bad), Code::bad_request,
               {"filter", "'or' is not supported", "position 18"});
  bad.filter = "run_name = 'x'";
  expect_error(this->store().search_runs(bad), Code::bad_request,
               {"filter", "needs an entity prefix", "attributes.run_name"});
  bad.filter = "attributes.colour = 'x'";
  expect_error(this->store().search_runs(bad), Code::bad_request,
               {"unknown attribute 'colour'", "run_name"});
  bad.filter = "params.lr > '1'";
  expect_error(this->store().search_runs(bad), Code::bad_request, {"params.lr", ">"});
  bad.filter = "metrics.loss = 'x'";
  expect_error(this->store().search_runs(bad), Code::bad_request, {"metrics.loss is a number"});
  bad.filter = "";
  bad.order_by = {"metrics.loss sideways"};
  expect_error(this->store().search_runs(bad), Code::bad_request, {"order_by[0]", "'sideways'"});
  bad.order_by = {};
  bad.run_view_type = "EVERYTHING";
  expect_error(this->store().search_runs(bad), Code::bad_request, {"run_view_type"});
  bad.run_view_type = "ALL";
  bad.experiment_ids = {"x"};
  expect_error(this->store().search_runs(bad), Code::bad_request, {"experiment_ids[0]"});
  bad.experiment_ids = {};
  EXPECT_TRUE(must(this->store().search_runs(bad)).runs.empty());
}

TYPED_TEST(RegistryLogicTest, SearchRunsViewTypesAndExperiments) {
  const std::string e1 = this->make_experiment("e1");
  const std::string e2 = this->make_experiment("e2");
  const std::string a = this->make_run(e1, "a", kNow + 1);
  const std::string b = this->make_run(e2, "b", kNow + 3);
  const std::string c = this->make_run(e1, "c", kNow + 2);
  must(this->store().delete_run(c, kNow));
  using V = std::vector<std::string>;
  EXPECT_EQ(this->search_ids({e1, e2}, ""), (V{b, a}));  // merged, newest first
  EXPECT_EQ(this->search_ids({e1, e2, e1}, "", {}, "ALL"), (V{b, c, a}));
  EXPECT_EQ(this->search_ids({e1}, "", {}, "DELETED_ONLY"), (V{c}));
  EXPECT_EQ(this->search_ids({"12345"}, ""), V{});  // no such experiment: nothing
}

TYPED_TEST(RegistryLogicTest, SearchRunsOrderBy) {
  const std::string experiment = this->make_experiment("e");
  auto ids = make_search_fixture(*this, experiment);
  using V = std::vector<std::string>;
  auto in_order = [&](std::vector<std::string> order_by) {
    V out;
    for (const auto& id : this->search_ids({experiment}, "", std::move(order_by))) {
      for (const auto& [name, run_id] : ids) {
        if (run_id == id) out.push_back(name);
      }
    }
    return out;
  };
  EXPECT_EQ(in_order({}), (V{"r5", "r4", "r3", "r2", "r1"}));
  EXPECT_EQ(in_order({"attributes.start_time DESC"}), (V{"r5", "r4", "r3", "r2", "r1"}));
  EXPECT_EQ(in_order({"attributes.start_time ASC"}), (V{"r1", "r2", "r3", "r4", "r5"}));
  // NaN, then no value, last in both directions; ties by start_time DESC.
  EXPECT_EQ(in_order({"metrics.loss ASC"}), (V{"r1", "r2", "r3", "r5", "r4"}));
  EXPECT_EQ(in_order({"metrics.loss DESC"}), (V{"r3", "r2", "r1", "r5", "r4"}));
  EXPECT_EQ(in_order({"params.lr"}), (V{"r2", "r3", "r1", "r5", "r4"}));
  EXPECT_EQ(in_order({"params.lr", "attributes.run_name DESC"}), (V{"r2", "r3", "r1", "r5", "r4"}));
  EXPECT_EQ(in_order({"attributes.run_name"}), (V{"r4", "r1", "r2", "r3", "r5"}));
  EXPECT_EQ(in_order({"tags.team DESC"}), (V{"r2", "r1", "r3", "r5", "r4"}));
}

TYPED_TEST(RegistryStoreTest, SearchRunsPagesConcatenateAndStayStableUnderInserts) {
  const std::string experiment = this->make_experiment("e");
  std::vector<std::string> runs;
  for (int i = 0; i < 23; ++i) {
    const std::string id = this->make_run(experiment, "r" + std::to_string(i), kNow + (i % 7));
    must(this->log(id, {metric("loss", (i * 37) % 11, 0, 0)}));
    runs.push_back(id);
  }
  for (const std::vector<std::string>& order :
       {std::vector<std::string>{}, std::vector<std::string>{"metrics.loss ASC"},
        std::vector<std::string>{"attributes.run_name DESC"}}) {
    msg::SearchRunsRequest request;
    request.experiment_ids = {experiment};
    request.order_by = order;
    request.filter = "metrics.loss >= 0";
    const auto full = this->search_ids({experiment}, request.filter, order);
    ASSERT_EQ(full.size(), runs.size());
    for (uint32_t page_size : {1u, 4u, 7u, 23u, 50u}) {
      EXPECT_EQ(this->all_pages(request, page_size), full) << "page size " << page_size;
    }
  }

  // Insert runs between page fetches: a newer one (before the cursor) never shows up, an older
  // one (after it) does, and nothing repeats or goes missing.
  msg::SearchRunsRequest request;
  request.experiment_ids = {experiment};
  request.max_results = 5;
  auto first = must(this->store().search_runs(request));
  std::vector<std::string> seen;
  for (const auto& run : first.runs) seen.push_back(run.info.run_id);
  const std::string newer = this->make_run(experiment, "newer", kNow + 100);
  const std::string older = this->make_run(experiment, "older", kNow - 100);
  request.page_token = first.next_page_token;
  while (!request.page_token.empty()) {
    auto page = must(this->store().search_runs(request));
    for (const auto& run : page.runs) seen.push_back(run.info.run_id);
    request.page_token = page.next_page_token;
  }
  EXPECT_EQ(seen.size(), runs.size() + 1);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), seen.size());
  EXPECT_EQ(std::count(seen.begin(), seen.end(), newer), 0);
  EXPECT_EQ(seen.back(), older);

  // The same for a sorted order: a run inserted with a smaller loss than the cursor is skipped.
  msg::SearchRunsRequest sorted_request;
  sorted_request.experiment_ids = {experiment};
  sorted_request.order_by = {"metrics.loss"};
  sorted_request.filter = "metrics.loss > -10";
  sorted_request.max_results = 6;
  auto sorted_first = must(this->store().search_runs(sorted_request));
  std::vector<std::string> sorted_seen;
  for (const auto& run : sorted_first.runs) sorted_seen.push_back(run.info.run_id);
  const std::string low = this->make_run(experiment, "low", kNow);
  must(this->log(low, {metric("loss", -1, 0, 0)}));
  sorted_request.page_token = sorted_first.next_page_token;
  while (!sorted_request.page_token.empty()) {
    auto page = must(this->store().search_runs(sorted_request));
    for (const auto& run : page.runs) sorted_seen.push_back(run.info.run_id);
    sorted_request.page_token = page.next_page_token;
  }
  EXPECT_EQ(sorted_seen.size(), runs.size());
  EXPECT_EQ(std::set<std::string>(sorted_seen.begin(), sorted_seen.end()).size(), runs.size());
}

// ---- Models and versions ----

TYPED_TEST(RegistryLogicTest, ModelCrud) {
  msg::CreateModelRequest create;
  create.name = "llama-7b";
  create.description = "base";
  create.tags = {{"family", "llama"}};
  auto model = must(this->store().create_model(create, kNow));
  EXPECT_EQ(model.creation_timestamp, kNow);
  expect_error(this->store().create_model(create, kNow), Code::already_exists,
               {"'llama-7b'", "already exists"});
  for (const std::string& bad :
       std::vector<std::string>{"", "a/b", "a@b", "a\nb", std::string(257, 'm')}) {
    create.name = bad;
    expect_error(this->store().create_model(create, kNow), Code::bad_request, {"name"});
  }
  create.name = std::string(256, 'm');
  must(this->store().create_model(create, kNow));
  create.name = "t";
  create.tags = {{"k", std::string(5001, 'v')}};
  expect_error(this->store().create_model(create, kNow), Code::bad_request,
               {"tags[0].value", "5000"});

  msg::UpdateModelRequest update;
  update.name = "llama-7b";
  update.description = "changed";
  update.set_tags = {{"size", "7b"}};
  update.delete_tags = {"family", "absent"};
  model = must(this->store().update_model(update, kNow + 1));
  EXPECT_EQ(model.description, "changed");
  ASSERT_EQ(model.tags.size(), 1u);
  EXPECT_EQ(model.tags[0].key, "size");
  EXPECT_EQ(model.last_updated_timestamp, kNow + 1);
  update.description.reset();
  update.set_tags = {};
  update.delete_tags = {};
  EXPECT_EQ(must(this->store().update_model(update, kNow + 2)).description, "changed");

  model = must(this->store().get_model("llama-7b"));
  EXPECT_TRUE(model.latest_versions.empty());
  must(this->store().delete_model("llama-7b"));
  expect_error(this->store().get_model("llama-7b"), Code::not_found, {"'llama-7b'"});
  expect_error(this->store().delete_model("llama-7b"), Code::not_found, {"'llama-7b'"});
  update.name = "nope";
  expect_error(this->store().update_model(update, kNow), Code::not_found, {"'nope'"});
}

TYPED_TEST(RegistryLogicTest, SearchModelsByPrefixFilterAndPages) {
  for (const std::string name : {"llama-7b", "llama-13b", "mistral", "llam", "phi"}) {
    msg::CreateModelRequest create;
    create.name = name;
    if (name.rfind("llama", 0) == 0) create.tags = {{"family", "llama"}};
    must(this->store().create_model(create, kNow + static_cast<int64_t>(name.size())));
  }
  auto names = [&](msg::SearchModelsRequest request) {
    std::vector<std::string> out;
    for (const auto& m : must(this->store().search_models(request)).registered_models) {
      out.push_back(m.name);
    }
    return out;
  };
  using V = std::vector<std::string>;
  msg::SearchModelsRequest request;
  EXPECT_EQ(names(request), (V{"llam", "llama-13b", "llama-7b", "mistral", "phi"}));
  request.name_prefix = "llama";
  EXPECT_EQ(names(request), (V{"llama-13b", "llama-7b"}));
  request.name_prefix = "";
  request.filter = "name LIKE 'llama%'";
  EXPECT_EQ(names(request), (V{"llama-13b", "llama-7b"}));
  request.filter = "name LIKE 'llam%' and name LIKE '%7b'";
  EXPECT_EQ(names(request), (V{"llama-7b"}));
  request.filter = "name ILIKE 'LLAMA%'";
  EXPECT_EQ(names(request), (V{"llama-13b", "llama-7b"}));
  request.filter = "name = 'mistral'";
  EXPECT_EQ(names(request), (V{"mistral"}));
  request.name_prefix = "ll";
  EXPECT_EQ(names(request), V{});
  request.name_prefix = "";
  request.filter = "name = 'llam'";
  EXPECT_EQ(names(request), (V{"llam"}));  // exact: not llama-*
  request.filter = "tags.family = 'llama'";
  EXPECT_EQ(names(request), (V{"llama-13b", "llama-7b"}));
  request.filter = "name != 'phi'";
  request.order_by = {"creation_timestamp DESC"};
  EXPECT_EQ(names(request), (V{"llama-13b", "llama-7b", "mistral", "llam"}));
  request.filter = "metrics.x > 1";
  expect_error(this->store().search_models(request), Code::bad_request, {"no metrics"});

  for (const std::vector<std::string>& order :
       {std::vector<std::string>{}, std::vector<std::string>{"name DESC"}}) {
    msg::SearchModelsRequest paged;
    paged.order_by = order;
    paged.max_results = 2;
    V seen;
    while (true) {
      auto reply = must(this->store().search_models(paged));
      for (const auto& m : reply.registered_models) seen.push_back(m.name);
      if (reply.next_page_token.empty()) break;
      paged.page_token = reply.next_page_token;
    }
    V expected{"llam", "llama-13b", "llama-7b", "mistral", "phi"};
    if (!order.empty()) std::reverse(expected.begin(), expected.end());
    EXPECT_EQ(seen, expected);
  }
}

TYPED_TEST(RegistryLogicTest, VersionsNumberSnapshotAndValidate) {
  const std::string run = this->make_run("0", "train", kNow);
  must(this->log(run,
                 {metric("loss", 0.3, 1, 0), metric("loss", 0.2, 2, 0), metric("acc", 0.8, 0, 0)}));

  msg::CreateVersionRequest request;
  request.name = "m";
  expect_error(this->store().create_version(request, kNow), Code::not_found,
               {"'m'", "create_model"});
  request.create_model = true;
  request.run_id = run;
  request.source = "runs:/" + run + "/model";
  request.description = "first";
  request.tags = {{"stage", "dev"}};
  request.version_label = "1.0.0-rc.1+build.5";
  request.base_model = "llama/3";
  request.artifacts = {{"config.json", kShaA, 10}, {"weights/model.safetensors", kShaB, 20}};
  auto v1 = must(this->store().create_version(request, kNow + 1));
  EXPECT_EQ(v1.version, "1");
  EXPECT_EQ(v1.status, "READY");
  EXPECT_EQ(v1.metrics, (std::map<std::string, double>{{"acc", 0.8}, {"loss", 0.2}}));
  EXPECT_EQ(v1.artifacts.size(), 2u);
  auto model = must(this->store().get_model("m"));
  EXPECT_EQ(model.last_updated_timestamp, kNow + 1);
  ASSERT_EQ(model.latest_versions.size(), 1u);
  EXPECT_EQ(model.latest_versions[0].version, "1");

  msg::CreateVersionRequest next;
  next.name = "m";
  next.parent_version = "1";
  auto v2 = must(this->store().create_version(next, kNow + 2));
  EXPECT_EQ(v2.version, "2");
  EXPECT_EQ(v2.parent_version, "1");
  next.parent_version = "9";
  expect_error(this->store().create_version(next, kNow), Code::not_found,
               {"parent_version", "version 9"});
  next.parent_version = "x";
  expect_error(this->store().create_version(next, kNow), Code::bad_request, {"parent_version"});
  next.parent_version = "";
  next.run_id = std::string(32, 'd');
  expect_error(this->store().create_version(next, kNow), Code::not_found, {"run_id"});
  next.run_id = "";
  for (const std::string label :
       {"1.2", "01.2.3", "1.2.3-", "v1.2.3", "1.2.3-01", "1.2.3+", "1..3", "a.b.c"}) {
    next.version_label = label;
    expect_error(this->store().create_version(next, kNow), Code::bad_request,
                 {"version_label", "semantic version"});
  }
  for (const std::string label : {"0.0.1", "10.20.30", "1.0.0-alpha", "1.0.0+20130313144700",
                                  "1.0.0-x.7.z.92", "1.0.0-0.3.7"}) {
    next.version_label = label;
    EXPECT_TRUE(this->store().create_version(next, kNow).ok()) << label;
  }
  next.version_label = "";
  next.artifacts = {{"/etc/passwd", kShaA, 1}};
  expect_error(this->store().create_version(next, kNow), Code::bad_request, {"artifacts[0].path"});
  next.artifacts = {{"a/../b", kShaA, 1}};
  expect_error(this->store().create_version(next, kNow), Code::bad_request, {"artifacts[0].path"});
  next.artifacts = {{"a", kShaA, 1}, {"a", kShaB, 1}};
  expect_error(this->store().create_version(next, kNow), Code::bad_request,
               {"artifacts[1].path", "listed twice"});
  next.artifacts = {{"a", "ABC", 1}};
  expect_error(this->store().create_version(next, kNow), Code::bad_request,
               {"artifacts[0].sha256"});
  next.artifacts = {};
  next.name = "m/x";
  expect_error(this->store().create_version(next, kNow), Code::bad_request, {"name"});

  msg::GetVersionRequest get;
  get.name = "m";
  get.version = "1";
  auto got = must(this->store().get_version(get));
  EXPECT_EQ(got.description, "first");
  EXPECT_EQ(got.source, "runs:/" + run + "/model");
  EXPECT_EQ(got.version_label, "1.0.0-rc.1+build.5");
  EXPECT_EQ(got.base_model, "llama/3");
  get.version = "99";
  expect_error(this->store().get_version(get), Code::not_found, {"version 99"});
  get.version = "one";
  expect_error(this->store().get_version(get), Code::bad_request, {"version"});
  get.version = "";
  expect_error(this->store().get_version(get), Code::bad_request, {"exactly one"});

  msg::UpdateVersionRequest update;
  update.name = "m";
  update.version = "1";
  update.status = "FAILED_REGISTRATION";
  update.status_message = "upload failed";
  update.description = "edited";
  update.set_tags = {{"reviewed", "yes"}};
  update.delete_tags = {"stage"};
  auto updated = must(this->store().update_version(update, kNow + 9));
  EXPECT_EQ(updated.status, "FAILED_REGISTRATION");
  EXPECT_EQ(updated.status_message, "upload failed");
  EXPECT_EQ(updated.description, "edited");
  ASSERT_EQ(updated.tags.size(), 1u);
  EXPECT_EQ(updated.tags[0].key, "reviewed");
  EXPECT_EQ(updated.last_updated_timestamp, kNow + 9);
  update.status = "BROKEN";
  expect_error(this->store().update_version(update, kNow), Code::bad_request,
               {"status", "'BROKEN'"});

  auto latest = must(this->store().get_latest_versions("m"));
  ASSERT_EQ(latest.model_versions.size(), 1u);
  EXPECT_EQ(latest.model_versions[0].version, "8");
  expect_error(this->store().get_latest_versions("zz"), Code::not_found, {"'zz'"});
}

TYPED_TEST(RegistryStoreTest, SearchVersionsNewestFirstFilteredAndPaged) {
  const std::string run = this->make_run("0", "r", kNow);
  for (int i = 1; i <= 25; ++i) {
    this->make_version("m", {}, i % 5 == 0 ? run : std::string());
  }
  this->make_version("m2");
  this->make_version("m2");
  this->make_version("other");

  msg::SearchVersionsRequest request;
  request.name = "m";
  request.max_results = 10;
  std::vector<std::string> seen;
  int pages = 0;
  while (true) {
    auto reply = must(this->store().search_versions(request));
    ++pages;
    for (const auto& v : reply.model_versions) seen.push_back(v.version);
    if (reply.next_page_token.empty()) break;
    request.page_token = reply.next_page_token;
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 25u);
  for (int i = 0; i < 25; ++i) EXPECT_EQ(seen[i], std::to_string(25 - i));

  auto versions = [&](msg::SearchVersionsRequest r) {
    std::vector<std::string> out;
    for (const auto& v : must(this->store().search_versions(r)).model_versions) {
      out.push_back(v.name + "/" + v.version);
    }
    return out;
  };
  using V = std::vector<std::string>;
  msg::SearchVersionsRequest filtered;
  filtered.filter = "run_id = '" + run + "'";
  EXPECT_EQ(versions(filtered), (V{"m/25", "m/20", "m/15", "m/10", "m/5"}));
  filtered.filter = "name = 'm2'";
  EXPECT_EQ(versions(filtered), (V{"m2/2", "m2/1"}));
  filtered.filter = "name LIKE 'm%' and version_number <= 2";
  EXPECT_EQ(versions(filtered), (V{"m/2", "m/1", "m2/2", "m2/1"}));
  filtered.filter = "name = 'm2' and version = 1";
  EXPECT_EQ(versions(filtered), (V{"m2/1"}));
  filtered.name = "other";
  filtered.filter = "name = 'm2'";
  EXPECT_EQ(versions(filtered), V{});
  filtered.name = "";
  filtered.filter = "version_number > 24";
  filtered.order_by = {"name DESC", "version_number"};
  EXPECT_EQ(versions(filtered), (V{"m/25"}));
  filtered.filter = "version_number >= 1";
  filtered.order_by = {"version_number DESC", "name"};
  filtered.max_results = 3;
  EXPECT_EQ(versions(filtered), (V{"m/25", "m/24", "m/23"}));
  filtered.filter = "params.x = '1'";
  expect_error(this->store().search_versions(filtered), Code::bad_request, {"no params"});
}

// ---- Aliases ----

TYPED_TEST(RegistryStoreTest, LatestNamesTheNewestVersion) {
  msg::GetVersionRequest latest;
  latest.name = "m";
  latest.alias = "latest";
  this->make_version("m");
  EXPECT_EQ(must(this->store().get_version(latest)).version, "1");
  this->make_version("m");
  latest.alias = "LATEST";  // reserved in any case, resolved in any case
  EXPECT_EQ(must(this->store().get_version(latest)).version, "2");
  latest.name = "nope";
  expect_error(this->store().get_version(latest), Code::not_found, {"nope"});
}

TYPED_TEST(RegistryStoreTest, AliasesSetMoveDeleteResolveAndAudit) {
  this->make_version("m");
  this->make_version("m");
  msg::SetAliasRequest set;
  set.name = "m";
  set.alias = "champion";
  set.version = "1";
  auto v = must(this->store().set_alias(set, "admin:alice", kNow + 1));
  EXPECT_EQ(v.aliases, (std::vector<std::string>{"champion"}));
  set.alias = "staging";
  must(this->store().set_alias(set, "admin:alice", kNow + 2));
  must(this->store().set_alias(set, "admin:alice", kNow + 3));  // no move: no event

  msg::GetVersionRequest resolve;
  resolve.name = "m";
  resolve.alias = "champion";
  v = must(this->store().get_version(resolve));
  EXPECT_EQ(v.version, "1");
  EXPECT_EQ(v.aliases, (std::vector<std::string>{"champion", "staging"}));

  set.alias = "champion";
  set.version = "2";
  must(this->store().set_alias(set, "writer:ci", kNow + 4));
  EXPECT_EQ(must(this->store().get_version(resolve)).version, "2");
  auto model = must(this->store().get_model("m"));
  ASSERT_EQ(model.aliases.size(), 2u);
  EXPECT_EQ(model.aliases[0].alias, "champion");
  EXPECT_EQ(model.aliases[0].version, "2");
  ASSERT_EQ(model.latest_versions.size(), 1u);
  EXPECT_EQ(model.latest_versions[0].aliases, (std::vector<std::string>{"champion"}));

  msg::AliasRequest remove;
  remove.name = "m";
  remove.alias = "champion";
  must(this->store().delete_alias(remove, "admin:bob", kNow + 5));
  must(this->store().delete_alias(remove, "admin:bob", kNow + 6));  // not set: ok, no event
  expect_error(this->store().get_version(resolve), Code::not_found, {"alias", "'champion'"});

  auto history = must(this->store().alias_history("m")).events;
  ASSERT_EQ(history.size(), 4u);
  auto expect_event = [](const msg::AliasEvent& e, const char* alias, const char* from,
                         const char* to, const char* who, int64_t time) {
    EXPECT_EQ(e.name, "m");
    EXPECT_EQ(e.alias, alias);
    EXPECT_EQ(e.from_version, from);
    EXPECT_EQ(e.to_version, to);
    EXPECT_EQ(e.who, who);
    EXPECT_EQ(e.time, time);
  };
  expect_event(history[0], "champion", "", "1", "admin:alice", kNow + 1);
  expect_event(history[1], "staging", "", "1", "admin:alice", kNow + 2);
  expect_event(history[2], "champion", "1", "2", "writer:ci", kNow + 4);
  expect_event(history[3], "champion", "2", "", "admin:bob", kNow + 5);

  for (const std::string& bad : std::vector<std::string>{"", "latest", "LaTeSt", "v1", "V12", "a b",
                                                         "a.b", std::string(256, 'a')}) {
    set.alias = bad;
    expect_error(this->store().set_alias(set, "x", kNow), Code::bad_request, {"alias"});
  }
  for (const std::string fine : {"v", "v1a", "version1", "prod-2_b"}) {
    set.alias = fine;
    EXPECT_TRUE(this->store().set_alias(set, "x", kNow).ok()) << fine;
  }
  set.alias = "gone";
  set.version = "3";
  expect_error(this->store().set_alias(set, "x", kNow), Code::not_found, {"version 3"});
  set.name = "nope";
  expect_error(this->store().set_alias(set, "x", kNow), Code::not_found, {"'nope'"});

  // delete_model removes aliases but keeps the audit log, adding one event per alias.
  const size_t before = must(this->store().alias_history("m")).events.size();
  must(this->store().delete_model("m", kNow + 50));
  history = must(this->store().alias_history("m")).events;
  ASSERT_EQ(history.size(), before + 5);  // staging, v, v1a, version1, prod-2_b
  EXPECT_EQ(history.back().who, "delete_model");
  EXPECT_EQ(history.back().to_version, "");
  EXPECT_EQ(history.back().time, kNow + 50);
  EXPECT_EQ(this->make_version("m").version, "1");  // a new model starts again at 1
  resolve.alias = "staging";
  expect_error(this->store().get_version(resolve), Code::not_found, {"'staging'"});
}

TYPED_TEST(RegistryLogicTest, ReferencedBlobsAreDistinctAndFollowDeletes) {
  this->make_version("m", {{"config.json", kShaA, 1}, {"model.safetensors", kShaB, 2}});
  this->make_version("m", {{"config.json", kShaA, 1}, {"adapter.safetensors", kShaC, 3}});
  this->make_version("n", {{"model.safetensors", kShaB, 2}});
  auto blobs = [&] {
    std::vector<std::string> out;
    must(this->store().for_each_referenced_blob(
        [&](const std::string& sha) { out.push_back(sha); }));
    return out;
  };
  EXPECT_EQ(blobs(), (std::vector<std::string>{kShaA, kShaB, kShaC}));
  must(this->store().delete_model("m"));
  EXPECT_EQ(blobs(), (std::vector<std::string>{kShaB}));
  msg::SearchVersionsRequest versions;
  versions.name = "m";
  EXPECT_TRUE(must(this->store().search_versions(versions)).model_versions.empty());
}

// ---- Durability ----

TYPED_TEST(RegistryStoreTest, EverythingSurvivesReopen) {
  this->sync_ = true;
  this->reopen();
  const std::string experiment = this->make_experiment("e", {{"k", "v"}});
  const std::string run = this->make_run(experiment, "r", kNow);
  must(this->log(run, {metric("loss", 1, 0, 0), metric("loss", 0.5, 1, 0)}, {{"lr", "0.1"}},
                 {{"t", "x"}}));
  this->make_version("m", {{"model.safetensors", kShaA, 5}}, run);
  msg::SetAliasRequest set;
  set.name = "m";
  set.alias = "prod";
  set.version = "1";
  must(this->store().set_alias(set, "admin", kNow));

  this->reopen();

  msg::GetExperimentRequest get;
  get.experiment_name = "e";
  EXPECT_EQ(must(this->store().get_experiment(get)).experiment_id, experiment);
  EXPECT_EQ(this->make_experiment("e2"), "2");  // the id counter survived
  auto got = must(this->store().get_run(run));
  ASSERT_EQ(got.data.metrics.size(), 1u);
  EXPECT_EQ(got.data.metrics[0].value, 0.5);
  ASSERT_EQ(got.data.params.size(), 1u);
  msg::GetMetricHistoryRequest history;
  history.run_id = run;
  history.metric_key = "loss";
  EXPECT_EQ(must(this->store().get_metric_history(history)).metrics.size(), 2u);
  EXPECT_EQ(this->search_ids({experiment}, "metrics.loss < 1"), (std::vector<std::string>{run}));
  msg::GetVersionRequest resolve;
  resolve.name = "m";
  resolve.alias = "prod";
  auto version = must(this->store().get_version(resolve));
  EXPECT_EQ(version.metrics.at("loss"), 0.5);
  EXPECT_EQ(this->make_version("m").version, "2");
  set.version = "2";
  must(this->store().set_alias(set, "admin", kNow + 1));
  auto events = must(this->store().alias_history("m")).events;
  ASSERT_EQ(events.size(), 2u);  // the event counter survived: the new event sorts last
  EXPECT_EQ(events[1].to_version, "2");
}

// ---- Failure injection (MemoryKvStore) ----

class RegistryStoreFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kv_ = std::make_unique<MemoryKvStore>(registry_families());
    store_ = must(RegistryStore::open(*kv_));
  }
  std::unique_ptr<MemoryKvStore> kv_;
  std::unique_ptr<RegistryStore> store_;
};

TEST_F(RegistryStoreFaultTest, AFailedWriteChangesNothingAndKeepsCounters) {
  msg::CreateExperimentRequest create;
  create.name = "e";
  kv_->fail_next_writes(1, Status(Code::io_error, "disk full"));
  expect_error(store_->create_experiment(create, kNow), Code::io_error, {"disk full"});
  EXPECT_EQ(must(store_->create_experiment(create, kNow)).experiment_id, "1");

  msg::CreateRunRequest run_request;
  run_request.experiment_id = "1";
  const std::string run = must(store_->create_run(run_request, kNow)).info.run_id;
  msg::LogBatchRequest log;
  log.run_id = run;
  log.metrics = {metric("m", 1, 0, 0)};
  log.params = {{"p", "1"}};
  LogBatchGroup group;
  must(store_->stage_log_batch(log, group, kNow));
  kv_->fail_next_writes(1, Status(Code::io_error, "disk full"));
  expect_error(store_->commit(group), Code::io_error, {"disk full"});
  EXPECT_TRUE(group.empty());  // cleared: the caller answers every request with the error
  auto got = must(store_->get_run(run));
  EXPECT_TRUE(got.data.metrics.empty());
  EXPECT_TRUE(got.data.params.empty());
  log.params = {{"p", "2"}};  // the failed value was never stored, so another is fine
  must(store_->stage_log_batch(log, group, kNow));
  must(store_->commit(group));
  EXPECT_EQ(must(store_->get_run(run)).data.params[0].value, "2");
}

TEST_F(RegistryStoreFaultTest, CommitMergesIntoTheCurrentRecord) {
  msg::CreateRunRequest run_request;
  const std::string run = must(store_->create_run(run_request, kNow)).info.run_id;
  msg::LogBatchRequest log;
  log.run_id = run;
  log.metrics = {metric("m", 1, 0, 0)};
  LogBatchGroup group;
  must(store_->stage_log_batch(log, group, kNow));
  // A call between stage and commit is kept, not overwritten by the staged summary.
  msg::UpdateRunRequest update;
  update.run_id = run;
  update.status = "FINISHED";
  must(store_->update_run(update, kNow + 1));
  must(store_->commit(group));
  auto got = must(store_->get_run(run));
  EXPECT_EQ(got.info.status, "FINISHED");
  EXPECT_EQ(got.data.metrics.size(), 1u);

  // A param committed by another group between stage and commit with another value fails the
  // commit that comes second.
  LogBatchGroup a, b;
  log.metrics = {};
  log.params = {{"p", "a"}};
  must(store_->stage_log_batch(log, a, kNow));
  log.params = {{"p", "b"}};
  must(store_->stage_log_batch(log, b, kNow));
  must(store_->commit(a));
  expect_error(store_->commit(b), Code::bad_request, {"'p'", "'a'", "'b'"});
  EXPECT_EQ(must(store_->get_run(run)).data.params[0].value, "a");
}

// ---- Scale smoke check: prints timings, asserts only results ----

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// On RocksDB only: MemoryKvStore copies a whole scan range before visiting it, so its timings
// say nothing about the store.
void scale_smoke(KvStore& kv, const char* backend, bool ingest) {
  constexpr int kRuns = 20000;
  constexpr int kVersions = 10000;
  RegistryStoreOptions options;
  options.sync = false;  // loading the fixture; the ingest check below syncs
  auto store = must(RegistryStore::open(kv, options));
  msg::CreateExperimentRequest create;
  create.name = "scale";
  const std::string experiment = must(store->create_experiment(create, kNow)).experiment_id;

  auto start = std::chrono::steady_clock::now();
  LogBatchGroup group;
  for (int i = 0; i < kRuns; ++i) {
    msg::CreateRunRequest run;
    run.experiment_id = experiment;
    run.run_name = "run-" + std::to_string(i);
    run.start_time = kNow + i;
    const std::string id = must(store->create_run(run, kNow)).info.run_id;
    msg::LogBatchRequest log;
    log.run_id = id;
    // loss in [0, 3): about half the runs match loss < 1.5; "rare" matches 1 run in 1000.
    log.metrics = {metric("loss", (i * 7919 % 3000) / 1000.0, 10, kNow),
                   metric("acc", (i % 100) / 100.0, 10, kNow),
                   metric("rare", i % 1000 == 0 ? 1 : 0, 10, kNow)};
    log.params = {{"lr", i % 2 ? "1e-3" : "3e-4"}, {"batch", std::to_string(32 << (i % 3))}};
    log.tags = {{"team", i % 3 ? "vision" : "nlp"}};
    must(store->stage_log_batch(log, group, kNow));
    if (group.requests() == 500) must(store->commit(group));
  }
  must(store->commit(group));
  const double load_ms = ms_since(start);

  auto timed_search = [&](const std::string& filter, std::vector<std::string> order_by,
                          size_t expect_at_least) {
    msg::SearchRunsRequest request;
    request.experiment_ids = {experiment};
    request.filter = filter;
    request.order_by = std::move(order_by);
    request.max_results = 100;
    auto t = std::chrono::steady_clock::now();
    auto reply = must(store->search_runs(request));
    const double ms = ms_since(t);
    EXPECT_GE(reply.runs.size(), expect_at_least) << filter;
    return ms;
  };
  const double first_page_ms = timed_search("metrics.loss < 1.5", {}, 100);
  const double two_clause_ms = timed_search("metrics.loss < 1.5 and params.lr = '3e-4'", {}, 100);
  const double rare_ms = timed_search("metrics.rare > 0.5", {}, 20);
  const double sorted_ms = timed_search("metrics.loss < 1.5", {"metrics.acc DESC"}, 100);

  start = std::chrono::steady_clock::now();
  for (int i = 0; i < kVersions; ++i) {
    msg::CreateVersionRequest version;
    version.name = "big";
    version.create_model = true;
    version.artifacts = {{"model.safetensors", kShaA, 1}};
    must(store->create_version(version, kNow + i));
  }
  const double versions_ms = ms_since(start);
  msg::SearchVersionsRequest versions;
  versions.name = "big";
  auto t = std::chrono::steady_clock::now();
  auto page = must(store->search_versions(versions));
  const double version_page_ms = ms_since(t);
  EXPECT_EQ(page.model_versions.size(), 100u);
  EXPECT_EQ(page.model_versions.front().version, std::to_string(kVersions));

  std::printf(
      "[scale %s] load %d runs + 3 metrics/2 params/1 tag each: %.0f ms; %d versions: %.0f ms\n",
      backend, kRuns, load_ms, kVersions, versions_ms);
  std::printf(
      "[scale %s] first page (100) of metrics.loss < 1.5: %.2f ms; with params.lr: %.2f ms; "
      "selective metrics.rare > 0.5 (full scan): %.2f ms; ordered by metrics.acc: %.2f ms\n",
      backend, first_page_ms, two_clause_ms, rare_ms, sorted_ms);
  std::printf("[scale %s] first page (100) of a model's %d versions: %.2f ms\n", backend, kVersions,
              version_page_ms);

  if (ingest) {
    // Durable ingest: groups of one 1000-point request each, one synced commit per group.
    store.reset();
    auto durable = must(RegistryStore::open(kv));
    msg::CreateRunRequest run;
    run.experiment_id = experiment;
    const std::string id = must(durable->create_run(run, kNow)).info.run_id;
    constexpr int kCommits = 20;
    t = std::chrono::steady_clock::now();
    for (int c = 0; c < kCommits; ++c) {
      msg::LogBatchRequest log;
      log.run_id = id;
      for (int p = 0; p < 1000; ++p) {
        log.metrics.push_back(metric("m" + std::to_string(p % 4), p * 0.1, c * 1000 + p, kNow + p));
      }
      LogBatchGroup g;
      must(durable->stage_log_batch(log, g, kNow));
      must(durable->commit(g));
    }
    const double ingest_ms = ms_since(t);
    std::printf(
        "[scale %s] durable ingest: %d synced commits of 1000 points: %.0f ms = %.0f points/s\n",
        backend, kCommits, ingest_ms, kCommits * 1000 / (ingest_ms / 1000));
  }
}

TEST(RegistryScaleSmoke, RocksStore) {
  TestDir dir;
  auto kv = must(open_rocks_store({dir.path("db"), registry_families()}));
  scale_smoke(*kv, "rocksdb", /*ingest=*/true);
}

}  // namespace
}  // namespace cairn::storage
