// Internal: the `pattern` of HF Split / Replace components: a literal string or a regex. Regexes
// use PCRE2 with PCRE2_UTF | PCRE2_UCP (Unicode classes, lookahead) and the JIT when available;
// the pattern is compiled once at load time. Immutable after creation; FindMatches is
// thread-safe (per-thread JIT stacks).
#ifndef FACTLENS_ANALYSIS_TOKENIZER_PATTERN_H_
#define FACTLENS_ANALYSIS_TOKENIZER_PATTERN_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace factlens::tok {

using Span = std::pair<size_t, size_t>;  // [begin, end) byte offsets

class Pattern {
 public:
  static absl::StatusOr<std::unique_ptr<Pattern>> Literal(std::string literal);
  static absl::StatusOr<std::unique_ptr<Pattern>> Regex(std::string_view regex);
  ~Pattern();

  // Appends the non-overlapping matches in `text` (valid UTF-8), leftmost first, with the
  // empty-match rules of Oniguruma's find_iter as used by HF (an empty match right at the end of
  // the previous match is skipped). A literal "" matches nothing. Errors only for regex engine
  // limits (ResourceExhausted).
  absl::Status FindMatches(std::string_view text, std::vector<Span>* out) const;

  // HF Pattern::find_matches: the matches plus the gaps between them, covering `text`
  // ([(0,0), false] for an empty text).
  absl::Status FindSplits(std::string_view text, std::vector<std::pair<Span, bool>>* out) const;

 private:
  Pattern() = default;
  std::string literal_;
  void* code_ = nullptr;  // pcre2_code_8*, null for literals
};

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_PATTERN_H_
