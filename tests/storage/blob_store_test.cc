// BlobStore and Sha256 on real files in a fresh temporary directory. Ages are driven by a fake
// clock (BlobStoreOptions::now), so gc is tested without waiting.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "storage/blob_store.h"
#include "storage/sha256.h"
#include "tests/storage/test_dir.h"

namespace cairn::storage {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::TestDir;

constexpr std::string_view kEmptySha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr std::string_view kAbcSha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

// `size` bytes that differ from one seed to another and are not all alike.
std::string content(size_t size, uint32_t seed = 1) {
  std::string bytes(size, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : bytes) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The names of the files under `dir`, recursively, relative to it.
std::set<std::string> files_under(const std::string& dir) {
  std::set<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files.insert(fs::relative(entry.path(), dir).string());
  }
  return files;
}

// Reads the rest of a blob in chunks of `chunk`; the error of the first failed read.
Result<std::string> read_rest(BlobReader& reader, size_t chunk) {
  std::string all;
  for (;;) {
    auto bytes = reader.read(chunk);
    if (!bytes.ok()) return bytes.status();
    if (bytes->empty()) return all;
    all += *bytes;
  }
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  file.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(&c, 1);
}

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    const auto& assert_ok_ = (expr);                        \
    ASSERT_TRUE(assert_ok_.ok()) << status_of(assert_ok_).to_string(); \
  } while (0)

const Status& status_of(const Status& status) { return status; }
template <class T>
Status status_of(const Result<T>& result) {
  return result.ok() ? Status() : result.status();
}

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { reopen(); }

  void reopen(BlobStoreOptions options = {}) {
    store_.reset();
    options.now = [this] { return clock_; };
    auto opened = BlobStore::open(dir_.path("store"), options);
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    store_ = std::move(*opened);
  }

  std::string blob_file(std::string_view sha) const {
    return dir_.path("store") + "/blobs/" + std::string(sha.substr(0, 2)) + "/" + std::string(sha);
  }
  std::string part_file(std::string_view sha) const {
    return dir_.path("store") + "/uploads/" + std::string(sha) + ".part";
  }

  // Uploads `bytes` in chunks of `chunk` from `from`; the progress after the last chunk sent.
  Result<UploadProgress> upload(std::string_view sha, std::string_view bytes, size_t chunk, uint64_t from = 0) {
    Result<UploadProgress> progress = UploadProgress{};
    for (uint64_t offset = from; offset < bytes.size(); offset += chunk) {
      std::string_view data = bytes.substr(offset, chunk);
      progress = store_->write_chunk(sha, bytes.size(), offset, data, offset + data.size() == bytes.size());
      if (!progress.ok()) return progress;
    }
    return progress;
  }

  TestDir dir_;
  std::chrono::system_clock::time_point clock_{std::chrono::hours(24 * 365 * 50)};
  std::unique_ptr<BlobStore> store_;
};

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), kEmptySha);
  EXPECT_EQ(sha256_hex("abc"), kAbcSha);
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndRestartsAfterDigest) {
  Sha256 hash;
  hash.update("a");
  hash.update("");
  hash.update("bc");
  EXPECT_EQ(hash.hex_digest(), kAbcSha);
  EXPECT_EQ(hash.hex_digest(), kEmptySha);
  std::string big = content(3 << 20);
  Sha256 pieces;
  for (size_t i = 0; i < big.size(); i += 12345) pieces.update(std::string_view(big).substr(i, 12345));
  EXPECT_EQ(pieces.hex_digest(), sha256_hex(big));
}

TEST(Sha256Test, IsSha256Hex) {
  EXPECT_TRUE(is_sha256_hex(kAbcSha));
  EXPECT_FALSE(is_sha256_hex(""));
  EXPECT_FALSE(is_sha256_hex(kAbcSha.substr(1)));
  EXPECT_FALSE(is_sha256_hex(std::string(kAbcSha) + "0"));
  std::string upper(kAbcSha);
  upper[0] = 'B';
  EXPECT_FALSE(is_sha256_hex(upper));
  std::string slash(kAbcSha);
  slash[10] = '/';
  EXPECT_FALSE(is_sha256_hex(slash));
  EXPECT_FALSE(is_sha256_hex(std::string(64, 'g')));
}

