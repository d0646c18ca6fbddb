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

absl::StatusOr<int64_t> ResolveTarget(const Tokenizer& tokenizer, const std::string& prompt,
                                      const std::string& target, bool first_token) {
  if (target.empty()) return absl::InvalidArgumentError("target: is empty");
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
  const std::vector<int32_t> added(combined->ids.begin() + n, combined->ids.end());
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
