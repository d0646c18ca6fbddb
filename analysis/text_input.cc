#include "analysis/text_input.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "analysis/forward.h"
#include "analysis/locate.h"

namespace factlens {
namespace {

absl::StatusOr<Encoding> EncodeField(const Tokenizer& tokenizer, const std::string& field,
                                     const std::string& text) {
  absl::StatusOr<Encoding> encoding = tokenizer.Encode(text, /*add_special_tokens=*/true);
  if (!encoding.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", encoding.status().message()));
  }
  return encoding;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> EncodePrompt(const Tokenizer& tokenizer,
                                                  const std::string& prompt) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: is empty");
  absl::StatusOr<Encoding> encoding = EncodeField(tokenizer, "prompt", prompt);
  if (!encoding.ok()) return encoding.status();
  return std::vector<int64_t>(encoding->ids.begin(), encoding->ids.end());
}

namespace {

// The target's tokens: for a word-level vocabulary its own words (a word is encoded alone, and
// one outside the vocabulary is refused rather than scored as <unk>); for a subword tokenizer
// what encoding prompt + target adds after the prompt's tokens, or without a prompt the target's
// own tokens.
absl::StatusOr<std::vector<int32_t>> TargetTokens(const Tokenizer& tokenizer,
                                                  const std::string& prompt,
                                                  const std::string& target) {
  const std::optional<int32_t> unknown = tokenizer.unknown_word_id();
  if (unknown || prompt.empty()) {
    absl::StatusOr<Encoding> words = tokenizer.Encode(target, /*add_special_tokens=*/false);
    if (!words.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("target: ", words.status().message()));
    }
    if (words->ids.empty()) return absl::InvalidArgumentError("target: has no tokens");
    for (size_t i = 0; unknown && i < words->ids.size(); ++i) {
      if (words->ids[i] == *unknown && !words->special[i]) {
        const auto [begin, end] = words->byte_offsets[i];
        return absl::InvalidArgumentError(absl::StrCat(
            "target: \"", target.substr(begin, end - begin),
            "\" is not in the model's vocabulary (dict.txt); it would be scored as <unk>"));
      }
    }
    return words->ids;
  }
  absl::StatusOr<Encoding> alone = EncodeField(tokenizer, "prompt", prompt);
  if (!alone.ok()) return alone.status();
  absl::StatusOr<Encoding> combined = EncodeField(tokenizer, "target", prompt + target);
  if (!combined.ok()) return combined.status();
  const size_t n = alone->ids.size();
  if (combined->ids.size() <= n ||
      !std::equal(alone->ids.begin(), alone->ids.end(), combined->ids.begin())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target: \"", target,
        "\" merges with the end of the prompt when tokenized; give the target as a token id"));
  }
  return std::vector<int32_t>(combined->ids.begin() + n, combined->ids.end());
}

// The one token " " + target adds, if `target` could be missing its leading space and the spaced
// form is exactly one token.
std::optional<int64_t> SpacedToken(const Tokenizer& tokenizer, const std::string& prompt,
                                   const std::string& target) {
  if (tokenizer.unknown_word_id() || absl::ascii_isspace(static_cast<unsigned char>(target[0]))) {
    return std::nullopt;
  }
  absl::StatusOr<std::vector<int32_t>> spaced = TargetTokens(tokenizer, prompt, " " + target);
  if (!spaced.ok() || spaced->size() != 1) return std::nullopt;
  return (*spaced)[0];
}

std::string Quoted(const Tokenizer& tokenizer, int64_t id) {
  absl::StatusOr<std::string> token = tokenizer.DisplayToken(id);
  return absl::StrCat("\"", token.ok() ? *token : "?", "\" (", id, ")");
}

}  // namespace