TEST_F(BlobStoreTest, OpenMakesTheLayout) {
  for (const char* sub : {"blobs", "uploads", "tmp"}) {
    EXPECT_TRUE(fs::is_directory(dir_.path("store") + "/" + sub)) << sub;
  }
}

TEST_F(BlobStoreTest, PutBytesStoresOnceAndDeduplicates) {
  auto first = store_->put_bytes("abc");
  ASSERT_OK(first);
  EXPECT_EQ(first->sha256, kAbcSha);
  EXPECT_EQ(first->size, 3u);
  auto second = store_->put_bytes("abc");
  ASSERT_OK(second);
  EXPECT_EQ(second->sha256, kAbcSha);

  std::set<std::string> expected = {"LOCK", "blobs/ba/" + std::string(kAbcSha)};
  EXPECT_EQ(files_under(dir_.path("store")), expected);
  EXPECT_EQ(read_file(blob_file(kAbcSha)), "abc");
  EXPECT_TRUE(store_->contains(kAbcSha));
  auto info = store_->stat(kAbcSha);
  ASSERT_OK(info);
  EXPECT_EQ(info->size, 3u);
}

TEST_F(BlobStoreTest, PutFileCopiesAndDeduplicatesWithPutBytes) {
  std::string bytes = content((2 << 20) + 17);  // more than one copy buffer
  write_file(dir_.path("source.bin"), bytes);
  auto stored = store_->put_file(dir_.path("source.bin"));
  ASSERT_OK(stored);
  EXPECT_EQ(stored->sha256, sha256_hex(bytes));
  EXPECT_EQ(stored->size, bytes.size());
  EXPECT_EQ(read_file(blob_file(stored->sha256)), bytes);
  auto again = store_->put_bytes(bytes);
  ASSERT_OK(again);
  EXPECT_EQ(again->sha256, stored->sha256);
  EXPECT_EQ(files_under(dir_.path("store")).size(), 2u);  // LOCK and the one blob

  auto missing = store_->put_file(dir_.path("missing.bin"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::io_error);
  EXPECT_NE(missing.status().message().find(dir_.path("missing.bin")), std::string::npos);
}

TEST_F(BlobStoreTest, EmptyBlob) {
  auto stored = store_->put_bytes("");
  ASSERT_OK(stored);
  EXPECT_EQ(stored->sha256, kEmptySha);
  ASSERT_OK(store_->verify(kEmptySha));
}

TEST_F(BlobStoreTest, StatOfAMissingBlobIsNotFound) {
  auto info = store_->stat(kAbcSha);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), Code::not_found);
  EXPECT_NE(info.status().message().find(kAbcSha), std::string::npos);
  EXPECT_FALSE(store_->contains(kAbcSha));
  EXPECT_EQ(store_->open_reader(kAbcSha).status().code(), Code::not_found);
}

TEST_F(BlobStoreTest, UploadInChunks) {
  std::string bytes = content(10000);
  std::string sha = sha256_hex(bytes);
  for (uint64_t offset = 0; offset < 9000; offset += 1000) {
    auto progress = store_->write_chunk(sha, bytes.size(), offset, std::string_view(bytes).substr(offset, 1000), false);
    ASSERT_OK(progress);
    EXPECT_EQ(progress->received, offset + 1000);
    EXPECT_FALSE(progress->complete);
    EXPECT_FALSE(store_->contains(sha));
  }
  EXPECT_EQ(read_file(part_file(sha)), bytes.substr(0, 9000));
  // The chunk that reaches the stated size completes the upload, `last` or not.
  auto done = store_->write_chunk(sha, bytes.size(), 9000, std::string_view(bytes).substr(9000), false);
  ASSERT_OK(done);
  EXPECT_EQ(done->received, bytes.size());
  EXPECT_TRUE(done->complete);
  EXPECT_EQ(read_file(blob_file(sha)), bytes);
  EXPECT_FALSE(fs::exists(part_file(sha)));
}

TEST_F(BlobStoreTest, EmptyUploadCompletesAtOnce) {
  auto done = store_->write_chunk(kEmptySha, 0, 0, "", true);
  ASSERT_OK(done);
  EXPECT_TRUE(done->complete);
  EXPECT_TRUE(store_->contains(kEmptySha));
}

TEST_F(BlobStoreTest, UploadOfAStoredBlobCompletesAtOnce) {
  ASSERT_OK(store_->put_bytes("abc"));
  auto progress = store_->write_chunk(kAbcSha, 3, 0, "", false);
  ASSERT_OK(progress);
  EXPECT_TRUE(progress->complete);
  EXPECT_EQ(progress->received, 3u);
  EXPECT_FALSE(fs::exists(part_file(kAbcSha)));
}

