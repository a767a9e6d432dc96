#include "model/nf4.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

namespace cairn {
namespace {

// Half the largest gap between adjacent NF4 codes (between -1 and -0.696): the worst-case
// rounding error of an absmax-normalized value.
float nf4_half_max_gap() {
  const auto& code = nf4_code_book();
  float gap = 0.0f;
  for (size_t i = 0; i + 1 < code.size(); ++i) gap = std::max(gap, code[i + 1] - code[i]);
  return gap / 2.0f;
}

// The same for the 8-bit dynamic code of double quantization.
float dynamic_half_max_gap() {
  const at::Tensor& code = detail::dynamic_code_8bit();
  return ((code.narrow(0, 1, 255) - code.narrow(0, 0, 255)).max().item<float>()) / 2.0f;
}

// Float rounding slack on top of the code book's bound, relative to the block's absmax: the
// reciprocal multiply when quantizing and the product when dequantizing each round once.
constexpr float kRoundingSlack = 1e-6f;

Nf4Tensor quantize_or_die(const at::Tensor& w, const Nf4Options& options = {}) {
  Result<Nf4Tensor> q = quantize_nf4(w, options);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return std::move(q).value();
}

// Each element's block absmax of the original weight, float32 [numel].
at::Tensor element_absmax(const at::Tensor& w, int64_t block_size) {
  at::Tensor flat = w.to(at::kFloat).reshape({-1});
  const int64_t numel = flat.numel();
  const int64_t blocks = (numel + block_size - 1) / block_size;
  at::Tensor padded = at::constant_pad_nd(flat, {0, blocks * block_size - numel});
  at::Tensor absmax = padded.view({blocks, block_size}).abs().amax(1);
  return absmax.repeat_interleave(block_size).narrow(0, 0, numel);
}

// Checks every element of `w` against its round trip through NF4 with `options`:
//   * |w - dequant| <= half_max_gap * absmax (+ the double-quantization error of that absmax);
//   * without double quantization, the chosen code is the nearest one (no better code exists).
void expect_round_trip_within_bound(const at::Tensor& w, const Nf4Options& options = {}) {
  SCOPED_TRACE("shape " + std::to_string(w.numel()) + " elements, dtype " +
               std::string(c10::toString(w.scalar_type())) +
               (options.double_quant ? ", double quant" : ""));
  const Nf4Tensor q = quantize_or_die(w, options);
  ASSERT_TRUE(validate_nf4(q).ok());
  EXPECT_EQ(q.shape, w.sizes().vec());
  EXPECT_EQ(q.dtype, w.scalar_type());
  EXPECT_EQ(q.numel(), w.numel());
  const at::Tensor restored = dequantize_nf4(q, at::kFloat);
  ASSERT_EQ(restored.sizes(), w.sizes());
  const at::Tensor x = w.to(at::kFloat).reshape({-1});
  const at::Tensor y = restored.reshape({-1});
  const at::Tensor absmax = element_absmax(w, options.block_size);
  const at::Tensor error = (x - y).abs();

  at::Tensor bound = absmax * (nf4_half_max_gap() + kRoundingSlack);
  if (options.double_quant) {
    const at::Tensor decoded = detail::nf4_block_absmax(q)
                                   .repeat_interleave(options.block_size)
                                   .narrow(0, 0, x.numel());
    const at::Tensor absmax_error = (decoded - absmax).abs();
    // The absmax's own error: half the dynamic code's largest gap times its group's scale.
    const float scale_max = q.absmax_scale.max().item<float>();
    EXPECT_LE(absmax_error.max().item<float>(),
              dynamic_half_max_gap() * scale_max + 1e-6f * absmax.max().item<float>() + 1e-7f);
    bound = bound + absmax_error + absmax * kRoundingSlack + 1e-7f;
  } else {
    EXPECT_TRUE(at::equal(detail::nf4_block_absmax(q).repeat_interleave(options.block_size)
                              .narrow(0, 0, x.numel()),
                          absmax));
    // Nearest code: the chosen code is no farther from x / absmax than any other code.
    const at::Tensor safe = at::where(absmax > 0, absmax, at::ones_like(absmax));
    const at::Tensor r = x / safe;
    const at::Tensor codes = at::tensor(
        at::ArrayRef<float>(nf4_code_book().data(), 16), at::TensorOptions().dtype(at::kFloat));
    const at::Tensor best = (r.unsqueeze(1) - codes.unsqueeze(0)).abs().amin(1);
    const at::Tensor chosen = (r - y / safe).abs();
    EXPECT_LE((chosen - best).max().item<float>(), 2e-6f);
  }
  const at::Tensor excess = error - bound;
  EXPECT_LE(excess.max().item<float>(), 0.0f)
      << "worst element " << excess.argmax().item<int64_t>() << ": error "
      << error[excess.argmax()].item<float>() << " > bound " << bound[excess.argmax()].item<float>();
  // Zeros stay exactly zero without double quantization (code 7 is exactly 0).
  if (!options.double_quant) {
    EXPECT_TRUE(at::equal(y.masked_select(x == 0), at::zeros({(x == 0).sum().item<int64_t>()})));
  }
}

std::vector<at::Tensor> adversarial_inputs() {
  std::vector<at::Tensor> out;
  at::manual_seed(7);
  out.push_back(at::zeros({4, 64}));
  at::Tensor outlier = at::randn({4, 64}) * 0.01;
  outlier[1][5] = 1e4f;  // one huge value: the rest of its block collapses to zero codes
  out.push_back(outlier);
  at::Tensor constant = at::full({3, 64}, 0.25f);
  constant[1].fill_(-3.5f);
  constant[2].fill_(0.0f);
  out.push_back(constant);
  out.push_back(-at::rand({1000}) - 0.5);  // negative only
  out.push_back(at::rand({1000}));         // positive only
  // Values exactly on the decision thresholds (ties go to the lower code).
  const auto& code = nf4_code_book();
  std::vector<float> ties = {1.0f};
  for (size_t i = 0; i + 1 < code.size(); ++i) ties.push_back((code[i] + code[i + 1]) / 2);
  out.push_back(at::tensor(ties, at::TensorOptions().dtype(at::kFloat)));
  out.push_back(at::tensor({1e-30f, -1e-38f, 3e38f, -3e38f}, at::TensorOptions().dtype(at::kFloat)));
  return out;
}

TEST(Nf4CodeBook, EqualsThePapersValues) {
  const std::array<float, 16> expected = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
      -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
      0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
      0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  EXPECT_EQ(nf4_code_book(), expected);
  EXPECT_NEAR(nf4_half_max_gap(), 0.1519036f, 1e-6f);
}

TEST(Nf4DynamicCode, IsBitsandbytesSignedDynamicMap) {
  const at::Tensor& code = detail::dynamic_code_8bit();
  ASSERT_EQ(code.numel(), 256);
  EXPECT_TRUE(at::equal(code, std::get<0>(code.sort())));
  EXPECT_EQ(code[255].item<float>(), 1.0f);
  EXPECT_EQ(code[127].item<float>(), 0.0f);
  // The largest negative magnitude is the mean of the last two of linspace(0.1, 1, 65).
  EXPECT_NEAR(code[0].item<float>(), -0.99296875f, 1e-6f);
  // The smallest positive value: 1e-6 * (0.1 + 1) / 2.
  EXPECT_NEAR(code[128].item<float>(), 5.5e-7f, 1e-12f);
  EXPECT_NEAR(dynamic_half_max_gap(), 0.0140625f / 2, 1e-6f);
}

TEST(Nf4Quantize, PacksTheFirstElementInTheHighNibbleAsBitsandbytes) {
  // Codes: 1.0 -> 15, 0.5 -> 12 (below the 12/13 threshold 0.5017), -0.3 -> 4, 0 -> 7.
  at::Tensor w = at::zeros({64});
  w[0] = 1.0f;
  w[1] = 0.5f;
  w[2] = -0.3f;
  const Nf4Tensor q = quantize_or_die(w);
  ASSERT_EQ(q.packed.numel(), 32);
  EXPECT_EQ(q.packed[0].item<uint8_t>(), 0xFC);
  EXPECT_EQ(q.packed[1].item<uint8_t>(), 0x47);
  EXPECT_EQ(q.packed[2].item<uint8_t>(), 0x77);
  EXPECT_EQ(q.absmax[0].item<float>(), 1.0f);
}

TEST(Nf4RoundTrip, NormalWeightsStayWithinTheCodeBookBound) {
  at::manual_seed(1);
  expect_round_trip_within_bound(at::randn({256, 384}) * 0.02);
  expect_round_trip_within_bound(at::randn({8, 8, 64}));
}

TEST(Nf4RoundTrip, UniformWeightsStayWithinTheCodeBookBound) {
  at::manual_seed(2);
  expect_round_trip_within_bound(at::rand({512, 96}) * 2 - 1);
}

TEST(Nf4RoundTrip, AdversarialInputsStayWithinTheCodeBookBound) {
  for (const at::Tensor& w : adversarial_inputs()) expect_round_trip_within_bound(w);
}

TEST(Nf4RoundTrip, ZeroBlocksAndConstantBlocksAreExact) {
  at::Tensor w = at::zeros({3, 64});
  w[1].fill_(-2.5f);
  const Nf4Tensor q = quantize_or_die(w);
  EXPECT_TRUE(at::equal(dequantize_nf4(q), w));
}

TEST(Nf4RoundTrip, SizesThatAreNotAMultipleOfTheBlock) {
  at::manual_seed(3);
  for (int64_t numel : {1, 2, 3, 63, 65, 127, 1001, 4097}) {
    expect_round_trip_within_bound(at::randn({numel}));
  }
  expect_round_trip_within_bound(at::randn({7, 13, 3}));
  expect_round_trip_within_bound(at::randn(std::vector<int64_t>{}));  // a scalar
  Nf4Options small;
  small.block_size = 2;
  expect_round_trip_within_bound(at::randn({9}), small);
  Nf4Options large;
  large.block_size = 4096;
  expect_round_trip_within_bound(at::randn({5000}), large);
}

TEST(Nf4RoundTrip, AnyFloatDtypeAndNonContiguousInput) {
  at::manual_seed(4);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kDouble}) {
    expect_round_trip_within_bound(at::randn({33, 64}).to(dtype));
  }
  const at::Tensor transposed = at::randn({64, 40}).t();
  ASSERT_FALSE(transposed.is_contiguous());
  const Nf4Tensor q = quantize_or_die(transposed);
  EXPECT_TRUE(at::equal(dequantize_nf4(q), dequantize_nf4(quantize_or_die(transposed.contiguous()))));
  expect_round_trip_within_bound(transposed);
}

