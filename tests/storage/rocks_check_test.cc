// The RocksDB check helper: codes and messages. The lock-conflict wording is pinned by the
// open tests in storage_test.cc, against the RocksDB actually linked.
#include "storage/detail/rocks_check.h"

#include <gtest/gtest.h>

namespace cairn::storage::detail {
namespace {

TEST(RocksCheckTest, OkStaysOk) {
  EXPECT_TRUE(check(rocksdb::Status::OK(), {"Put", "/x/db", "node", "boot_count"}).ok());
}

TEST(RocksCheckTest, IoErrorNamesCallFamilyKeyAndPath) {
  const Status status = check(rocksdb::Status::IOError("No space left on device"),
                              {"Put", "/x/db", "node", "boot_count"});
  EXPECT_EQ(status.code(), Code::io_error);
  EXPECT_EQ(status.message(), "rocksdb Put(node/boot_count) in /x/db: IO error: No space left on device");
}

TEST(RocksCheckTest, CorruptionIsDataLoss) {
  const Status status = check(rocksdb::Status::Corruption("bad block"), {"Get", "/x/db", "runs", "r1"});
  EXPECT_EQ(status.code(), Code::data_loss);
  EXPECT_EQ(status.message(), "rocksdb Get(runs/r1) in /x/db: Corruption: bad block");
}

TEST(RocksCheckTest, CallWithoutSubjectHasNoParentheses) {
  const Status status = check(rocksdb::Status::IOError("disk gone"), {"Flush", "/x/db"});
  EXPECT_EQ(status.message(), "rocksdb Flush in /x/db: IO error: disk gone");
}

TEST(RocksCheckTest, BinaryKeyIsEscaped) {
  const Status status = check(rocksdb::Status::IOError("x"),
                              {"Delete", "/x/db", "runs", std::string_view("a\0\xff\\", 4)});
  EXPECT_EQ(status.message(), "rocksdb Delete(runs/a\\x00\\xff\\x5c) in /x/db: IO error: x");
}

// The wording of RocksDB 7.x; the open tests in storage_test.cc check it against the real thing.
TEST(RocksCheckTest, LockConflictsAreUnavailable) {
  const auto this_process = rocksdb::Status::IOError(
      "lock hold by current process, acquire time 1 acquiring thread 2: /x/db/LOCK",
      "No locks available");
  const auto other_process =
      rocksdb::Status::IOError("While lock file: /x/db/LOCK", "Resource temporarily unavailable");
  EXPECT_EQ(lock_holder(this_process), LockHolder::this_process);
  EXPECT_EQ(lock_holder(other_process), LockHolder::other_process);
  EXPECT_EQ(check(this_process, {"Open", "/x/db"}).code(), Code::unavailable);
  EXPECT_EQ(check(other_process, {"Open", "/x/db"}).code(), Code::unavailable);
}

TEST(RocksCheckTest, OtherErrorsAreIoError) {
  EXPECT_EQ(check(rocksdb::Status::InvalidArgument("no"), {"Open", "/x/db"}).code(), Code::io_error);
  EXPECT_EQ(check(rocksdb::Status::Busy(), {"Write", "/x/db"}).code(), Code::io_error);
  EXPECT_FALSE(lock_holder(rocksdb::Status::IOError("While open a file for lock: /x/db/LOCK",
                                                         "Permission denied")));
}

}  // namespace
}  // namespace cairn::storage::detail