TEST_F(BlobStoreTest, UploadResumesAfterReconnectToANewStore) {
  std::string bytes = content(5000, 7);
  std::string sha = sha256_hex(bytes);
  ASSERT_OK(store_->write_chunk(sha, bytes.size(), 0, std::string_view(bytes).substr(0, 2000), false));
  ASSERT_OK(store_->write_chunk(sha, bytes.size(), 2000, std::string_view(bytes).substr(2000, 1500), false));

  reopen();  // the node restarted: a new BlobStore on the same directory
  auto asked = store_->write_chunk(sha, bytes.size(), 0, "", false);
  ASSERT_OK(asked);
  EXPECT_EQ(asked->received, 3500u);
  EXPECT_FALSE(asked->complete);
  auto asked_last = store_->write_chunk(sha, bytes.size(), 0, "", true);  // `last` on a question
  ASSERT_OK(asked_last);
  EXPECT_EQ(asked_last->received, 3500u);
  auto done = upload(sha, bytes, 1000, asked->received);
  ASSERT_OK(done);
  EXPECT_TRUE(done->complete);
  ASSERT_OK(store_->verify(sha));
  EXPECT_EQ(read_file(blob_file(sha)), bytes);
}

TEST_F(BlobStoreTest, ChunkAtTheWrongOffsetIsRefused) {
  std::string bytes = content(3000);
  std::string sha = sha256_hex(bytes);
  ASSERT_OK(store_->write_chunk(sha, bytes.size(), 0, std::string_view(bytes).substr(0, 1000), false));
  for (uint64_t offset : {0ull, 500ull, 2000ull}) {
    auto wrong = store_->write_chunk(sha, bytes.size(), offset, std::string_view(bytes).substr(offset, 1000), false);
    ASSERT_FALSE(wrong.ok()) << offset;
    EXPECT_EQ(wrong.status().code(), Code::bad_request);
    EXPECT_NE(wrong.status().message().find("offset " + std::to_string(offset)), std::string::npos)
        << wrong.status().message();
    EXPECT_NE(wrong.status().message().find("holds 1000 bytes"), std::string::npos) << wrong.status().message();
  }
  auto asked = store_->write_chunk(sha, bytes.size(), 0, "", false);
  ASSERT_OK(asked);
  EXPECT_EQ(asked->received, 1000u);  // the refused chunks changed nothing
  ASSERT_OK(upload(sha, bytes, 1000, 1000));
  ASSERT_OK(store_->verify(sha));
}

TEST_F(BlobStoreTest, WrongFinalShaIsDataLossAndDiscardsTheUpload) {
  std::string bytes = content(3000);
  std::string claimed = sha256_hex("something else");
  ASSERT_OK(store_->write_chunk(claimed, bytes.size(), 0, std::string_view(bytes).substr(0, 2000), false));
  auto last = store_->write_chunk(claimed, bytes.size(), 2000, std::string_view(bytes).substr(2000), true);
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.status().code(), Code::data_loss);
  EXPECT_NE(last.status().message().find(claimed), std::string::npos);
  EXPECT_NE(last.status().message().find(sha256_hex(bytes)), std::string::npos);
  EXPECT_FALSE(fs::exists(part_file(claimed)));
  EXPECT_FALSE(store_->contains(claimed));
  EXPECT_FALSE(store_->contains(sha256_hex(bytes)));
  auto asked = store_->write_chunk(claimed, bytes.size(), 0, "", false);
  ASSERT_OK(asked);
  EXPECT_EQ(asked->received, 0u);  // the client starts again
}

TEST_F(BlobStoreTest, LastChunkBeforeTheStatedSizeIsDataLoss) {
  std::string bytes = content(3000);
  std::string sha = sha256_hex(bytes);
  auto early = store_->write_chunk(sha, bytes.size(), 0, std::string_view(bytes).substr(0, 1000), true);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), Code::data_loss);
  EXPECT_NE(early.status().message().find("ended at 1000 bytes"), std::string::npos) << early.status().message();
  EXPECT_FALSE(fs::exists(part_file(sha)));
}