TEST(Nf4RoundTrip, DequantizesToTheRequestedDtypeRoundingOnce) {
  at::manual_seed(5);
  const Nf4Tensor q = quantize_or_die(at::randn({100, 64}));
  const at::Tensor f = dequantize_nf4(q, at::kFloat);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kDouble}) {
    const at::Tensor d = dequantize_nf4(q, dtype);
    EXPECT_EQ(d.scalar_type(), dtype);
    EXPECT_TRUE(at::equal(d, f.to(dtype))) << dtype;
  }
}

TEST(Nf4DoubleQuant, RoundTripStaysWithinTheBoundPlusTheAbsmaxError) {
  Nf4Options options;
  options.double_quant = true;
  at::manual_seed(6);
  expect_round_trip_within_bound(at::randn({256, 384}) * 0.02, options);
  expect_round_trip_within_bound(at::rand({300, 64}) * 3 - 1, options);
  for (int64_t numel : {1, 65, 64 * 257 + 5}) expect_round_trip_within_bound(at::randn({numel}), options);
  for (const at::Tensor& w : adversarial_inputs()) expect_round_trip_within_bound(w, options);
  options.absmax_block_size = 3;
  expect_round_trip_within_bound(at::randn({20, 64}), options);
}

TEST(Nf4DoubleQuant, StoresLessThanPlainAbsmax) {
  at::manual_seed(8);
  const at::Tensor w = at::randn({512, 512});
  Nf4Options options;
  const Nf4Tensor plain = quantize_or_die(w, options);
  options.double_quant = true;
  const Nf4Tensor nested = quantize_or_die(w, options);
  EXPECT_TRUE(nested.double_quant());
  EXPECT_FALSE(plain.double_quant());
  EXPECT_EQ(nested.absmax.scalar_type(), at::kByte);
  EXPECT_EQ(nested.absmax_scale.numel(), (512 * 512 / 64 + 255) / 256);
  EXPECT_NEAR(nested.absmax_offset, plain.absmax.mean().item<float>(), 1e-6f);
  EXPECT_LT(nested.storage_bytes(), plain.storage_bytes());
  // 4096 blocks: 4 bytes each become 1 byte, plus 16 scales and the 1 KiB code.
  EXPECT_EQ(plain.storage_bytes() - nested.storage_bytes(), 4096u * 3 - 16u * 4 - 256u * 4);
}

