#include "analysis/tokenizer/normalized_string.h"

#include <algorithm>

#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {

Span NormString::AlignAt(size_t i) const {
  if (owned_mode_) return {align_[i].first, align_[i].second};
  size_t p = base_ + i;
  while (p > 0 && IsUtf8Continuation(static_cast<unsigned char>(original_[p]))) --p;
  return {p, p + Utf8CharLen(static_cast<unsigned char>(original_[p]))};
}

Span NormString::ToOriginal(size_t s, size_t e) const {
  if (s >= e || s >= size()) {
    // HF returns the (empty) range unchanged; anchor it at this piece's original start.
    return {orig_begin_ + s, orig_begin_ + s};
  }
  return {AlignAt(s).first, AlignAt(e - 1).second};
}

NormString NormString::Slice(size_t s, size_t e) const {
  NormString out;
  out.original_ = original_;
  if (!owned_mode_) {
    out.view_ = view_.substr(s, e - s);
    out.base_ = base_ + s;
    out.orig_begin_ = base_ + s;
    return out;
  }
  out.owned_mode_ = true;
  out.owned_.assign(owned_, s, e - s);
  out.align_.assign(align_.begin() + s, align_.begin() + e);
  out.orig_begin_ = s < e ? align_[s].first : orig_begin_;
  return out;
}

void NormString::Materialize() {
  if (owned_mode_) return;
  owned_.assign(view_.data(), view_.size());
  align_.clear();
  align_.reserve(view_.size());
  size_t i = 0;
  while (i < view_.size()) {
    const Span a = AlignAt(i);
    const size_t n = a.second - (base_ + i);
    for (size_t k = 0; k < n && i < view_.size(); ++k, ++i) {
      align_.emplace_back(static_cast<uint32_t>(a.first), static_cast<uint32_t>(a.second));
    }
  }
  owned_mode_ = true;
}

void NormString::Prepend(std::string_view s) {
  if (empty() || s.empty()) return;
  Materialize();
  const auto a0 = align_[0];
  owned_.insert(0, s.data(), s.size());
  align_.insert(align_.begin(), s.size(), a0);
}

void NormString::Replace(const std::vector<Span>& matches, std::string_view content) {
  if (matches.empty()) return;
  Materialize();
  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> align;
  text.reserve(owned_.size());
  align.reserve(align_.size());
  size_t prev = 0;
  for (const Span& m : matches) {
    text.append(owned_, prev, m.first - prev);
    align.insert(align.end(), align_.begin() + prev, align_.begin() + m.first);
    if (!content.empty()) {
      std::pair<uint32_t, uint32_t> a;
      if (m.second > m.first) {
        a = align_[m.second - 1];  // inserted chars take the last removed char's alignment
      } else if (!align.empty()) {
        a = align.back();
      } else {
        a = {static_cast<uint32_t>(orig_begin_), static_cast<uint32_t>(orig_begin_)};
      }
      text.append(content);
      align.insert(align.end(), content.size(), a);
    }
    prev = m.second;
  }
  text.append(owned_, prev, std::string::npos);
  align.insert(align.end(), align_.begin() + prev, align_.end());
  owned_ = std::move(text);
  align_ = std::move(align);
}

void ApplySplitBehavior(std::vector<std::pair<Span, bool>>* matches_ptr, SplitBehavior behavior,
                        bool invert, std::vector<Span>* keep) {
  std::vector<std::pair<Span, bool>>& matches = *matches_ptr;
  if (invert) {
    for (auto& m : matches) m.second = !m.second;
  }
  // (span, remove)
  thread_local std::vector<std::pair<Span, bool>> splits;
  splits.clear();
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& m : matches) splits.push_back({m.first, false});
      break;
    case SplitBehavior::kRemoved:
      splits.assign(matches.begin(), matches.end());
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& m : matches) {
        if (m.second == previous_match && !splits.empty()) {
          splits.back().first.second = m.first.second;
        } else {
          splits.push_back({m.first, false});
        }
        previous_match = m.second;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& m : matches) {
        if (m.second && !previous_match && !splits.empty()) {
          splits.back().first.second = m.first.second;
        } else {
          splits.push_back({m.first, false});
        }
        previous_match = m.second;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->second && !previous_match && !splits.empty()) {
          splits.back().first.first = it->first.first;
        } else {
          splits.push_back({it->first, false});
        }
        previous_match = it->second;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const auto& s : splits) {
    if (s.second || s.first.first == s.first.second) continue;
    keep->push_back(s.first);
  }
}

absl::Status NormString::Split(const Pattern& pattern, SplitBehavior behavior, bool invert,
                               std::vector<NormString>* out) const {
  thread_local std::vector<std::pair<Span, bool>> matches;
  thread_local std::vector<Span> keep;
  matches.clear();
  keep.clear();
  TOK_RETURN_IF_ERROR(pattern.FindSplits(text(), &matches));
  ApplySplitBehavior(&matches, behavior, invert, &keep);
  for (const Span& k : keep) out->push_back(Slice(k.first, k.second));
  return absl::OkStatus();
}

}  // namespace factlens::tok