TEST_F(BlobStoreTest, SizesAboveTheMaximumOrPastTheStatedSizeAreRefused) {
  BlobStoreOptions options;
  options.max_upload_bytes = 4096;
  reopen(options);
  std::string sha = sha256_hex("x");
  auto too_big = store_->write_chunk(sha, 4097, 0, "x", false);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), Code::bad_request);
  EXPECT_NE(too_big.status().message().find("4097"), std::string::npos);
  EXPECT_NE(too_big.status().message().find("4096"), std::string::npos);
  auto huge = store_->write_chunk(sha, std::numeric_limits<uint64_t>::max(), 0, "x", false);
  EXPECT_EQ(huge.status().code(), Code::bad_request);

  ASSERT_OK(store_->write_chunk(sha, 10, 0, "0123456", false));
  auto past = store_->write_chunk(sha, 10, 7, "7890", false);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), Code::bad_request);
  EXPECT_NE(past.status().message().find("passes the stated size 10"), std::string::npos) << past.status().message();
  // An offset that would overflow with the chunk's length is only a wrong offset.
  auto overflow = store_->write_chunk(sha, 10, std::numeric_limits<uint64_t>::max() - 1, "78", false);
  EXPECT_EQ(overflow.status().code(), Code::bad_request);
  // A stated size below what the store holds.
  auto smaller = store_->write_chunk(sha, 5, 7, "7", false);
  EXPECT_EQ(smaller.status().code(), Code::bad_request);
  EXPECT_EQ(read_file(part_file(sha)), "0123456");
}

TEST_F(BlobStoreTest, CorruptBlobIsReportedNeverServed) {
  std::string bytes = content(5000);
  auto stored = store_->put_bytes(bytes);
  ASSERT_OK(stored);
  const std::string sha = stored->sha256;
  flip_byte(blob_file(sha), 1234);

  auto reader = store_->open_reader(sha);
  ASSERT_OK(reader);
  auto first = (*reader)->read(2000);
  ASSERT_OK(first);  // corruption shows only once the whole blob was hashed
  EXPECT_EQ(first->size(), 2000u);
  ASSERT_OK((*reader)->read(2000));
  auto last = (*reader)->read(2000);
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.status().code(), Code::data_loss);
  EXPECT_NE(last.status().message().find(sha), std::string::npos);
  EXPECT_EQ((*reader)->read(2000).status().code(), Code::data_loss);  // sticky

  Status verified = store_->verify(sha);
  EXPECT_EQ(verified.code(), Code::data_loss);
  EXPECT_NE(verified.message().find(sha), std::string::npos);

  fs::create_directories(dir_.path("out"));
  Status exported = store_->export_to(sha, dir_.path("out/model.bin"));
  EXPECT_EQ(exported.code(), Code::data_loss);
  EXPECT_TRUE(fs::is_empty(dir_.path("out")));  // neither dest nor its temporary file
}

TEST_F(BlobStoreTest, TruncatedBlobIsDataLossAndAPutRepairsIt) {
  std::string bytes = content(5000);
  auto stored = store_->put_bytes(bytes);
  ASSERT_OK(stored);
  fs::resize_file(blob_file(stored->sha256), 4000);
  EXPECT_EQ(store_->verify(stored->sha256).code(), Code::data_loss);
  ASSERT_OK(store_->put_bytes(bytes));  // a blob file of the wrong size is replaced
  ASSERT_OK(store_->verify(stored->sha256));
}

TEST_F(BlobStoreTest, ExportWritesAVerifiedCopy) {
  std::string bytes = content((1 << 20) + 3);
  auto stored = store_->put_bytes(bytes);
  ASSERT_OK(stored);
  write_file(dir_.path("dest.bin"), "old contents");
  ASSERT_OK(store_->export_to(stored->sha256, dir_.path("dest.bin")));
  EXPECT_EQ(read_file(dir_.path("dest.bin")), bytes);
  EXPECT_EQ(store_->export_to(kAbcSha, dir_.path("other.bin")).code(), Code::not_found);
  EXPECT_FALSE(fs::exists(dir_.path("other.bin")));
}