TEST(Nf4Memory, A4096SquareWeightTakesAboutAnEighthOfFp32AndAQuarterOfBf16) {
  at::manual_seed(9);
  const at::Tensor w = at::randn({4096, 4096});
  const double fp32_bytes = static_cast<double>(w.storage().nbytes());
  const double bf16_bytes = static_cast<double>(w.to(at::kBFloat16).storage().nbytes());
  ASSERT_EQ(fp32_bytes, 4096.0 * 4096 * 4);
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    const Nf4Tensor q = quantize_or_die(w, options);
    const double held = static_cast<double>(q.storage_bytes());
    const double vs_fp32 = held / fp32_bytes;
    const double vs_bf16 = held / bf16_bytes;
    std::printf("[ nf4 memory ] 4096x4096%s: %.0f bytes held; %.4f of fp32, %.4f of bf16 "
                "(%.3f bits per weight)\n",
                double_quant ? " double quant" : "", held, vs_fp32, vs_bf16,
                held * 8 / static_cast<double>(w.numel()));
    RecordProperty(double_quant ? "ratio_vs_fp32_double_quant" : "ratio_vs_fp32",
                   std::to_string(vs_fp32));
    RecordProperty(double_quant ? "ratio_vs_bf16_double_quant" : "ratio_vs_bf16",
                   std::to_string(vs_bf16));
    EXPECT_GE(vs_fp32, 0.12);
    EXPECT_LE(vs_fp32, 0.16);
    EXPECT_GE(vs_bf16, 0.24);
    EXPECT_LE(vs_bf16, 0.32);
  }
}

