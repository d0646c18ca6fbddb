// Parity of the forward pass with Hugging Face transformers 5.17 (tests/data/hf-reference, computed
// in float32 on an H200), on the CPU in float64, float32 and with bfloat16 weights; tolerances and
// their derivation in tests/hf_parity.h. The GPU suite (gpu_test.cc) runs the same comparison on
// CUDA.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "analysis/forward.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/hf_parity.h"
#include "tests/testing.h"

namespace factlens {
namespace {

constexpr double kFloat32Unit = 0x1p-24;

struct ReferenceCase {
  std::string model;
  int index;
};

std::string CaseName(const ::testing::TestParamInfo<ReferenceCase>& info) {
  std::string name = info.param.model + "_case" + std::to_string(info.param.index);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

class ForwardParityTest : public ::testing::TestWithParam<ReferenceCase> {};

TEST_P(ForwardParityTest, EveryForwardTensorMatchesHuggingFace) {
  for (const c10::ScalarType dtype : {at::kDouble, at::kFloat}) {
    SCOPED_TRACE(dtype == at::kDouble ? "float64 forward" : "float32 forward");
    std::printf(" %s forward:\n", dtype == at::kDouble ? "float64" : "float32");
    testing::CompareWithHuggingFace(GetParam().model, GetParam().index, dtype);
  }
}

// dtype=bfloat16 on CPU: bfloat16 weight matrices, float32 compute (weights.h, Precision).
TEST_P(ForwardParityTest, Bfloat16WeightsMatchHuggingFaceWithinTheBfloat16Bound) {
  std::printf(" bfloat16 weights, float32 forward:\n");
  testing::CompareWithHuggingFace(GetParam().model, GetParam().index, at::kBFloat16);
}

TEST_P(ForwardParityTest, ComponentsSumToFinalResidual) {
  const std::string dir = testing::SourcePath("tests/data/hf-reference/" + GetParam().model);
  const nlohmann::json reference = testing::ReadReferenceJson(GetParam().model);
  const std::vector<int64_t> ids =
      reference["cases"][GetParam().index]["input_ids"].get<std::vector<int64_t>>();
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ForwardTrace> trace = Forward(**model, ids);
  ASSERT_TRUE(trace.ok()) << trace.status();
  at::Tensor sum = trace->embedding.to(at::kDouble);
  // The residual stream is float32: each of the 2L additions x + attn, mid + ffn rounds once, by
  // at most 2^-24 of the sum it produces, so the exact (float64) sum of the captured components
  // differs from the final residual by at most 2^-24 × Σ over those sums of their max |value|.
  double rounding = 0;
  for (const LayerTrace& layer : trace->layers) {
    sum = sum + layer.attn_out.to(at::kDouble) + layer.ffn_out.to(at::kDouble);
    rounding += layer.residual_mid.abs().max().item<double>();
  }
  for (size_t l = 1; l < trace->layers.size(); ++l)
    rounding += trace->layers[l].residual_in.abs().max().item<double>();
  rounding += trace->final_residual.abs().max().item<double>();
  const double error = (sum - trace->final_residual.to(at::kDouble)).abs().max().item<double>();
  std::printf("  decomposition max|err| %.3e (bound %.3e)\n", error, rounding * kFloat32Unit);
  EXPECT_LE(error, rounding * kFloat32Unit);
}

INSTANTIATE_TEST_SUITE_P(
    HfReference, ForwardParityTest,
    ::testing::Values(ReferenceCase{"gpt2-tiny", 0}, ReferenceCase{"gpt2-tiny", 1},
                      ReferenceCase{"llama-tiny", 0}, ReferenceCase{"llama-tiny", 1},
                      ReferenceCase{"llama-gqa-tiny-bf16", 0},
                      ReferenceCase{"llama-gqa-tiny-bf16", 1}, ReferenceCase{"qwen2-tiny", 0},
                      ReferenceCase{"qwen2-tiny", 1}, ReferenceCase{"mistral-tiny", 0},
                      ReferenceCase{"mistral-tiny", 1}),
    CaseName);

}  // namespace
}  // namespace factlens
