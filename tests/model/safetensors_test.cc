#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace cairn::safetensors {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("cairn-safetensors-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a file made of an 8-byte length, `header` and `data`, as a corrupt writer might.
  std::string craft(const std::string& header, const std::string& data, uint64_t declared_length) {
    std::string path = (dir_ / "crafted.safetensors").string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&declared_length), 8);
    out << header << data;
    return path;
  }
  std::string craft(const std::string& header, const std::string& data) {
    return craft(header, data, header.size());
  }

  // Opens a crafted file and expects `code` with every fragment in the message.
  void expect_error(const std::string& path, Code code, const std::vector<std::string>& fragments) {
    auto reader = Reader::open(path);
    ASSERT_FALSE(reader.ok()) << "opened a bad file";
    EXPECT_EQ(reader.status().code(), code) << reader.status().to_string();
    EXPECT_NE(reader.status().message().find(path), std::string::npos) << reader.status().to_string();
    for (const auto& fragment : fragments) {
      EXPECT_NE(reader.status().message().find(fragment), std::string::npos)
          << "missing \"" << fragment << "\" in " << reader.status().to_string();
    }
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripKeepsEveryDtypeShapeAndByte) {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x4040};
  std::vector<int64_t> i64 = {-1, 1LL << 40};
  std::vector<uint8_t> flags = {1, 0, 1};
  std::vector<int8_t> i8 = {-3};
  std::string path = (dir_ / "model.safetensors").string();
  Status status = write_file(path,
                             {{"b.weight", Dtype::bf16, {3}, bf16.data()},
                              {"a.weight", Dtype::f32, {2, 3}, f32.data()},
                              {"ids", Dtype::i64, {2}, i64.data()},
                              {"mask", Dtype::boolean, {3}, flags.data()},
                              {"scalar", Dtype::i8, {}, i8.data()},
                              {"empty", Dtype::f16, {0, 4}, nullptr}},
                             {{"format", "pt"}});
  ASSERT_TRUE(status.ok()) << status.to_string();
  EXPECT_FALSE(fs::exists(path + ".tmp-" + std::to_string(::getpid())));

  // The reference layout: header length is a multiple of 8, tensors 8-byte ones first.
  std::ifstream in(path, std::ios::binary);
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  EXPECT_EQ(header_size % 8, 0u);

  auto reader = Reader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  EXPECT_EQ(reader->metadata().at("format"), "pt");
  ASSERT_EQ(reader->tensors().size(), 6u);
  EXPECT_EQ(reader->tensors()[0].name, "a.weight");  // sorted by name
  EXPECT_EQ(reader->find("ids")->offset, 0u);        // largest element size first

  const TensorInfo* a = reader->find("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, Dtype::f32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->numel(), 6);
  EXPECT_EQ(std::memcmp(reader->data(*a), f32.data(), a->size), 0);
  const TensorInfo* b = reader->find("b.weight");
  EXPECT_EQ(b->dtype, Dtype::bf16);
  EXPECT_EQ(std::memcmp(reader->data(*b), bf16.data(), b->size), 0);
  EXPECT_EQ(std::memcmp(reader->data(*reader->find("ids")), i64.data(), 16), 0);
  EXPECT_EQ(reader->find("mask")->dtype, Dtype::boolean);
  EXPECT_EQ(reader->find("scalar")->shape.size(), 0u);
  EXPECT_EQ(reader->find("scalar")->numel(), 1);
  EXPECT_EQ(reader->find("empty")->size, 0u);
  EXPECT_EQ(reader->find("missing"), nullptr);
  for (const auto& t : reader->tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(reader->data(t)) % dtype_size(t.dtype), 0u) << t.name;
  }
}

TEST_F(SafetensorsTest, MappingOutlivesReaderThroughKeepAlive) {
  std::vector<float> values = {4.0f, 5.0f};
  std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(write_file(path, {{"x", Dtype::f32, {2}, values.data()}}).ok());
  std::shared_ptr<void> keep;
  const float* data = nullptr;
  {
    auto reader = Reader::open(path);
    ASSERT_TRUE(reader.ok());
    keep = reader->keep_alive();
    data = reinterpret_cast<const float*>(reader->data(*reader->find("x")));
  }
  fs::remove(path);
  EXPECT_EQ(data[1], 5.0f);
}

TEST_F(SafetensorsTest, WritesThroughTheMappingNeverReachTheFile) {
  std::vector<float> values = {1.0f};
  std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(write_file(path, {{"x", Dtype::f32, {1}, values.data()}}).ok());
  {
    auto reader = Reader::open(path);
    ASSERT_TRUE(reader.ok());
    float nine = 9.0f;
    std::memcpy(reader->data(*reader->find("x")), &nine, 4);
  }
  auto again = Reader::open(path);
  ASSERT_TRUE(again.ok());
  float value = 0;
  std::memcpy(&value, again->data(*again->find("x")), 4);
  EXPECT_EQ(value, 1.0f);
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  float x = 0;
  std::string path = (dir_ / "bad.safetensors").string();
  EXPECT_EQ(write_file(path, {{"", Dtype::f32, {1}, &x}}).code(), Code::invalid_argument);
  EXPECT_EQ(write_file(path, {{"__metadata__", Dtype::f32, {1}, &x}}).code(), Code::invalid_argument);
  Status dup = write_file(path, {{"a", Dtype::f32, {1}, &x}, {"a", Dtype::i8, {1}, &x}});
  EXPECT_EQ(dup.code(), Code::invalid_argument);
  EXPECT_NE(dup.message().find("\"a\" appears twice"), std::string::npos) << dup.to_string();
  EXPECT_EQ(write_file(path, {{"a", Dtype::f32, {-1}, &x}}).code(), Code::invalid_argument);
  EXPECT_EQ(write_file(path, {{"a", Dtype::f32, {1}, nullptr}}).code(), Code::invalid_argument);
  EXPECT_FALSE(fs::exists(path));
  Status io = write_file((dir_ / "no-such-dir" / "x.safetensors").string(), {{"a", Dtype::f32, {1}, &x}});
  EXPECT_EQ(io.code(), Code::io_error);
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto reader = Reader::open((dir_ / "absent.safetensors").string());
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), Code::not_found);
}

