// KvStore behaviour, run against both MemoryKvStore and the RocksDB store (real files in a fresh
// temporary directory); then what only the RocksDB store does (reopen, locking) and node identity.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "storage/kv_store.h"
#include "storage/node_identity.h"
#include "tests/storage/test_dir.h"

namespace cairn::storage {
namespace {

using namespace std::string_literals;
using testing::TestDir;
using Pairs = std::vector<std::pair<std::string, std::string>>;

WriteOptions unsynced() {
  WriteOptions options;
  options.sync = false;
  return options;
}

// The value at key, or "<absent>"; a failed get fails the test.
std::string value_or_absent(KvStore& store, std::string_view family, std::string_view key) {
  auto value = store.get(family, key);
  EXPECT_TRUE(value.ok()) << value.status().to_string();
  if (!value.ok()) return "<error>";
  return value->value_or("<absent>");
}

Pairs scan_pairs(KvStore& store, std::string_view family, std::string_view prefix,
                 std::string_view start_after = {}) {
  Pairs seen;
  const Status status = store.scan(family, prefix, start_after, [&](auto key, auto value) {
    seen.emplace_back(std::string(key), std::string(value));
    return true;
  });
  EXPECT_TRUE(status.ok()) << status.to_string();
  return seen;
}

std::unique_ptr<KvStore> open_or_fail(const RocksOptions& options) {
  auto store = open_rocks_store(options);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  return store.ok() ? std::move(*store) : nullptr;
}

// ---- The shared behaviour suite -------------------------------------------------------------

struct MemoryStoreMaker {
  std::unique_ptr<KvStore> open(const std::vector<std::string>& families) {
    return std::make_unique<MemoryKvStore>(families);
  }
};

struct RocksStoreMaker {
  TestDir dir;
  std::unique_ptr<KvStore> open(const std::vector<std::string>& families) {
    return open_or_fail({dir.path("db"), families});
  }
};

template <class Maker>
class KvStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = maker_.open({"runs", "metrics"});
    ASSERT_NE(store_, nullptr);
  }
  KvStore& store() { return *store_; }

  Maker maker_;
  std::unique_ptr<KvStore> store_;
};

struct MakerNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, MemoryStoreMaker> ? "Memory" : "Rocks";
  }
};
using StoreMakers = ::testing::Types<MemoryStoreMaker, RocksStoreMaker>;
TYPED_TEST_SUITE(KvStoreTest, StoreMakers, MakerNames);

TYPED_TEST(KvStoreTest, PutThenGetReturnsTheValue) {
  ASSERT_TRUE(this->store().put("runs", "r1", "first").ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "first");
}

TYPED_TEST(KvStoreTest, MissingKeyIsNulloptAndEmptyValueIsNot) {
  EXPECT_EQ(value_or_absent(this->store(), "runs", "nope"), "<absent>");
  ASSERT_TRUE(this->store().put("runs", "empty", "").ok());
  auto value = this->store().get("runs", "empty");
  ASSERT_TRUE(value.ok());
  ASSERT_TRUE(value->has_value());
  EXPECT_EQ(**value, "");
}

TYPED_TEST(KvStoreTest, PutReplacesTheValue) {
  ASSERT_TRUE(this->store().put("runs", "r1", "first").ok());
  ASSERT_TRUE(this->store().put("runs", "r1", "second", unsynced()).ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "second");
}

TYPED_TEST(KvStoreTest, EraseRemovesTheKeyAndErasingAMissingKeyIsOk) {
  ASSERT_TRUE(this->store().put("runs", "r1", "first").ok());
  ASSERT_TRUE(this->store().erase("runs", "r1").ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "<absent>");
  EXPECT_TRUE(this->store().erase("runs", "never-there").ok());
}

TYPED_TEST(KvStoreTest, FamiliesAreSeparateAndDefaultIsAlwaysThere) {
  ASSERT_TRUE(this->store().put("runs", "k", "in runs").ok());
  ASSERT_TRUE(this->store().put("metrics", "k", "in metrics").ok());
  ASSERT_TRUE(this->store().put("default", "k", "in default").ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "k"), "in runs");
  EXPECT_EQ(value_or_absent(this->store(), "metrics", "k"), "in metrics");
  EXPECT_EQ(value_or_absent(this->store(), "default", "k"), "in default");
}

