#include "model/safetensors_torch.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace cairn::safetensors {
namespace {

namespace fs = std::filesystem;

class SafetensorsTorchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cairn-safetensors-torch-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(SafetensorsTorchTest, EveryCommonDtypeRoundTripsBitForBit) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", at::randn({3, 2}, at::kDouble)},
      {"f32", at::randn({4, 5})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 2}).to(at::kBFloat16)},
      {"i64", at::arange(-5, 5, at::kLong)},
      {"i32", at::arange(0, 6, at::kInt).reshape({2, 3})},
      {"i16", at::arange(-3, 3, at::kShort)},
      {"i8", at::arange(-3, 3, at::kChar)},
      {"u8", at::arange(0, 9, at::kByte)},
      {"bool", at::rand({5}) > 0.5},
      {"scalar", at::scalar_tensor(3.5)},
      // Non-contiguous: written as its logical contents.
      {"transposed", at::randn({3, 4}).t()},
  };
  std::string path = (dir_ / "all.safetensors").string();
  Status status = write_tensors(path, tensors, {{"format", "pt"}});
  ASSERT_TRUE(status.ok()) << status.to_string();
  auto reader = Reader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  for (const auto& [name, expected] : tensors) {
    auto actual = read_tensor(*reader, name);
    ASSERT_TRUE(actual.ok()) << actual.status().to_string();
    EXPECT_EQ(actual->scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(actual->sizes(), expected.sizes()) << name;
    EXPECT_TRUE(at::equal(*actual, expected)) << name;
  }
}

TEST_F(SafetensorsTorchTest, ViewSharesTheMappingAndOutlivesTheReader) {
  std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(write_tensors(path, {{"x", at::arange(0, 4, at::kFloat)}}).ok());
  at::Tensor view, again;
  {
    auto reader = Reader::open(path);
    ASSERT_TRUE(reader.ok());
    view = *read_tensor(*reader, "x");
    EXPECT_EQ(view.data_ptr(), static_cast<void*>(reader->data(*reader->find("x"))));
  }
  view.add_(1);  // copy-on-write: the file keeps its contents
  EXPECT_TRUE(at::equal(view, at::arange(1, 5, at::kFloat)));
  auto reader = Reader::open(path);
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE(at::equal(*read_tensor(*reader, "x"), at::arange(0, 4, at::kFloat)));
}

TEST_F(SafetensorsTorchTest, ErrorsNameFileAndTensor) {
  std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(write_tensors(path, {{"x", at::zeros({1})}}).ok());
  auto reader = Reader::open(path);
  ASSERT_TRUE(reader.ok());
  auto missing = read_tensor(*reader, "y");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::not_found);
  EXPECT_NE(missing.status().message().find("\"y\""), std::string::npos);

  Status complex = write_tensors(path, {{"c", at::zeros({2}, at::kComplexFloat)}});
  EXPECT_EQ(complex.code(), Code::invalid_argument);
  EXPECT_NE(complex.message().find("\"c\""), std::string::npos) << complex.to_string();
}

}  // namespace
}  // namespace cairn::safetensors
