// Helpers shared by the model/ tests: fixture paths, a scratch directory, reference tensors.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "model/safetensors.h"
#include "model/safetensors_torch.h"

#define CAIRN_MODEL_ASSERT_OK(expr)                                           \
  do {                                                                        \
    const ::cairn::Status cairn_status_ = (expr);                             \
    ASSERT_TRUE(cairn_status_.ok()) << #expr << ": " << cairn_status_.to_string(); \
  } while (0)

#define CAIRN_MODEL_CONCAT_INNER(a, b) a##b
#define CAIRN_MODEL_CONCAT(a, b) CAIRN_MODEL_CONCAT_INNER(a, b)
// `lhs = value of expr` (a Result<T>); fails the test and returns when it is an error.
#define CAIRN_MODEL_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  CAIRN_MODEL_ASSIGN_IMPL(CAIRN_MODEL_CONCAT(cairn_result_, __LINE__), lhs, expr)
#define CAIRN_MODEL_ASSIGN_IMPL(result, lhs, expr)                             \
  auto result = (expr);                                                        \
  ASSERT_TRUE(result.ok()) << #expr << ": " << result.status().to_string();    \
  lhs = std::move(result).value()

namespace cairn::testing {

inline const std::string kTinyLlama = CAIRN_SOURCE_DIR "/../shared/fixtures/hf/tiny-llama";
inline const std::string kTinyLlamaLora = CAIRN_SOURCE_DIR "/../shared/fixtures/hf/tiny-llama-lora";

// A fresh directory under the system temp dir, removed with the object.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("cairn-" + tag + "-" + std::to_string(::getpid()) + "-" + (test ? test->name() : "x"));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A tensor of a reference file, copied (so it outlives the reader); an undefined tensor (and a
// test failure) when it is missing.
inline at::Tensor reference_tensor(const std::string& file, const std::string& name) {
  auto reader = safetensors::Reader::open(file);
  EXPECT_TRUE(reader.ok()) << reader.status().to_string();
  if (!reader.ok()) return {};
  auto tensor = safetensors::read_tensor(*reader, name);
  EXPECT_TRUE(tensor.ok()) << tensor.status().to_string();
  return tensor.ok() ? tensor->clone() : at::Tensor();
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace cairn::testing