TYPED_TEST(KvStoreTest, UnknownFamilyIsInvalidArgumentNamingIt) {
  auto expect_unknown = [](const Status& status) {
    EXPECT_EQ(status.code(), Code::invalid_argument) << status.to_string();
    EXPECT_NE(status.message().find("\"models\""), std::string::npos) << status.message();
  };
  expect_unknown(this->store().put("models", "k", "v"));
  expect_unknown(this->store().erase("models", "k"));
  expect_unknown(this->store().get("models", "k").status());
  expect_unknown(this->store().scan("models", "", "", [](auto, auto) { return true; }));
  WriteBatch batch;
  batch.put("models", "k", "v");
  expect_unknown(this->store().write(batch));
}

TYPED_TEST(KvStoreTest, BatchAppliesEveryWriteInOrder) {
  ASSERT_TRUE(this->store().put("runs", "old", "x").ok());
  WriteBatch batch;
  batch.put("runs", "r1", "a");
  batch.put("metrics", "m1", "b");
  batch.erase("runs", "old");
  batch.put("runs", "r2", "c");
  batch.erase("runs", "r2");  // a later write of the same key wins
  EXPECT_EQ(batch.size(), 5u);
  ASSERT_TRUE(this->store().write(batch).ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "a");
  EXPECT_EQ(value_or_absent(this->store(), "metrics", "m1"), "b");
  EXPECT_EQ(value_or_absent(this->store(), "runs", "old"), "<absent>");
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r2"), "<absent>");
}

TYPED_TEST(KvStoreTest, BatchWithAnUnknownFamilyChangesNothing) {
  ASSERT_TRUE(this->store().put("runs", "keep", "x").ok());
  WriteBatch batch;
  batch.put("runs", "r1", "a");
  batch.erase("runs", "keep");
  batch.put("no-such-family", "k", "v");
  EXPECT_EQ(this->store().write(batch).code(), Code::invalid_argument);
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "<absent>");
  EXPECT_EQ(value_or_absent(this->store(), "runs", "keep"), "x");
}

TYPED_TEST(KvStoreTest, EmptyBatchIsOk) {
  WriteBatch batch;
  EXPECT_TRUE(batch.empty());
  EXPECT_TRUE(this->store().write(batch).ok());
}

TYPED_TEST(KvStoreTest, ScanVisitsThePrefixInKeyOrder) {
  for (const char* key : {"run/2", "run/10", "rum", "run/1", "runs", "run/", "ruo", "a"}) {
    ASSERT_TRUE(this->store().put("runs", key, std::string("v-") + key, unsynced()).ok());
  }
  EXPECT_EQ(scan_pairs(this->store(), "runs", "run/"),
            (Pairs{{"run/", "v-run/"}, {"run/1", "v-run/1"}, {"run/10", "v-run/10"},
                   {"run/2", "v-run/2"}}));
  EXPECT_EQ(scan_pairs(this->store(), "runs", "zzz"), Pairs{});
  EXPECT_EQ(scan_pairs(this->store(), "metrics", "run/"), Pairs{});
}

TYPED_TEST(KvStoreTest, ScanWithEmptyPrefixVisitsEveryKey) {
  for (const char* key : {"b", "c", "a"}) ASSERT_TRUE(this->store().put("runs", key, key).ok());
  EXPECT_EQ(scan_pairs(this->store(), "runs", ""), (Pairs{{"a", "a"}, {"b", "b"}, {"c", "c"}}));
}

TYPED_TEST(KvStoreTest, ScanStartsStrictlyAfterTheCursor) {
  for (const char* key : {"p/a", "p/b", "p/c", "q/a"}) {
    ASSERT_TRUE(this->store().put("runs", key, key, unsynced()).ok());
  }
  // A cursor that is a key: that key is excluded.
  EXPECT_EQ(scan_pairs(this->store(), "runs", "p/", "p/a"), (Pairs{{"p/b", "p/b"}, {"p/c", "p/c"}}));
  // A cursor between keys.
  EXPECT_EQ(scan_pairs(this->store(), "runs", "p/", "p/bb"), (Pairs{{"p/c", "p/c"}}));
  // A cursor before the prefix starts at the prefix; one past it visits nothing.
  EXPECT_EQ(scan_pairs(this->store(), "runs", "p/", "a").size(), 3u);
  EXPECT_EQ(scan_pairs(this->store(), "runs", "p/", "p/c"), Pairs{});
  EXPECT_EQ(scan_pairs(this->store(), "runs", "p/", "z"), Pairs{});
}

