// Text targets: resolution to one token, and the warning for a target missing its leading space,
// on the two trained demo models (which know "The capital of France is" -> " Paris") and the
// word-level fairseq reference model.
#include "analysis/text_input.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::testing::HasSubstr;

constexpr char kPrompt[] = "The capital of France is";

struct Loaded {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

Loaded Load(const std::string& directory) {
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(testing::SourcePath(directory));
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromModelDirectory((*model)->directory());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return {};
  return {*model, *std::move(tokenizer)};
}

// The warning for `target` after kPrompt at the last position, or "" when there is none.
std::string WarningFor(const Loaded& m, const ResolvedTarget& target) {
  absl::StatusOr<std::vector<int64_t>> ids = EncodePrompt(*m.tokenizer, kPrompt);
  EXPECT_TRUE(ids.ok()) << ids.status();
  if (!ids.ok()) return "";
  absl::StatusOr<std::optional<std::string>> warning =
      TargetSpacingWarning(*m.model, *m.tokenizer, *ids, ids->size() - 1, target);
  EXPECT_TRUE(warning.ok()) << warning.status();
  return warning.ok() && *warning ? **warning : "";
}

class SubwordTargetTest : public ::testing::TestWithParam<const char*> {};

TEST_P(SubwordTargetTest, UnspacedTargetIsAnalysedAsAskedAndWarnsWithTheSpacedToken) {
  const Loaded m = Load(GetParam());
  ASSERT_NE(m.model, nullptr);
  absl::StatusOr<ResolvedTarget> spaced = ResolveTarget(*m.tokenizer, kPrompt, " Paris", false);
  // Llama's "Paris" after "is" is two tokens, "Par" + "is": its first token is the target here.
  absl::StatusOr<ResolvedTarget> bare = ResolveTarget(*m.tokenizer, kPrompt, "Paris", true);
  ASSERT_TRUE(spaced.ok()) << spaced.status();
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_NE(bare->id, spaced->id);  // the analysis is of what was asked
  ASSERT_TRUE(bare->spaced_id.has_value());
  EXPECT_EQ(*bare->spaced_id, spaced->id);
  EXPECT_FALSE(spaced->spaced_id.has_value());

  const std::string warning = WarningFor(m, *bare);
  EXPECT_THAT(warning, HasSubstr("target \"Paris\""));
  EXPECT_THAT(warning,
              HasSubstr(absl::StrCat("did you mean \" Paris\" (", spaced->id, "): rank 1, p = ")));
  EXPECT_EQ(WarningFor(m, *spaced), "");
}

TEST_P(SubwordTargetTest, NoWarningWhenTheSpacedFormIsNotFarMoreProbable) {
  const Loaded m = Load(GetParam());
  ASSERT_NE(m.model, nullptr);
  absl::StatusOr<ResolvedTarget> spaced = ResolveTarget(*m.tokenizer, kPrompt, " Paris", false);
  absl::StatusOr<ResolvedTarget> bare = ResolveTarget(*m.tokenizer, kPrompt, "Paris", true);
  ASSERT_TRUE(spaced.ok() && bare.ok());
  // The alternative is the model's least likely of the two: no warning.
  EXPECT_EQ(WarningFor(m, ResolvedTarget{spaced->id, " Paris", bare->id}), "");
}

TEST_P(SubwordTargetTest, MultiTokenTargetNamesItsTokensAndTheFirstTokenOption) {
  const Loaded m = Load(GetParam());
  ASSERT_NE(m.tokenizer, nullptr);
  absl::StatusOr<ResolvedTarget> many =
      ResolveTarget(*m.tokenizer, kPrompt, " Paris, the city of light", false);
  ASSERT_EQ(many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(many.status().message()), HasSubstr("--first_token"));
  absl::StatusOr<ResolvedTarget> first =
      ResolveTarget(*m.tokenizer, kPrompt, " Paris, the city of light", true);
  absl::StatusOr<ResolvedTarget> paris = ResolveTarget(*m.tokenizer, kPrompt, " Paris", false);
  ASSERT_TRUE(first.ok() && paris.ok());
  EXPECT_EQ(first->id, paris->id);
}

INSTANTIATE_TEST_SUITE_P(DemoModels, SubwordTargetTest,
                         ::testing::Values("models/gpt2-facts-tiny", "models/llama-facts-tiny"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).find("llama") != std::string::npos
                                      ? "llama"
                                      : "gpt2";
                         });

TEST(Gpt2TargetTest, TargetWithoutPromptTextIsTokenizedAlone) {
  // A prompt given as token ids: the target text is tokenized on its own.
  const Loaded m = Load("models/gpt2-facts-tiny");
  ASSERT_NE(m.tokenizer, nullptr);
  absl::StatusOr<ResolvedTarget> alone = ResolveTarget(*m.tokenizer, "", "Paris", false);
  absl::StatusOr<ResolvedTarget> after = ResolveTarget(*m.tokenizer, kPrompt, "Paris", false);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(alone->id, after->id);
  EXPECT_EQ(alone->spaced_id, after->spaced_id);
}

TEST(LlamaTargetTest, UnspacedTargetSplitInTwoIsRefusedNamingTheSpacedToken) {
  const Loaded m = Load("models/llama-facts-tiny");
  ASSERT_NE(m.tokenizer, nullptr);
  absl::StatusOr<ResolvedTarget> bare = ResolveTarget(*m.tokenizer, kPrompt, "Paris", false);
  ASSERT_EQ(bare.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bare.status().message()),
              HasSubstr("did you mean \" Paris\" (5465), with a leading space?"));
}

TEST(WordLevelTargetTest, SpacingDoesNotApplyToWholeWords) {
  const Loaded m = Load("tests/data/fairseq-reference/baevski-tiny");
  ASSERT_NE(m.tokenizer, nullptr);
  absl::StatusOr<ResolvedTarget> bare = ResolveTarget(*m.tokenizer, kPrompt, "Paris", false);
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_FALSE(bare->spaced_id.has_value());
  EXPECT_EQ(WarningFor(m, *bare), "");
}

}  // namespace
}  // namespace factlens
