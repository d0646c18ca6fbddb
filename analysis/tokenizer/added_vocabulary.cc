#include "analysis/tokenizer/added_vocabulary.h"

#include <utility>

#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

// Rust regex \w (Unicode): letters, marks, digits, connector punctuation. Checked with PCRE2's
// Unicode \w plus marks.
bool IsWordChar(std::string_view ch) {
  static const Pattern* const kWord = [] {
    auto p = Pattern::Regex(R"(^[\w\p{M}\p{Pc}])");
    return p.ok() ? p->release() : nullptr;
  }();
  if (kWord == nullptr) return false;
  std::vector<Span> m;
  if (!kWord->FindMatches(ch, &m).ok()) return false;
  return !m.empty();
}

std::string_view LastChar(std::string_view s) {
  size_t p = s.size();
  while (p > 0) {
    --p;
    if (!IsUtf8Continuation(static_cast<unsigned char>(s[p]))) break;
  }
  return s.substr(p);
}
std::string_view FirstChar(std::string_view s) {
  return s.substr(0, Utf8CharLen(static_cast<unsigned char>(s[0])));
}

}  // namespace

void AddedVocabulary::Matcher::Add(std::string_view pattern, int32_t index) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char c : pattern) {
    int32_t child = -1;
    for (const auto& [b, n] : nodes[node].children) {
      if (b == c) {
        child = n;
        break;
      }
    }
    if (child < 0) {
      child = static_cast<int32_t>(nodes.size());
      nodes[node].children.emplace_back(c, child);
      nodes.emplace_back();
    }
    node = child;
  }
  if (nodes[node].terminal < 0) nodes[node].terminal = index;  // first one wins
  first[static_cast<unsigned char>(pattern[0])] = true;
}

size_t AddedVocabulary::Matcher::LongestAt(std::string_view text, size_t pos,
                                           int32_t* index) const {
  int32_t node = 0;
  size_t best = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    int32_t child = -1;
    for (const auto& [b, n] : nodes[node].children) {
      if (b == c) {
        child = n;
        break;
      }
    }
    if (child < 0) break;
    node = child;
    if (nodes[node].terminal >= 0) {
      best = i + 1 - pos;
      *index = nodes[node].terminal;
    }
  }
  return best;
}

absl::StatusOr<AddedVocabulary> AddedVocabulary::FromJson(const Json* added_tokens,
                                                          const Normalizer* normalizer) {
  AddedVocabulary v;
  if (added_tokens == nullptr || added_tokens->is_null()) return v;
  if (!added_tokens->is_array()) {
    return absl::InvalidArgumentError("tokenizer.json: added_tokens must be an array");
  }
  constexpr char kWhere[] = "added_tokens[]";
  for (const Json& e : *added_tokens) {
    if (!e.is_object()) {
      return absl::InvalidArgumentError("tokenizer.json: added_tokens[] must be objects");
    }
    AddedToken t;
    const Json* id = JsonFind(e, "id");
    if (id == nullptr) return JsonTypeError(kWhere, "id", "an integer");
    TOK_ASSIGN_OR_RETURN(t.id, JsonTokenId(*id, "added_tokens[].id"));
    TOK_ASSIGN_OR_RETURN(t.content, JsonString(e, "content", kWhere));
    TOK_ASSIGN_OR_RETURN(t.single_word, JsonBool(e, "single_word", false, kWhere));
    TOK_ASSIGN_OR_RETURN(t.lstrip, JsonBool(e, "lstrip", false, kWhere));
    TOK_ASSIGN_OR_RETURN(t.rstrip, JsonBool(e, "rstrip", false, kWhere));
    TOK_ASSIGN_OR_RETURN(t.normalized, JsonBool(e, "normalized", true, kWhere));
    TOK_ASSIGN_OR_RETURN(t.special, JsonBool(e, "special", false, kWhere));
    if (t.content.empty()) continue;  // HF ignores empty added tokens
    const int32_t index = static_cast<int32_t>(v.tokens_.size());
    v.by_id_[t.id] = index;
    v.by_content_[t.content] = index;
    v.tokens_.push_back(std::move(t));
  }
  for (int32_t i = 0; i < static_cast<int32_t>(v.tokens_.size()); ++i) {
    const AddedToken& t = v.tokens_[i];
    if (!t.normalized) {
      v.raw_.Add(t.content, i);
      continue;
    }
    v.normalized_.push_back(i);
    NormString content(t.content, 0, t.content.size());
    if (normalizer != nullptr) TOK_RETURN_IF_ERROR(normalizer->Normalize(&content));
    v.normalized_matcher_.Add(content.text(), i);
  }
  return v;
}

const AddedToken* AddedVocabulary::ById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::ByContent(std::string_view content) const {
  auto it = by_content_.find(AV(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::Split(std::string_view text, bool normalized_set,
                            std::vector<AddedSplit>* out) const {
  SplitWith(normalized_set ? normalized_matcher_ : raw_, text, out);
}

void AddedVocabulary::SplitWith(const Matcher& m, std::string_view text,
                                std::vector<AddedSplit>* out) const {
  if (text.empty()) {
    out->push_back({0, 0, -1});
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  const bool any = m.nodes.size() > 1;
  while (any && pos < text.size()) {
    if (!m.first[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t index = -1;
    const size_t len = m.LongestAt(text, pos, &index);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // matches never overlap, even when discarded below
    const AddedToken& t = tokens_[index];
    if (t.single_word) {
      const bool start_space = start == 0 || !IsWordChar(LastChar(text.substr(0, start)));
      const bool stop_space = stop == text.size() || !IsWordChar(FirstChar(text.substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t p = new_start - 1;
        while (p > 0 && IsUtf8Continuation(static_cast<unsigned char>(text[p]))) --p;
        size_t len_c;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, p, &len_c))) break;
        new_start = p;
      }
      start = std::max(new_start, start_offset);
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t len_c;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, stop, &len_c))) break;
        stop += len_c;
      }
      pos = std::max(pos, stop);
    }
    if (start_offset < start) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, index});
    start_offset = stop;
  }
  if (start_offset != text.size()) out->push_back({start_offset, text.size(), -1});
}

}  // namespace factlens::tok