TYPED_TEST(KvStoreTest, ScanStopsWhenTheVisitorReturnsFalse) {
  for (const char* key : {"k1", "k2", "k3"}) ASSERT_TRUE(this->store().put("runs", key, key).ok());
  std::vector<std::string> seen;
  const Status status = this->store().scan("runs", "k", "", [&](auto key, auto) {
    seen.emplace_back(key);
    return seen.size() < 2;
  });
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"k1", "k2"}));
}

TYPED_TEST(KvStoreTest, ScanReadsASnapshotAndTheVisitorMayWrite) {
  for (const char* key : {"k1", "k3"}) ASSERT_TRUE(this->store().put("runs", key, "old").ok());
  Pairs seen;
  const Status status = this->store().scan("runs", "k", "", [&](auto key, auto value) {
    seen.emplace_back(std::string(key), std::string(value));
    EXPECT_TRUE(this->store().put("runs", "k2", "new", unsynced()).ok());
    EXPECT_TRUE(this->store().put("runs", "k3", "new", unsynced()).ok());
    return true;
  });
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(seen, (Pairs{{"k1", "old"}, {"k3", "old"}}));
  EXPECT_EQ(value_or_absent(this->store(), "runs", "k2"), "new");
}

TYPED_TEST(KvStoreTest, BinaryKeysAndValuesWithNulAndHighBytes) {
  const std::string nul_key = "k\0a"s;
  const std::string value = "v\0\xff"s;
  ASSERT_TRUE(this->store().put("runs", nul_key, value).ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", nul_key), value);
  EXPECT_EQ(value_or_absent(this->store(), "runs", "k"), "<absent>");  // not cut at the \0
  // Keys order as unsigned bytes.
  for (const std::string& key : {"k\xff"s, "k\x80"s, "k\x7f"s, "k\x01"s, "k"s}) {
    ASSERT_TRUE(this->store().put("runs", key, "", unsynced()).ok());
  }
  Pairs keys = scan_pairs(this->store(), "runs", "k");
  std::vector<std::string> order;
  for (auto& [key, unused] : keys) order.push_back(key);
  EXPECT_EQ(order, (std::vector<std::string>{"k"s, "k\0a"s, "k\x01"s, "k\x7f"s, "k\x80"s,
                                             "k\xff"s}));
  // A prefix and a cursor with \0 in them.
  EXPECT_EQ(scan_pairs(this->store(), "runs", "k\0"s), (Pairs{{nul_key, value}}));
  EXPECT_EQ(scan_pairs(this->store(), "runs", "k"s, "k\0a"s).size(), 4u);
}

TYPED_TEST(KvStoreTest, WritersOnManyThreads) {
  constexpr int kThreads = 4;
  constexpr int kWritesEach = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < kWritesEach; ++i) {
        const std::string key = "t" + std::to_string(t) + "/" + std::to_string(i);
        EXPECT_TRUE(this->store().put("metrics", key, key, unsynced()).ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(scan_pairs(this->store(), "metrics", "t").size(), size_t{kThreads * kWritesEach});
}

TYPED_TEST(KvStoreTest, FlushIsOk) {
  ASSERT_TRUE(this->store().put("runs", "r1", "a", unsynced()).ok());
  EXPECT_TRUE(this->store().flush().ok());
  EXPECT_EQ(value_or_absent(this->store(), "runs", "r1"), "a");
}

// ---- WriteBatch -------------------------------------------------------------------------------

TEST(WriteBatchTest, KeepsWritesInOrderAndClears) {
  WriteBatch batch;
  batch.put("runs", "k\0"s, "v");
  batch.erase("runs", "k");
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch.ops()[0].kind, WriteBatch::OpKind::put);
  EXPECT_EQ(batch.ops()[0].key, "k\0"s);
  EXPECT_EQ(batch.ops()[1].kind, WriteBatch::OpKind::erase);
  WriteBatch moved = std::move(batch);
  EXPECT_EQ(moved.size(), 2u);
  moved.clear();
  EXPECT_TRUE(moved.empty());
}

// ---- MemoryKvStore's fault injection ------------------------------------------------------------

TEST(MemoryKvStoreTest, InjectedFailuresFailTheNextWritesAndChangeNothing) {
  MemoryKvStore store({"runs"});
  ASSERT_TRUE(store.put("runs", "keep", "x").ok());
  const Status disk_full(Code::io_error, "injected: no space left");
  store.fail_next_writes(3, disk_full);

  const Status put = store.put("runs", "r1", "a");
  EXPECT_EQ(put.code(), Code::io_error);
  EXPECT_EQ(put.message(), "injected: no space left");
  EXPECT_EQ(store.erase("runs", "keep").code(), Code::io_error);
  WriteBatch batch;
  batch.put("runs", "r2", "b");
  EXPECT_EQ(store.write(batch).code(), Code::io_error);
  // Reads are not mutating calls and do not use up the injection.
  EXPECT_EQ(value_or_absent(store, "runs", "r1"), "<absent>");
  EXPECT_EQ(value_or_absent(store, "runs", "keep"), "x");
  EXPECT_EQ(value_or_absent(store, "runs", "r2"), "<absent>");

  EXPECT_TRUE(store.put("runs", "r1", "a").ok());
  EXPECT_EQ(value_or_absent(store, "runs", "r1"), "a");
}

TEST(MemoryKvStoreTest, InjectedFailureComesBeforeTheFamilyCheck) {
  MemoryKvStore store({});
  store.fail_next_writes(1, Status(Code::unavailable, "injected"));
  EXPECT_EQ(store.put("unknown", "k", "v").code(), Code::unavailable);
  EXPECT_EQ(store.put("unknown", "k", "v").code(), Code::invalid_argument);
}

TEST(MemoryKvStoreTest, ZeroCancelsAnInjection) {
  MemoryKvStore store({});
  store.fail_next_writes(5, Status(Code::io_error, "injected"));
  store.fail_next_writes(0, Status(Code::io_error, "injected"));
  EXPECT_TRUE(store.put("default", "k", "v").ok());
}

// ---- What only the RocksDB store does ---------------------------------------------------------

TEST(RocksKvStoreTest, DataSurvivesCloseAndReopen) {
  TestDir dir;
  const RocksOptions options{dir.path("nested/db"), {"runs", "metrics"}};
  {
    auto store = open_or_fail(options);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->put("runs", "synced", "1").ok());
    ASSERT_TRUE(store->put("metrics", "unsynced", "2", unsynced()).ok());
    WriteBatch batch;
    batch.put("runs", "batched", "3");
    ASSERT_TRUE(store->write(batch).ok());
  }
  auto store = open_or_fail(options);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(value_or_absent(*store, "runs", "synced"), "1");
  EXPECT_EQ(value_or_absent(*store, "metrics", "unsynced"), "2");
  EXPECT_EQ(value_or_absent(*store, "runs", "batched"), "3");
}

