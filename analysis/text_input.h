// Turning user text into token ids: prompts and single-token targets.
#ifndef FACTLENS_ANALYSIS_TEXT_INPUT_H_
#define FACTLENS_ANALYSIS_TEXT_INPUT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "analysis/locate.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"

namespace factlens {

// The prompt's ids with the tokenizer's special tokens (e.g. Llama's BOS). InvalidArgument naming
// `prompt` for empty text or invalid UTF-8.
absl::StatusOr<std::vector<int64_t>> EncodePrompt(const Tokenizer& tokenizer,
                                                  const std::string& prompt);

// A target given as text, resolved to its token.
struct ResolvedTarget {
  int64_t id = 0;
  std::string text;  // as given; empty for a target given as a token id
  // The token " " + text resolves to, when `text` starts with no whitespace, the vocabulary is
  // subword-level, " " + text is exactly one token and that token is not `id`: "Paris" after
  // "The capital of France is" is GPT-2's "Paris" (40313), which the model ranks far below
  // " Paris" (6342), the commonest mistake in the field.
  std::optional<int64_t> spaced_id;
};

// The target token for `target` text continuing `prompt`: the tokens that encoding
// prompt + target adds after the prompt's own tokens (so " Paris" is GPT-2's " Paris" and Llama's
// "▁Paris"); with an empty `prompt` (a prompt given as token ids) the target's own tokens; for a
// word-level vocabulary (fairseq dict.txt) the target's own words ("Paris"), a word outside the
// vocabulary being InvalidArgument rather than <unk>. It must be exactly one token, unless
// `first_token`, which takes the first. Otherwise InvalidArgument naming `target` and listing its
// tokens. Thread-safe.
absl::StatusOr<ResolvedTarget> ResolveTarget(const Tokenizer& tokenizer, const std::string& prompt,
                                             const std::string& target, bool first_token);

// When `target.spaced_id` is set and the model, at `position` of `token_ids`, finds the spaced
// token at least kSpacedTargetRatio times as probable as the target, a warning naming both with
// their ranks and probabilities ("did you mean \" Paris\" ...?"); otherwise nullopt. The analysis
// stays of what was asked: a target without a space can be meant. Runs one forward pass, only
// when `spaced_id` is set. Errors: those of Forward. Thread-safe.
inline constexpr double kSpacedTargetRatio = 10;
absl::StatusOr<std::optional<std::string>> TargetSpacingWarning(const Model& model,
                                                                const Tokenizer& tokenizer,
                                                                absl::Span<const int64_t> token_ids,
                                                                int64_t position,
                                                                const ResolvedTarget& target);

// LocateFact (locate.h) for a resolved target, with TargetSpacingWarning's warning, if any, in the
// report's `warnings`. Errors and thread-safety: those of the two.
absl::StatusOr<FactReport> LocateFact(const Model& model, const Tokenizer& tokenizer,
                                      absl::Span<const int64_t> token_ids,
                                      const ResolvedTarget& target, const LocateOptions& options,
                                      const ProgressCallback& progress = nullptr);

// A fact of a batch: the prompt's token ids and its resolved target.
struct TextFact {
  std::vector<int64_t> token_ids;
  ResolvedTarget target;
};

// LocateFact (above, with warnings) on each fact in order, giving `on_report` each report, or the
// fact's own error when it could not be read or located; `on_report` returns false to stop the
// batch (then Cancelled). `progress` is passed to each LocateFact. Returns the aggregate over the
// successful reports. Thread-safe.
absl::StatusOr<BatchAggregate> LocateFacts(
    const Model& model, const Tokenizer& tokenizer,
    absl::Span<const absl::StatusOr<TextFact>> facts, const LocateOptions& options,
    const std::function<bool(size_t, const absl::StatusOr<FactReport>&)>& on_report,
    const ProgressCallback& progress = nullptr);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TEXT_INPUT_H_
