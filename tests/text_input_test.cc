// Text targets: resolution to one token, and the warning for a target missing its leading space,
// on the two trained demo models (which know "The capital of France is" -> " Paris") and the
// word-level fairseq reference model.
#include "analysis/text_input.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
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

// facts.json's `target` is the text a user passes (leading space included): its first token is
// the fact's target_id, and no fact needs the "did you mean" spacing hint.
TEST_P(SubwordTargetTest, EveryFactsFileTargetResolvesToItsTargetId) {
  const Loaded m = Load(GetParam());
  ASSERT_NE(m.tokenizer, nullptr);
  std::ifstream in(testing::SourcePath(absl::StrCat(GetParam(), "/facts.json")));
  const nlohmann::json facts = nlohmann::json::parse(in)["facts"];
  ASSERT_GE(facts.size(), 300u);
  for (const nlohmann::json& fact : facts) {
    const std::string prompt = fact["prompt"], target = fact["target"];
    EXPECT_EQ(target, " " + fact["object"].get<std::string>()) << prompt;
    absl::StatusOr<ResolvedTarget> resolved = ResolveTarget(*m.tokenizer, prompt, target, true);
    ASSERT_TRUE(resolved.ok()) << prompt << ": " << resolved.status();
    EXPECT_EQ(resolved->id, fact["target_id"].get<int64_t>()) << prompt << " " << target;
    EXPECT_FALSE(resolved->spaced_id.has_value()) << prompt << " " << target;
  }
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

TEST(BatchTest, ReportsEveryFactInOrderAndAggregatesTheSuccessfulOnes) {
  const Loaded m = Load("models/gpt2-facts-tiny");
  ASSERT_NE(m.model, nullptr);
  absl::StatusOr<std::vector<int64_t>> ids = EncodePrompt(*m.tokenizer, kPrompt);
  absl::StatusOr<ResolvedTarget> paris = ResolveTarget(*m.tokenizer, kPrompt, " Paris", false);
  absl::StatusOr<ResolvedTarget> bare = ResolveTarget(*m.tokenizer, kPrompt, "Paris", false);
  ASSERT_TRUE(ids.ok() && paris.ok() && bare.ok());
  const std::vector<absl::StatusOr<TextFact>> facts = {
      TextFact{*ids, *paris}, absl::InvalidArgumentError("target: unreadable"),
      TextFact{*ids, *bare}, TextFact{{464}, ResolvedTarget{99999999}}};
  LocateOptions options;
  options.top_ffn_neurons = 7;
  options.top_attention_neurons = 5;
  std::vector<std::string> seen;
  absl::StatusOr<BatchAggregate> aggregate = LocateFacts(
      *m.model, *m.tokenizer, facts, options, [&](size_t i, const absl::StatusOr<FactReport>& r) {
        seen.push_back(absl::StrCat(i, r.ok() ? ":ok" : ":error",
                                    r.ok() ? absl::StrCat("/", r->warnings.size()) : ""));
        return true;
      });
  ASSERT_TRUE(aggregate.ok()) << aggregate.status();
  EXPECT_EQ(seen, (std::vector<std::string>{"0:ok/0", "1:error", "2:ok/1", "3:error"}));
  EXPECT_EQ(aggregate->facts, 2);
  int64_t ffn_total = 0, attention_total = 0;
  for (int64_t c : aggregate->ffn_neurons_per_layer) ffn_total += c;
  for (int64_t c : aggregate->attention_neurons_per_layer) attention_total += c;
  EXPECT_EQ(ffn_total, 14);
  EXPECT_EQ(attention_total, 10);

  // on_report returning false stops the batch.
  seen.clear();
  absl::StatusOr<BatchAggregate> stopped = LocateFacts(
      *m.model, *m.tokenizer, facts, options, [&](size_t i, const absl::StatusOr<FactReport>&) {
        seen.push_back(absl::StrCat(i));
        return false;
      });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, (std::vector<std::string>{"0"}));
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