TEST(RocksKvStoreTest, FamiliesLeftOutOnReopenKeepTheirData) {
  TestDir dir;
  {
    auto store = open_or_fail({dir.path("db"), {"runs", "models"}});
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->put("models", "m1", "weights").ok());
  }
  {
    // "models" exists on disk but is not asked for: the open works, the family is not named.
    auto store = open_or_fail({dir.path("db"), {"runs"}});
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->get("models", "m1").status().code(), Code::invalid_argument);
  }
  auto store = open_or_fail({dir.path("db"), {"models"}});
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(value_or_absent(*store, "models", "m1"), "weights");
}

TEST(RocksKvStoreTest, SecondOpenInThisProcessIsUnavailableNamingThePath) {
  TestDir dir;
  const RocksOptions options{dir.path("db"), {"runs"}};
  auto first = open_or_fail(options);
  ASSERT_NE(first, nullptr);
  auto second = open_rocks_store(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::unavailable) << second.status().to_string();
  EXPECT_NE(second.status().message().find("data dir " + options.path +
                                            " is in use by another store in this process"),
            std::string::npos)
      << second.status().message();
  // The first store is unharmed, and once it is closed the directory opens again.
  EXPECT_TRUE(first->put("runs", "k", "v").ok());
  first.reset();
  auto third = open_or_fail(options);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(value_or_absent(*third, "runs", "k"), "v");
}