TEST_F(BlobStoreTest, ReadsFromAnOffset) {
  std::string bytes = content(10000);
  auto stored = store_->put_bytes(bytes);
  ASSERT_OK(stored);
  for (uint64_t offset : {0ull, 1ull, 4000ull, 9999ull, 10000ull}) {
    auto reader = store_->open_reader(stored->sha256, offset);
    ASSERT_OK(reader);
    EXPECT_EQ((*reader)->size(), 10000u);
    EXPECT_EQ((*reader)->offset(), offset);
    auto rest = read_rest(**reader, 777);
    ASSERT_OK(rest);
    EXPECT_EQ(*rest, bytes.substr(offset)) << offset;
    EXPECT_EQ((*reader)->offset(), 10000u);
  }
  auto past = store_->open_reader(stored->sha256, 10001);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), Code::bad_request);
  auto reader = store_->open_reader(stored->sha256);
  ASSERT_OK(reader);
  EXPECT_EQ((*reader)->read(0).status().code(), Code::invalid_argument);
}

TEST_F(BlobStoreTest, ReadFromAnOffsetStillVerifiesThePrefix) {
  std::string bytes = content(10000);
  auto stored = store_->put_bytes(bytes);
  ASSERT_OK(stored);
  flip_byte(blob_file(stored->sha256), 10);
  auto reader = store_->open_reader(stored->sha256, 5000);
  ASSERT_OK(reader);
  EXPECT_EQ(read_rest(**reader, 1000).status().code(), Code::data_loss);
  auto at_end = store_->open_reader(stored->sha256, 10000);
  ASSERT_OK(at_end);
  EXPECT_EQ((*at_end)->read(1000).status().code(), Code::data_loss);
}

TEST_F(BlobStoreTest, GarbageCollectionRemovesOnlyUnreferencedBlobsAndOldUploads) {
  auto kept = store_->put_bytes("kept");
  auto dropped = store_->put_bytes("dropped");
  auto restored = store_->put_bytes("restored");
  ASSERT_OK(kept);
  ASSERT_OK(dropped);
  ASSERT_OK(restored);
  std::string old_upload = sha256_hex("old upload");
  ASSERT_OK(store_->write_chunk(old_upload, 10, 0, "old", false));

  clock_ += 2h;
  std::string fresh_upload = sha256_hex("fresh upload");
  ASSERT_OK(store_->write_chunk(fresh_upload, 12, 0, "fresh", false));
  ASSERT_OK(store_->put_bytes("restored"));  // stored again just now: within the grace
  auto young = store_->put_bytes("young");   // new and unreferenced: within the grace
  ASSERT_OK(young);

  std::vector<std::string> asked;
  auto stats = store_->collect_garbage(
      [&](const std::string& sha) {
        asked.push_back(sha);
        return sha == kept->sha256;
      },
      1h);
  ASSERT_OK(stats);
  EXPECT_EQ(stats->blobs_removed, 1u);
  EXPECT_EQ(stats->bytes_freed, std::string("dropped").size());
  EXPECT_EQ(stats->blobs_kept, 3u);
  EXPECT_EQ(stats->uploads_removed, 1u);
  EXPECT_EQ(asked.size(), 4u);

  EXPECT_TRUE(store_->contains(kept->sha256));
  EXPECT_FALSE(store_->contains(dropped->sha256));
  EXPECT_TRUE(store_->contains(restored->sha256));
  EXPECT_TRUE(store_->contains(young->sha256));
  EXPECT_FALSE(fs::exists(part_file(old_upload)));
  auto old_progress = store_->write_chunk(old_upload, 10, 0, "", false);
  ASSERT_OK(old_progress);
  EXPECT_EQ(old_progress->received, 0u);  // forgotten in memory too
  auto fresh_progress = store_->write_chunk(fresh_upload, 12, 0, "", false);
  ASSERT_OK(fresh_progress);
  EXPECT_EQ(fresh_progress->received, 5u);

  // Past the grace, nothing referenced: everything goes.
  clock_ += 2h;
  auto all = store_->collect_garbage([](const std::string&) { return false; }, 1h);
  ASSERT_OK(all);
  EXPECT_EQ(all->blobs_removed, 3u);
  EXPECT_EQ(all->uploads_removed, 1u);  // fresh_upload; old_upload's probe made no file
  int left = 0;
  ASSERT_OK(store_->for_each_blob([&](const BlobInfo&) { ++left; }));
  EXPECT_EQ(left, 0);
}