TEST(Nf4Dequantize, FusedKernelEqualsTheAtenReference) {
  at::manual_seed(10);
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    for (int64_t numel : {1, 64, 100, 64 * 1000 + 31}) {
      const Nf4Tensor q = quantize_or_die(at::randn({numel}), options);
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
        EXPECT_TRUE(at::equal(dequantize_nf4(q, dtype), detail::dequantize_nf4_reference(q, dtype)))
            << numel << " " << dtype << " " << double_quant;
      }
    }
  }
}

TEST(Nf4Quantize, RejectsBadInputsAndOptions) {
  auto expect_invalid = [](const at::Tensor& w, const Nf4Options& options, const char* what) {
    Result<Nf4Tensor> q = quantize_nf4(w, options);
    ASSERT_FALSE(q.ok()) << what;
    EXPECT_EQ(q.status().code(), Code::invalid_argument) << what;
    EXPECT_NE(q.status().message().find("quantize_nf4"), std::string::npos) << what;
  };
  const Nf4Options defaults;
  expect_invalid(at::Tensor(), defaults, "undefined");
  expect_invalid(at::ones({64}, at::kInt), defaults, "integer");
  expect_invalid(at::ones({0, 64}), defaults, "empty");
  at::Tensor nan = at::ones({130});
  nan[129] = std::nanf("");
  expect_invalid(nan, defaults, "nan");
  at::Tensor inf = at::ones({130}, at::kBFloat16);
  inf[3] = -INFINITY;
  expect_invalid(inf, defaults, "inf");
  Nf4Options bad;
  bad.block_size = 0;
  expect_invalid(at::ones({64}), bad, "block 0");
  bad.block_size = 63;
  expect_invalid(at::ones({64}), bad, "odd block");
  bad = {};
  bad.absmax_block_size = 0;
  expect_invalid(at::ones({64}), bad, "absmax block 0");
}

TEST(Nf4Validate, NamesTheFieldThatDisagrees) {
  Nf4Tensor q = quantize_or_die(at::randn({10, 64}));
  EXPECT_TRUE(validate_nf4(q).ok());
  Nf4Tensor truncated = q;
  truncated.packed = q.packed.narrow(0, 0, 10).contiguous();
  const Status status = validate_nf4(truncated);
  EXPECT_EQ(status.code(), Code::invalid_argument);
  EXPECT_NE(status.message().find("packed"), std::string::npos) << status.to_string();
  EXPECT_THROW(dequantize_nf4(truncated), c10::Error);
}