// Another process holds the lock the way RocksDB takes it (an fcntl write lock on <db>/LOCK).
TEST(RocksKvStoreTest, OpenLockedByAnotherProcessIsUnavailableNamingThePath) {
  TestDir dir;
  const RocksOptions options{dir.path("db"), {"runs"}};
  ASSERT_NE(open_or_fail(options), nullptr);  // create the database, then close it
  const std::string lock_path = options.path + "/LOCK";

  int locked[2];    // child -> parent: one byte, 1 when the child holds the lock
  int release[2];   // parent -> child: closed when the child may exit
  ASSERT_EQ(pipe(locked), 0);
  ASSERT_EQ(pipe(release), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // A copy of a threaded process: only async-signal-safe calls from here on.
    close(locked[0]);
    close(release[1]);
    const int fd = open(lock_path.c_str(), O_RDWR);
    struct flock lock = {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    const char held = (fd >= 0 && fcntl(fd, F_SETLK, &lock) == 0) ? 1 : 0;
    if (write(locked[1], &held, 1) != 1) _exit(1);
    char byte;
    while (read(release[0], &byte, 1) > 0) {
    }
    _exit(0);
  }
  close(locked[1]);
  close(release[0]);
  char held = 0;
  const bool got_reply = read(locked[0], &held, 1) == 1;
  Result<std::unique_ptr<KvStore>> second = Status(Code::internal, "not tried");
  if (got_reply && held == 1) second = open_rocks_store(options);
  close(release[1]);
  close(locked[0]);
  int child_status = 0;
  waitpid(child, &child_status, 0);

  ASSERT_TRUE(got_reply && held == 1) << "the child could not lock " << lock_path;
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::unavailable) << second.status().to_string();
  EXPECT_NE(second.status().message().find("data dir " + options.path +
                                            " is in use by another process"),
            std::string::npos)
      << second.status().message();
  EXPECT_NE(open_or_fail(options), nullptr);  // free again once the other process is gone
}

TEST(RocksKvStoreTest, MissingDatabaseWithoutCreateIsIoErrorNamingThePath) {
  TestDir dir;
  RocksOptions options{dir.path("db"), {}};
  options.create_if_missing = false;
  auto store = open_rocks_store(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Code::io_error);
  EXPECT_NE(store.status().message().find(options.path), std::string::npos)
      << store.status().message();
}

TEST(RocksKvStoreTest, BadPathsAreRejected) {
  EXPECT_EQ(open_rocks_store(RocksOptions{}).status().code(), Code::invalid_argument);
  TestDir dir;
  ASSERT_NE(open_or_fail({dir.path("db"), {}}), nullptr);
  // A path under a regular file cannot be a directory.
  auto store = open_rocks_store({dir.path("db/CURRENT/db"), {}});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Code::io_error);
  EXPECT_NE(store.status().message().find(dir.path("db/CURRENT/db")), std::string::npos)
      << store.status().message();
}

// ---- Node identity ------------------------------------------------------------------------------