TEST_F(BlobStoreTest, ForEachBlobVisitsEveryBlobInOrder) {
  std::vector<std::string> shas;
  for (int i = 0; i < 20; ++i) {
    auto stored = store_->put_bytes("blob " + std::to_string(i));
    ASSERT_OK(stored);
    shas.push_back(stored->sha256);
  }
  std::sort(shas.begin(), shas.end());
  fs::create_directories(dir_.path("store") + "/blobs/zz");
  write_file(dir_.path("store") + "/blobs/zz/not-a-blob", "x");
  write_file(dir_.path("store") + "/blobs/" + shas[0].substr(0, 2) + "/not-a-blob", "x");
  std::vector<std::string> seen;
  ASSERT_OK(store_->for_each_blob([&](const BlobInfo& info) {
    seen.push_back(info.sha256);
    EXPECT_GT(info.size, 0u);
  }));
  EXPECT_EQ(seen, shas);
}

TEST_F(BlobStoreTest, BadShaIsBadRequestAndTouchesNothing) {
  ASSERT_OK(store_->put_bytes("abc"));
  auto before = files_under(dir_.path());
  std::string upper(kAbcSha);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string traversal = "../../../../../../../../../../../../../../../../../../../../../etc/passwd";
  std::string in_dir = "ba/../../" + std::string(kAbcSha).substr(0, 55);
  for (const std::string& bad : {std::string("../../etc/passwd"), traversal, in_dir, upper,
                                 std::string(kAbcSha.substr(0, 63)), std::string(), std::string(200, 'a')}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(store_->contains(bad));
    EXPECT_EQ(store_->stat(bad).status().code(), Code::bad_request);
    auto written = store_->write_chunk(bad, 3, 0, "abc", true);
    ASSERT_FALSE(written.ok());
    EXPECT_EQ(written.status().code(), Code::bad_request);
    EXPECT_NE(written.status().message().find("sha256"), std::string::npos);
    EXPECT_EQ(store_->open_reader(bad).status().code(), Code::bad_request);
    EXPECT_EQ(store_->verify(bad).code(), Code::bad_request);
    EXPECT_EQ(store_->export_to(bad, dir_.path("dest.bin")).code(), Code::bad_request);
  }
  EXPECT_EQ(files_under(dir_.path()), before);
}

TEST_F(BlobStoreTest, OpenRemovesLeftoverTempFilesAndKeepsUploads) {
  std::string sha = sha256_hex("resumable");
  ASSERT_OK(store_->write_chunk(sha, 9, 0, "resu", false));
  store_.reset();
  write_file(dir_.path("store") + "/tmp/put-leftover", "half a put");
  reopen();
  EXPECT_TRUE(fs::is_empty(dir_.path("store") + "/tmp"));
  EXPECT_EQ(read_file(part_file(sha)), "resu");
}

TEST_F(BlobStoreTest, OneStorePerDirectory) {
  auto second = BlobStore::open(dir_.path("store"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::unavailable);
  store_.reset();
  ASSERT_OK(BlobStore::open(dir_.path("store")));
}

TEST_F(BlobStoreTest, ConcurrentPutsAndUploads) {
  constexpr int kThreads = 8;
  std::string shared = content(100000, 99);
  std::string shared_sha = sha256_hex(shared);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string own = content(50000, t + 1);
      if (!store_->put_bytes(own).ok()) ++failures;
      if (!store_->put_bytes(shared).ok()) ++failures;
      // Every thread uploads the same other blob; each restarts from what the store holds.
      std::string up = content(30000, 1000);
      std::string up_sha = sha256_hex(up);
      for (int round = 0; round < 100; ++round) {
        auto asked = store_->write_chunk(up_sha, up.size(), 0, "", false);
        if (!asked.ok()) { ++failures; return; }
        if (asked->complete) return;
        uint64_t at = asked->received;
        auto sent = store_->write_chunk(up_sha, up.size(), at, std::string_view(up).substr(at, 4000), false);
        if (!sent.ok() && sent.status().code() != Code::bad_request) { ++failures; return; }
      }
      ++failures;  // never completed
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  int blobs = 0;
  ASSERT_OK(store_->for_each_blob([&](const BlobInfo& info) {
    ++blobs;
    EXPECT_TRUE(store_->verify(info.sha256).ok()) << info.sha256;
  }));
  EXPECT_EQ(blobs, kThreads + 2);
  EXPECT_TRUE(fs::is_empty(dir_.path("store") + "/tmp"));
  EXPECT_TRUE(fs::is_empty(dir_.path("store") + "/uploads"));
}

}  // namespace
}  // namespace cairn::storage
