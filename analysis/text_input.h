// Turning user text into token ids: prompts and single-token targets.
#ifndef FACTLENS_ANALYSIS_TEXT_INPUT_H_
#define FACTLENS_ANALYSIS_TEXT_INPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/tokenizer/tokenizer.h"

namespace factlens {

// The prompt's ids with the tokenizer's special tokens (e.g. Llama's BOS). InvalidArgument naming
// `prompt` for empty text or invalid UTF-8.
absl::StatusOr<std::vector<int64_t>> EncodePrompt(const Tokenizer& tokenizer,
                                                  const std::string& prompt);

// The target token for `target` text continuing `prompt`: the tokens that encoding
// prompt + target adds after the prompt's own tokens (so " Paris" is GPT-2's " Paris" and Llama's
// "▁Paris"); for a word-level vocabulary (fairseq dict.txt) the target's own words ("Paris"), a
// word outside the vocabulary being InvalidArgument rather than <unk>. It must be exactly one
// token, unless `first_token`, which takes the first. Otherwise InvalidArgument naming `target`
// and listing its tokens. Thread-safe.
absl::StatusOr<int64_t> ResolveTarget(const Tokenizer& tokenizer, const std::string& prompt,
                                      const std::string& target, bool first_token);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TEXT_INPUT_H_