bool is_lower_hex(const std::string& text) {
  return text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST(NodeIdentityTest, SameIdAcrossReopenAndBootCountCounts) {
  TestDir dir;
  const RocksOptions options{dir.path("db"), {std::string(kNodeFamily)}};
  std::string first_id;
  for (uint64_t boot = 1; boot <= 3; ++boot) {
    auto store = open_or_fail(options);
    ASSERT_NE(store, nullptr);
    auto identity = record_boot(*store, /*now_unix_ms=*/1000 + static_cast<int64_t>(boot));
    ASSERT_TRUE(identity.ok()) << identity.status().to_string();
    EXPECT_EQ(identity->boot_count, boot);
    EXPECT_EQ(identity->created_unix_ms, 1001);  // the first boot's time, kept
    EXPECT_EQ(identity->node_id.size(), 32u);
    EXPECT_TRUE(is_lower_hex(identity->node_id)) << identity->node_id;
    if (boot == 1) first_id = identity->node_id;
    EXPECT_EQ(identity->node_id, first_id);
  }
}

TEST(NodeIdentityTest, StoredFormatIsBigEndianFixed64) {
  MemoryKvStore store({std::string(kNodeFamily)});
  ASSERT_TRUE(record_boot(store, 0x0102).ok());
  EXPECT_EQ(value_or_absent(store, kNodeFamily, kBootCountKey), "\0\0\0\0\0\0\0\x01"s);
  EXPECT_EQ(value_or_absent(store, kNodeFamily, kCreatedUnixMsKey), "\0\0\0\0\0\0\x01\x02"s);
}

TEST(NodeIdentityTest, SystemClockTimeIsAfter2020) {
  MemoryKvStore store({std::string(kNodeFamily)});
  auto identity = record_boot(store);
  ASSERT_TRUE(identity.ok()) << identity.status().to_string();
  EXPECT_GT(identity->created_unix_ms, int64_t{1577836800000});  // 2020-01-01
}

TEST(NodeIdentityTest, TwoNodesGetDifferentIds) {
  MemoryKvStore a({std::string(kNodeFamily)});
  MemoryKvStore b({std::string(kNodeFamily)});
  auto id_a = record_boot(a, 1);
  auto id_b = record_boot(b, 1);
  ASSERT_TRUE(id_a.ok() && id_b.ok());
  EXPECT_NE(id_a->node_id, id_b->node_id);
}

TEST(NodeIdentityTest, CorruptBootCountInRocksIsDataLossNamingTheKey) {
  TestDir dir;
  auto store = open_or_fail({dir.path("db"), {std::string(kNodeFamily)}});
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(record_boot(*store, 1).ok());
  ASSERT_TRUE(store->put(kNodeFamily, kBootCountKey, "abc").ok());
  auto identity = record_boot(*store, 2);
  ASSERT_FALSE(identity.ok());
  EXPECT_EQ(identity.status().code(), Code::data_loss);
  EXPECT_NE(identity.status().message().find("boot_count"), std::string::npos)
      << identity.status().message();
}

TEST(NodeIdentityTest, DamagedIdentityIsDataLossNamingTheKey) {
  auto expect_data_loss = [](KvStore& store, std::string_view key) {
    auto identity = record_boot(store, 1);
    ASSERT_FALSE(identity.ok());
    EXPECT_EQ(identity.status().code(), Code::data_loss);
    EXPECT_NE(identity.status().message().find(key), std::string::npos)
        << identity.status().message();
  };
  {
    MemoryKvStore store({std::string(kNodeFamily)});
    ASSERT_TRUE(record_boot(store, 1).ok());
    ASSERT_TRUE(store.put(kNodeFamily, kNodeIdKey, "NOT-HEX").ok());
    expect_data_loss(store, kNodeIdKey);
  }
  {
    MemoryKvStore store({std::string(kNodeFamily)});
    ASSERT_TRUE(record_boot(store, 1).ok());
    ASSERT_TRUE(store.put(kNodeFamily, kCreatedUnixMsKey, "short").ok());
    expect_data_loss(store, kCreatedUnixMsKey);
  }
  {
    MemoryKvStore store({std::string(kNodeFamily)});
    ASSERT_TRUE(record_boot(store, 1).ok());
    ASSERT_TRUE(store.erase(kNodeFamily, kCreatedUnixMsKey).ok());
    expect_data_loss(store, kCreatedUnixMsKey);
  }
  {
    MemoryKvStore store({std::string(kNodeFamily)});
    ASSERT_TRUE(store.put(kNodeFamily, kBootCountKey, "\0\0\0\0\0\0\0\x05"s).ok());
    expect_data_loss(store, kBootCountKey);  // a count without an id
  }
}

TEST(NodeIdentityTest, FailedWriteRecordsNothing) {
  MemoryKvStore store({std::string(kNodeFamily)});
  store.fail_next_writes(1, Status(Code::io_error, "injected"));
  auto failed = record_boot(store, 1);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), Code::io_error);
  auto identity = record_boot(store, 2);
  ASSERT_TRUE(identity.ok());
  EXPECT_EQ(identity->boot_count, 1u);
  EXPECT_EQ(identity->created_unix_ms, 2);
}

TEST(NodeIdentityTest, StoreWithoutTheNodeFamilyIsInvalidArgument) {
  MemoryKvStore store({});
  EXPECT_EQ(record_boot(store, 1).status().code(), Code::invalid_argument);
}

}  // namespace
}  // namespace cairn::storage
