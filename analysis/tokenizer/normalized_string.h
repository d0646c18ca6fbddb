// Internal: HF's NormalizedString — a (possibly transformed) piece of the input text that keeps,
// for every byte, the byte range [begin, end) of the ORIGINAL input character it comes from
// (absolute offsets into the whole input). An untransformed piece is just a view into the input
// (no copy); a transformation (prepend, replace) materialises the text and its alignments.
// Value type; not synchronised (each Encode call works on its own instances).
#ifndef FACTLENS_ANALYSIS_TOKENIZER_NORMALIZED_STRING_H_
#define FACTLENS_ANALYSIS_TOKENIZER_NORMALIZED_STRING_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "analysis/tokenizer/pattern.h"

namespace factlens::tok {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// HF split behaviours over a text's (span, is_match) list: appends the kept non-empty spans.
void ApplySplitBehavior(std::vector<std::pair<Span, bool>>* matches, SplitBehavior behavior,
                        bool invert, std::vector<Span>* keep);

class NormString {
 public:
  NormString() = default;
  // Identity view of original[begin, end); begin/end must be character boundaries.
  NormString(std::string_view original, size_t begin, size_t end)
      : original_(original),
        view_(original.substr(begin, end - begin)),
        base_(begin),
        orig_begin_(begin) {}

  std::string_view text() const { return owned_mode_ ? std::string_view(owned_) : view_; }
  size_t size() const { return text().size(); }
  bool empty() const { return text().empty(); }
  // HF's original_shift: where this piece starts in the input.
  size_t original_begin() const { return orig_begin_; }

  // Original range of the character that produced normalized byte i (i < size()).
  Span AlignAt(size_t i) const;
  // HF convert_offsets(Normalized -> Original) for a normalized byte range [s, e).
  Span ToOriginal(size_t s, size_t e) const;

  // Sub-piece [s, e) of the normalized text (character boundaries).
  NormString Slice(size_t s, size_t e) const;
  // HF NormalizedString::prepend (no-op on an empty string): the new characters align with the
  // first character.
  void Prepend(std::string_view s);
  // HF NormalizedString::replace for the given non-overlapping sorted matches.
  void Replace(const std::vector<Span>& matches, std::string_view content);
  // HF NormalizedString::split: appends the non-empty pieces to *out.
  absl::Status Split(const Pattern& pattern, SplitBehavior behavior, bool invert,
                     std::vector<NormString>* out) const;

 private:
  void Materialize();

  std::string_view original_;
  std::string_view view_;
  size_t base_ = 0;
  size_t orig_begin_ = 0;
  bool owned_mode_ = false;
  std::string owned_;
  std::vector<std::pair<uint32_t, uint32_t>> align_;
};

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_NORMALIZED_STRING_H_
