#include "analysis/text_input.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
// what encoding prompt + target adds after the prompt's tokens.
absl::StatusOr<std::vector<int32_t>> TargetTokens(const Tokenizer& tokenizer,
                                                  const std::string& prompt,
                                                  const std::string& target) {
  if (const std::optional<int32_t> unknown = tokenizer.unknown_word_id()) {
    absl::StatusOr<Encoding> words = tokenizer.Encode(target, /*add_special_tokens=*/false);
    if (!words.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("target: ", words.status().message()));
    }
    if (words->ids.empty()) return absl::InvalidArgumentError("target: has no words");
    for (size_t i = 0; i < words->ids.size(); ++i) {
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

}  // namespace

absl::StatusOr<int64_t> ResolveTarget(const Tokenizer& tokenizer, const std::string& prompt,
                                      const std::string& target, bool first_token) {
  if (target.empty()) return absl::InvalidArgumentError("target: is empty");
  absl::StatusOr<std::vector<int32_t>> tokens = TargetTokens(tokenizer, prompt, target);
  if (!tokens.ok()) return tokens.status();
  const std::vector<int32_t>& added = *tokens;
  if (added.size() == 1 || first_token) return added[0];
  std::vector<std::string> shown;
  for (int32_t id : added) {
    absl::StatusOr<std::string> token = tokenizer.DisplayToken(id);
    shown.push_back(absl::StrCat("\"", token.ok() ? *token : "?", "\" (", id, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat("target: \"", target, "\" is ", added.size(),
                                                 " tokens, not one: ", absl::StrJoin(shown, ", "),
                                                 "; pass one token or ask for the first token"));
}

}  // namespace factlens