absl::StatusOr<ResolvedTarget> ResolveTarget(const Tokenizer& tokenizer, const std::string& prompt,
                                             const std::string& target, bool first_token) {
  if (target.empty()) return absl::InvalidArgumentError("target: is empty");
  absl::StatusOr<std::vector<int32_t>> tokens = TargetTokens(tokenizer, prompt, target);
  if (!tokens.ok()) return tokens.status();
  const std::vector<int32_t>& added = *tokens;
  if (added.size() == 1 || first_token) {
    ResolvedTarget resolved{added[0], target, SpacedToken(tokenizer, prompt, target)};
    if (resolved.spaced_id == resolved.id) resolved.spaced_id.reset();
    return resolved;
  }
  std::vector<std::string> shown;
  for (int32_t id : added) shown.push_back(Quoted(tokenizer, id));
  const std::optional<int64_t> spaced = SpacedToken(tokenizer, prompt, target);
  return absl::InvalidArgumentError(absl::StrCat(
      "target: \"", target, "\" is ", added.size(),
      " tokens, not one: ", absl::StrJoin(shown, ", "),
      spaced
          ? absl::StrCat("; did you mean ", Quoted(tokenizer, *spaced), ", with a leading space?")
          : "",
      " Pass one token or ask for the first token (first_token, --first_token)"));
}

absl::StatusOr<std::optional<std::string>> TargetSpacingWarning(const Model& model,
                                                                const Tokenizer& tokenizer,
                                                                absl::Span<const int64_t> token_ids,
                                                                int64_t position,
                                                                const ResolvedTarget& target) {
  if (!target.spaced_id) return std::nullopt;
  absl::StatusOr<ForwardTrace> trace = Forward(model, token_ids, LogitsAt(position));
  if (!trace.ok()) return trace.status();
  const TargetOutcome asked = OutcomeOf(trace->logits[0], target.id);
  const TargetOutcome spaced = OutcomeOf(trace->logits[0], *target.spaced_id);
  if (spaced.log_prob - asked.log_prob < std::log(kSpacedTargetRatio)) return std::nullopt;
  return absl::StrFormat(
      "target \"%s\" is the token %s, without a leading space: rank %d, p = %.3g here; did you "
      "mean %s: rank %d, p = %.3g? Words after a prompt usually begin with a space; this "
      "analysis is of \"%s\" as asked.",
      target.text, Quoted(tokenizer, target.id), asked.rank, asked.prob,
      Quoted(tokenizer, *target.spaced_id), spaced.rank, spaced.prob, target.text);
}

absl::StatusOr<FactReport> LocateFact(const Model& model, const Tokenizer& tokenizer,
                                      absl::Span<const int64_t> token_ids,
                                      const ResolvedTarget& target, const LocateOptions& options,
                                      const ProgressCallback& progress) {
  absl::StatusOr<FactReport> report = LocateFact(model, token_ids, target.id, options, progress);
  if (!report.ok()) return report.status();
  absl::StatusOr<std::optional<std::string>> warning =
      TargetSpacingWarning(model, tokenizer, token_ids, report->position, target);
  if (!warning.ok()) return warning.status();
  if (*warning) report->warnings.push_back(**warning);
  return report;
}

absl::StatusOr<BatchAggregate> LocateFacts(
    const Model& model, const Tokenizer& tokenizer,
    absl::Span<const absl::StatusOr<TextFact>> facts, const LocateOptions& options,
    const std::function<bool(size_t, const absl::StatusOr<FactReport>&)>& on_report,
    const ProgressCallback& progress) {
  BatchAggregate aggregate;
  for (size_t i = 0; i < facts.size(); ++i) {
    const absl::StatusOr<FactReport> report =
        facts[i].ok()
            ? LocateFact(model, tokenizer, facts[i]->token_ids, facts[i]->target, options, progress)
            : absl::StatusOr<FactReport>(facts[i].status());
    if (report.ok()) Accumulate(*report, aggregate);
    if (!on_report(i, report)) return absl::CancelledError("the batch was stopped");
  }
  return aggregate;
}

}  // namespace factlens