TEST(Nf4Linear, EqualsLinearOnTheDequantizedWeightExactly) {
  at::manual_seed(11);
  const at::Tensor w = at::randn({48, 128}) * 0.05;
  const at::Tensor bias = at::randn({48});
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    const Nf4Tensor q = quantize_or_die(w, options);
    const at::Tensor dense = dequantize_nf4(q);
    const at::Tensor x2 = at::randn({5, 128});
    const at::Tensor x3 = at::randn({2, 7, 128});
    EXPECT_TRUE(at::equal(nf4_linear(x2, q), at::linear(x2, dense)));
    EXPECT_TRUE(at::equal(nf4_linear(x2, q, bias), at::linear(x2, dense, bias)));
    EXPECT_TRUE(at::equal(nf4_linear(x3, q, bias), at::linear(x3, dense, bias)));
    // bf16 activations: the weight is cast to bf16 as bitsandbytes does.
    const at::Tensor xb = x3.to(at::kBFloat16);
    const at::Tensor bb = bias.to(at::kBFloat16);
    const at::Tensor yb = nf4_linear(xb, q, bb);
    EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(yb, at::linear(xb, dense.to(at::kBFloat16), bb)));
  }
  // A bf16 original is rounded to bf16 first, then cast to the activations' dtype.
  const Nf4Tensor qb = quantize_or_die(w.to(at::kBFloat16));
  const at::Tensor x = at::randn({3, 128});
  EXPECT_TRUE(at::equal(nf4_linear(x, qb), at::linear(x, dequantize_nf4(qb, at::kBFloat16).to(at::kFloat))));
}

TEST(Nf4Linear, IsCloseToTheDenseFp32Linear) {
  at::manual_seed(12);
  const at::Tensor w = at::randn({256, 512}) * 0.02;
  const at::Tensor bias = at::randn({256}) * 0.1;
  const at::Tensor x = at::randn({16, 512});
  const at::Tensor reference = at::linear(x, w, bias);
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    const Nf4Tensor q = quantize_or_die(w, options);
    const at::Tensor y = nf4_linear(x, q, bias);
    const float weight_error = ((dequantize_nf4(q) - w).norm() / w.norm()).item<float>();
    const float output_error = ((y - reference).norm() / reference.norm()).item<float>();
    std::printf("[ nf4 error ] %s: relative weight error %.4f, relative output error %.4f\n",
                double_quant ? "double quant" : "plain", weight_error, output_error);
    // NF4 on normal weights: about 10% relative RMS error per weight.
    EXPECT_LT(weight_error, 0.12f);
    EXPECT_LT(output_error, 0.12f);
    const at::Tensor yb = nf4_linear(x.to(at::kBFloat16), q, bias.to(at::kBFloat16));
    EXPECT_LT(((yb.to(at::kFloat) - reference).norm() / reference.norm()).item<float>(), 0.12f);
  }
}

TEST(Nf4Linear, BackwardMatchesTheDenseWeightsGradients) {
  at::manual_seed(13);
  const Nf4Tensor q = quantize_or_die(at::randn({32, 64}));
  const at::Tensor dense = dequantize_nf4(q);
  const at::Tensor x = at::randn({2, 5, 64}).requires_grad_();
  const at::Tensor bias = at::randn({32}).requires_grad_();
  const at::Tensor upstream = at::randn({2, 5, 32});
  const at::Tensor y = nf4_linear(x, q, bias);
  EXPECT_TRUE(at::equal(y.detach(), at::linear(x.detach(), dense, bias.detach())));
  y.backward(upstream);
  const at::Tensor x_ref = x.detach().clone().requires_grad_();
  const at::Tensor bias_ref = bias.detach().clone().requires_grad_();
  at::linear(x_ref, dense, bias_ref).backward(upstream);
  EXPECT_TRUE(at::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(bias.grad(), bias_ref.grad(), 1e-5, 1e-6));
  // Without a bias, and with only x requiring grad.
  const at::Tensor x2 = at::randn({4, 64}).requires_grad_();
  nf4_linear(x2, q).sum().backward();
  EXPECT_TRUE(at::allclose(x2.grad(), dense.sum(0).expand({4, 64}), 1e-5, 1e-6));
}

