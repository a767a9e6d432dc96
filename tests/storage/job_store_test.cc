// The job store over MemoryKvStore: ids, durability of the counter across reopen, newest-first
// listing, put of unknown jobs, corrupt records.
#include <gtest/gtest.h>

#include "storage/job_store.h"

namespace cairn::storage {
namespace {

JobRecord make_record(const std::string& name, std::string_view state) {
  JobRecord record;
  record.status.name = name;
  record.status.state = std::string(state);
  record.config_yaml = "learning_rate: 0.001\n";
  record.config_name = name + ".yaml";
  return record;
}

TEST(JobStoreTest, CreatesGetsPutsAndListsNewestFirst) {
  MemoryKvStore kv(job_families());
  auto store = JobStore::open(kv);
  ASSERT_TRUE(store.ok()) << store.status().to_string();
  JobRecord a = make_record("a", msg::kJobQueued);
  JobRecord b = make_record("b", msg::kJobRunning);
  ASSERT_EQ((*store)->create(a).value(), "job-1");
  ASSERT_EQ((*store)->create(b).value(), "job-2");

  a.status.state = std::string(msg::kJobSucceeded);
  a.status.last_checkpoint = {"tiny", "3", 20};
  ASSERT_TRUE((*store)->put(a).ok());
  auto got = (*store)->get("job-1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status.state, "succeeded");
  EXPECT_EQ(got->status.last_checkpoint.version, "3");
  EXPECT_EQ(got->config_yaml, a.config_yaml);

  std::vector<std::string> ids;
  ASSERT_TRUE((*store)->for_each([&](const JobRecord& r) {
    ids.push_back(r.status.job_id);
    return true;
  }).ok());
  EXPECT_EQ(ids, (std::vector<std::string>{"job-2", "job-1"}));
}

TEST(JobStoreTest, CounterSurvivesReopen) {
  MemoryKvStore kv(job_families());
  {
    auto store = JobStore::open(kv).value();
    JobRecord r = make_record("a", msg::kJobQueued);
    ASSERT_TRUE(store->create(r).ok());
  }
  auto store = JobStore::open(kv).value();
  JobRecord r = make_record("b", msg::kJobQueued);
  EXPECT_EQ(store->create(r).value(), "job-2");
  EXPECT_EQ(store->get("job-1")->status.name, "a");
}

TEST(JobStoreTest, UnknownIdsAreNotFound) {
  MemoryKvStore kv(job_families());
  auto store = JobStore::open(kv).value();
  for (const char* id : {"job-1", "job-0", "job-x", "7", ""}) {
    EXPECT_EQ(store->get(id).status().code(), Code::not_found) << id;
  }
  JobRecord r = make_record("a", msg::kJobQueued);
  r.status.job_id = "job-5";
  EXPECT_EQ(store->put(r).code(), Code::not_found);
}

TEST(JobStoreTest, FailedCreateKeepsTheCounter) {
  MemoryKvStore kv(job_families());
  auto store = JobStore::open(kv).value();
  kv.fail_next_writes(1, Status(Code::io_error, "disk full"));
  JobRecord r = make_record("a", msg::kJobQueued);
  EXPECT_EQ(store->create(r).status().code(), Code::io_error);
  EXPECT_EQ(store->create(r).value(), "job-1");
}

TEST(JobStoreTest, CorruptRecordIsDataLoss) {
  MemoryKvStore kv(job_families());
  auto store = JobStore::open(kv).value();
  JobRecord r = make_record("a", msg::kJobQueued);
  ASSERT_TRUE(store->create(r).ok());
  ASSERT_TRUE(kv.put(kJobFamily, std::string("j") + std::string(7, '\0') + "\x01", "garbage").ok());
  EXPECT_EQ(store->get("job-1").status().code(), Code::data_loss);
  EXPECT_EQ(store->for_each([](const JobRecord&) { return true; }).code(), Code::data_loss);
}

}  // namespace
}  // namespace cairn::storage
