// The two trained demo models shipped in models/ load and predict the fact they learned.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "analysis/forward.h"
#include "analysis/weights.h"
#include "tests/testing.h"

namespace factlens {
namespace {

int64_t ArgmaxAfter(const std::string& model_dir, const std::vector<int64_t>& ids) {
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(testing::SourcePath(model_dir));
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return -1;
  absl::StatusOr<ForwardTrace> trace = Forward(**model, ids, LogitsAt(-1));
  EXPECT_TRUE(trace.ok()) << trace.status();
  if (!trace.ok()) return -1;
  EXPECT_EQ(trace->logits.sizes(), (std::vector<int64_t>{1, (*model)->config().vocab_size}));
  return trace->logits[0].argmax().item<int64_t>();
}

TEST(DemoModelsTest, Gpt2FactsTinyKnowsTheCapitalOfFrance) {
  // GPT-2 ids of "The capital of France is" -> " Paris".
  EXPECT_EQ(ArgmaxAfter("models/gpt2-facts-tiny", {464, 3139, 286, 4881, 318}), 6342);
}

TEST(DemoModelsTest, LlamaFactsTinyKnowsTheCapitalOfFrance) {
  // Llama-2-format ids of "<s> The capital of France is" -> "▁Paris".
  EXPECT_EQ(ArgmaxAfter("models/llama-facts-tiny", {1, 415, 5565, 302, 4843, 349}), 5465);
}

TEST(DemoModelsTest, InputLongerThanSixtyFourPositionsIsAClearError) {
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Load(testing::SourcePath("models/gpt2-facts-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int64_t> ids(65, 464);
  absl::StatusOr<ForwardTrace> trace = Forward(**model, ids);
  ASSERT_EQ(trace.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(trace.status().message()), ::testing::HasSubstr("64 positions"));
  const std::vector<int64_t> ok_ids(64, 464);
  EXPECT_TRUE(Forward(**model, ok_ids).ok());
}

}  // namespace
}  // namespace factlens