TEST(Nf4Linear, RejectsAMismatchedInput) {
  const Nf4Tensor q = quantize_or_die(at::randn({8, 64}));
  EXPECT_THROW(nf4_linear(at::randn({2, 63}), q), c10::Error);
  EXPECT_THROW(nf4_linear(at::randn({2, 64}), q, at::randn({7})), c10::Error);
  const Nf4Tensor q3 = quantize_or_die(at::randn({2, 8, 64}));
  EXPECT_THROW(nf4_linear(at::randn({2, 64}), q3), c10::Error);
}

TEST(Nf4Serialization, WritesBitsandbytesNamesAndReadsThemBack) {
  at::manual_seed(14);
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    const Nf4Tensor q = quantize_or_die(at::randn({33, 65}).to(at::kBFloat16), options);
    Result<NamedTensors> written = nf4_to_named_tensors(q, name);
    ASSERT_TRUE(written.ok()) << written.status().to_string();
    const NamedTensors& named = *written;
    std::vector<std::string> keys;
    for (const auto& [key, tensor] : named) keys.push_back(key);
    std::vector<std::string> expected = {name, name + ".absmax", name + ".quant_map",
                                         name + ".quant_state.bitsandbytes__nf4"};
    if (double_quant) {
      expected.push_back(name + ".nested_absmax");
      expected.push_back(name + ".nested_quant_map");
    }
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(keys, expected);
    EXPECT_EQ(named.at(name).sizes(), (std::vector<int64_t>{(33 * 65 + 1) / 2, 1}));
    EXPECT_EQ(named.at(name).scalar_type(), at::kByte);
    const at::Tensor state = named.at(name + ".quant_state.bitsandbytes__nf4");
    const std::string json(reinterpret_cast<const char*>(state.data_ptr<uint8_t>()), state.numel());
    const std::string head = R"({"quant_type":"nf4","blocksize":64,"dtype":"bfloat16","shape":[33,65])";
    EXPECT_EQ(json.substr(0, head.size()), head) << json;
    EXPECT_EQ(json.find("nested_offset") != std::string::npos, double_quant) << json;

    Result<Nf4Tensor> back = nf4_from_named_tensors(named, name);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->shape, q.shape);
    EXPECT_EQ(back->dtype, at::kBFloat16);
    EXPECT_EQ(back->double_quant(), double_quant);
    EXPECT_EQ(back->absmax_offset, q.absmax_offset);
    EXPECT_TRUE(at::equal(dequantize_nf4(*back), dequantize_nf4(q)));
    // The copy owns its memory.
    EXPECT_NE(back->absmax.data_ptr(), q.absmax.data_ptr());
  }
}

TEST(Nf4Serialization, ReportsMissingAndMalformedEntries) {
  const std::string name = "w";
  const Nf4Tensor q = quantize_or_die(at::randn({4, 64}));
  Nf4Tensor broken = q;
  broken.absmax = at::ones({3});
  EXPECT_EQ(nf4_to_named_tensors(broken, name).status().code(), Code::invalid_argument);
  const NamedTensors good = nf4_to_named_tensors(q, name).value();
  auto expect_code = [&](NamedTensors tensors, Code code, const char* what) {
    Result<Nf4Tensor> q = nf4_from_named_tensors(tensors, name);
    ASSERT_FALSE(q.ok()) << what;
    EXPECT_EQ(q.status().code(), code) << what << ": " << q.status().to_string();
  };
  auto with = [&](const std::string& key, const at::Tensor& value) {
    NamedTensors copy = good;
    copy[key] = value;
    return copy;
  };
  auto without = [&](const std::string& key) {
    NamedTensors copy = good;
    copy.erase(key);
    return copy;
  };
  auto json = [](const std::string& text) {
    return at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())},
                         at::kByte)
        .clone();
  };
  const std::string state = name + ".quant_state.bitsandbytes__nf4";
  expect_code(without(state), Code::not_found, "no quant state");
  expect_code(without(name + ".absmax"), Code::not_found, "no absmax");
  expect_code(without(name), Code::not_found, "no packed");
  expect_code(with(state, json("{not json")), Code::invalid_argument, "bad json");
  expect_code(with(state, json(R"({"quant_type":"fp4","blocksize":64,"dtype":"float32","shape":[4,64]})")),
              Code::invalid_argument, "fp4");
  expect_code(with(state, json(R"({"quant_type":"nf4","blocksize":64,"dtype":"float32","shape":[4,65]})")),
              Code::invalid_argument, "shape disagrees with packed");
  expect_code(with(state, json(R"({"quant_type":"nf4","blocksize":64,"dtype":"int8","shape":[4,64]})")),
              Code::invalid_argument, "dtype");
  expect_code(with(name + ".quant_map", at::linspace(-1, 1, 16)), Code::invalid_argument, "fp4 map");
  expect_code(with(name + ".absmax", at::ones({3})), Code::invalid_argument, "absmax size");
  expect_code(with(name, at::zeros({128, 1}, at::kFloat)), Code::invalid_argument, "packed dtype");
}