TEST_F(SafetensorsTest, FileShorterThanTheLengthPrefixIsTruncated) {
  std::string path = (dir_ / "short.safetensors").string();
  std::ofstream(path, std::ios::binary) << "abc";
  expect_error(path, Code::data_loss, {"truncated"});
}

TEST_F(SafetensorsTest, HeaderLengthPastTheEndIsTruncated) {
  std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  expect_error(craft(header, "", header.size() + 100), Code::data_loss, {"truncated", "header length"});
}

TEST_F(SafetensorsTest, HugeHeaderLengthIsRejected) {
  expect_error(craft("{}", "", uint64_t{1} << 62), Code::data_loss, {"exceeds the limit"});
}

TEST_F(SafetensorsTest, HeaderThatIsNotJsonIsCorrupt) {
  expect_error(craft("{\"a\": [", ""), Code::data_loss, {"not valid JSON"});
  expect_error(craft("[1, 2]  ", ""), Code::data_loss, {"not a JSON object"});
}

TEST_F(SafetensorsTest, UnknownDtypeIsUnsupported) {
  std::string header = R"({"w":{"dtype":"F4_MAGIC","shape":[2],"data_offsets":[0,2]}})";
  expect_error(craft(header, "xx"), Code::invalid_argument, {"\"w\"", "unknown dtype \"F4_MAGIC\""});
}

TEST_F(SafetensorsTest, ShapeThatDisagreesWithTheByteRangeIsCorrupt) {
  std::string header = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})";
  expect_error(craft(header, std::string(20, '\0')), Code::data_loss, {"\"w\"", "needs 24 bytes", "hold 20"});
}

TEST_F(SafetensorsTest, OverflowingShapeIsCorrupt) {
  std::string header =
      R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})";
  expect_error(craft(header, std::string(8, '\0')), Code::data_loss, {"\"w\"", "overflows"});
}

TEST_F(SafetensorsTest, NegativeOrMalformedFieldsAreCorrupt) {
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')),
               Code::data_loss, {"\"w\"", "shape"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", std::string(4, '\0')),
               Code::data_loss, {"\"w\"", "end before they begin"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')),
               Code::data_loss, {"\"w\"", "data_offsets"});
  expect_error(craft(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')), Code::data_loss,
               {"\"w\"", "dtype"});
  expect_error(craft(R"({"w":7})", ""), Code::data_loss, {"\"w\"", "not an object"});
  expect_error(craft(R"({"__metadata__":{"format":1}})", ""), Code::data_loss, {"__metadata__", "format"});
}

TEST_F(SafetensorsTest, OffsetsPastTheDataSectionAreCorrupt) {
  // The declared range fits the shape but the file stops early: a truncated data section.
  std::string header = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  expect_error(craft(header, std::string(10, '\0')), Code::data_loss, {"\"w\"", "run past the data section"});
  std::string shifted = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[100,104]}})";
  expect_error(craft(shifted, std::string(8, '\0')), Code::data_loss, {"\"w\"", "[100, 104]"});
}

TEST_F(SafetensorsTest, OverlappingRangesAreCorrupt) {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_error(craft(header, std::string(12, '\0')), Code::data_loss, {"\"b\"", "overlaps", "\"a\""});
}

TEST_F(SafetensorsTest, TouchingRangesAndGapsAreAccepted) {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[12,14]},"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
  auto reader = Reader::open(craft(header, std::string(14, '\0')));
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  EXPECT_EQ(reader->tensors().size(), 3u);
}

TEST_F(SafetensorsTest, ReadsTheReferenceFixture) {
  auto reader = Reader::open(CAIRN_SOURCE_DIR "/../shared/fixtures/hf/tiny-llama/model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  const TensorInfo* q = reader->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, Dtype::f32);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(reader->metadata().at("format"), "pt");
}

TEST(SafetensorsDtypeTest, NamesRoundTrip) {
  for (Dtype d : {Dtype::f64, Dtype::f32, Dtype::f16, Dtype::bf16, Dtype::i64, Dtype::i32, Dtype::i16, Dtype::i8,
                  Dtype::u8, Dtype::boolean, Dtype::f8_e4m3, Dtype::f8_e5m2}) {
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  }
  EXPECT_EQ(dtype_size(Dtype::bf16), 2u);
  EXPECT_EQ(dtype_size(Dtype::boolean), 1u);
  EXPECT_FALSE(dtype_from_name("f32").has_value());
}

}  // namespace
}  // namespace cairn::safetensors