// Dequantization speed, fused kernel against the plain-ATen reference. Not a check (no timing
// assertions): run with --gtest_also_run_disabled_tests --gtest_filter='*Speed*'.
TEST(Nf4Speed, DISABLED_DequantizeAndLinear) {
  at::manual_seed(15);
  const int64_t rows = 4096, cols = 4096;
  const at::Tensor w = at::randn({rows, cols});
  // CPU time of this process per call (robust on a shared, loaded machine), best of 5 rounds.
  auto time_ms = [](const std::function<void()>& f) {
    auto cpu_ms = [] {
      timespec ts{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    };
    f();  // warm up
    double best = 1e30;
    for (int round = 0; round < 5; ++round) {
      const int reps = 4;
      const double start = cpu_ms();
      for (int i = 0; i < reps; ++i) f();
      best = std::min(best, (cpu_ms() - start) / reps);
    }
    return best;
  };
  std::printf("threads: %d\n", at::get_num_threads());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const double floor = time_ms([&] { at::empty({rows, cols}, dtype).zero_(); });
    std::printf("floor: allocate and zero a fresh 4096x4096 %s: %.2f ms\n", c10::toString(dtype),
                floor);
  }
  for (bool double_quant : {false, true}) {
    Nf4Options options;
    options.double_quant = double_quant;
    const Nf4Tensor q = quantize_or_die(w, options);
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const double fused = time_ms([&] { dequantize_nf4(q, dtype); });
      const double reference = time_ms([&] { detail::dequantize_nf4_reference(q, dtype); });
      // The fastest ATen formulation found: one gather per byte from a 256-entry table of code
      // pairs, then one multiply by the block's absmax.
      const at::Tensor codes = at::tensor(at::ArrayRef<float>(nf4_code_book().data(), 16));
      const at::Tensor byte = at::arange(256, at::kLong);
      const at::Tensor pairs = at::stack({codes.index_select(0, byte.div(16, "floor")),
                                          codes.index_select(0, byte.remainder(16))}, 1);
      const double pair_lut = time_ms([&] {
        const at::Tensor absmax = detail::nf4_block_absmax(q);
        at::Tensor v = pairs.index_select(0, q.packed.to(at::kInt)).view({absmax.numel(), -1});
        v.mul_(absmax.unsqueeze(1)).view({rows, cols}).to(dtype);
      });
      const double melem = static_cast<double>(rows * cols) / 1e6;  // per ms: Gelem/s
      std::printf("dequantize 4096x4096 -> %s%s: fused %.2f ms (%.2f Gelem/s); aten reference "
                  "%.2f ms (%.1fx slower); aten pair table %.2f ms (%.1fx slower)\n",
                  c10::toString(dtype), double_quant ? " (double quant)" : "", fused, melem / fused,
                  reference, reference / fused, pair_lut, pair_lut / fused);
    }
  }
  const double quantize = time_ms([&] { (void)quantize_nf4(w); });
  std::printf("quantize 4096x4096 fp32: %.2f ms\n", quantize);
  const Nf4Tensor q = quantize_or_die(w);
  for (int64_t tokens : {1, 64}) {
    const at::Tensor x = at::randn({tokens, cols});
    const double dense = time_ms([&] { at::linear(x, w); });
    const double nf4 = time_ms([&] { nf4_linear(x, q); });
    std::printf("linear [%lld x 4096] @ [4096 x 4096]^T: dense fp32 %.2f ms, nf4 %.2f ms\n",
                static_cast<long long>(tokens), dense, nf4);
  }
}

}  // namespace
}  // namespace cairn
