// Pre-tokenizers: Sequence, ByteLevel, Split, Metaspace, Whitespace, WhitespaceSplit.
#include <algorithm>
#include <utility>

#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

// GPT-2's pre-tokenization regex (HF ByteLevel with use_regex).
constexpr char kGpt2Regex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status PreTokenize(std::vector<NormString>* pieces) const override {
    for (const auto& p : steps_) TOK_RETURN_IF_ERROR(p->PreTokenize(pieces));
    return absl::OkStatus();
  }
  bool byte_level() const override { return !steps_.empty() && steps_.back()->byte_level(); }
  bool SupportsSpans() const override {
    for (const auto& p : steps_) {
      if (!p->SupportsSpans()) return false;
    }
    return true;
  }
  absl::Status SplitSpans(std::string_view text, std::vector<Span>* spans) const override {
    for (const auto& p : steps_) TOK_RETURN_IF_ERROR(p->SplitSpans(text, spans));
    return absl::OkStatus();
  }
  bool any_byte_level_before_last() const {
    for (size_t i = 0; i + 1 < steps_.size(); ++i) {
      if (steps_[i]->byte_level()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// Splits every span of *spans with `pattern` and `behavior` (the span fast path).
absl::Status SplitSpansWith(const Pattern& pattern, SplitBehavior behavior, bool invert,
                            std::string_view text, std::vector<Span>* spans) {
  thread_local std::vector<Span> out;
  thread_local std::vector<std::pair<Span, bool>> matches;
  out.clear();
  for (const Span& sp : *spans) {
    matches.clear();
    TOK_RETURN_IF_ERROR(pattern.FindSplits(text.substr(sp.first, sp.second - sp.first), &matches));
    const size_t first = out.size();
    ApplySplitBehavior(&matches, behavior, invert, &out);
    for (size_t k = first; k < out.size(); ++k) {
      out[k].first += sp.first;
      out[k].second += sp.first;
    }
  }
  spans->swap(out);
  return absl::OkStatus();
}

// Applies `fn(piece, &out)` to every piece.
template <typename Fn>
absl::Status ForEachPiece(std::vector<NormString>* pieces, Fn fn) {
  thread_local std::vector<NormString> out;
  out.clear();
  out.reserve(pieces->size() * 4 + 16);
  for (NormString& p : *pieces) TOK_RETURN_IF_ERROR(fn(p, &out));
  pieces->swap(out);
  return absl::OkStatus();
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  absl::Status PreTokenize(std::vector<NormString>* pieces) const override {
    return ForEachPiece(pieces, [this](NormString& p, std::vector<NormString>* out) {
      return p.Split(*pattern_, behavior_, invert_, out);
    });
  }
  bool SupportsSpans() const override { return true; }
  absl::Status SplitSpans(std::string_view text, std::vector<Span>* spans) const override {
    return SplitSpansWith(*pattern_, behavior_, invert_, text, spans);
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Pattern> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status PreTokenize(std::vector<NormString>* pieces) const override {
    return ForEachPiece(pieces, [this](NormString& p, std::vector<NormString>* out) {
      if (add_prefix_space_ && (p.empty() || p.text()[0] != ' ')) p.Prepend(" ");
      if (regex_ == nullptr) {
        if (!p.empty()) out->push_back(std::move(p));
        return absl::OkStatus();
      }
      return p.Split(*regex_, SplitBehavior::kIsolated, false, out);
    });
  }
  bool byte_level() const override { return true; }
  bool SupportsSpans() const override { return !add_prefix_space_; }
  absl::Status SplitSpans(std::string_view text, std::vector<Span>* spans) const override {
    if (regex_ != nullptr) {
      return SplitSpansWith(*regex_, SplitBehavior::kIsolated, false, text, spans);
    }
    spans->erase(std::remove_if(spans->begin(), spans->end(),
                                [](const Span& s) { return s.first == s.second; }),
                 spans->end());
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Pattern> regex_;  // null when use_regex is false
};

enum class PrependScheme { kAlways, kNever, kFirst };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split,
                        std::unique_ptr<Pattern> space, std::unique_ptr<Pattern> repl)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_(split),
        space_(std::move(space)),
        repl_(std::move(repl)) {}
  absl::Status PreTokenize(std::vector<NormString>* pieces) const override {
    return ForEachPiece(pieces, [this](NormString& p, std::vector<NormString>* out) {
      std::vector<Span> spaces;
      TOK_RETURN_IF_ERROR(space_->FindMatches(p.text(), &spaces));
      p.Replace(spaces, replacement_);
      const bool starts = p.text().substr(0, replacement_.size()) == replacement_;
      if (scheme_ == PrependScheme::kAlways && !starts) p.Prepend(replacement_);
      if (scheme_ == PrependScheme::kFirst && !starts && p.original_begin() == 0) {
        p.Prepend(replacement_);
      }
      if (!split_) {
        if (!p.empty()) out->push_back(std::move(p));
        return absl::OkStatus();
      }
      return p.Split(*repl_, SplitBehavior::kMergedWithNext, false, out);
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  std::unique_ptr<Pattern> space_;
  std::unique_ptr<Pattern> repl_;
};

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& j) {
  TOK_ASSIGN_OR_RETURN(const std::string b, JsonString(j, "behavior", "pre_tokenizer(Split)"));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: pre_tokenizer(Split).behavior \"", b, "\" is not valid"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j) {
  const JsonDepthGuard depth;
  if (!depth.ok()) return depth.error("pre_tokenizer");
  TOK_ASSIGN_OR_RETURN(const std::string type, JsonComponentType(j, "pre_tokenizer"));
  if (type == "Sequence") {
    const Json* list = JsonFind(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return JsonTypeError("pre_tokenizer(Sequence)", "pretokenizers", "an array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& e : *list) {
      TOK_ASSIGN_OR_RETURN(auto p, ParsePreTokenizer(e));
      steps.push_back(std::move(p));
    }
    auto seq = std::make_unique<SequencePreTokenizer>(std::move(steps));
    if (seq->any_byte_level_before_last()) {
      return absl::UnimplementedError(
          "tokenizer.json: a ByteLevel pre-tokenizer must be the last step of a Sequence");
    }
    return std::unique_ptr<PreTokenizer>(std::move(seq));
  }
  if (type == "ByteLevel") {
    TOK_ASSIGN_OR_RETURN(const bool add_prefix_space,
                         JsonBool(j, "add_prefix_space", true, "pre_tokenizer(ByteLevel)"));
    TOK_ASSIGN_OR_RETURN(const bool use_regex,
                         JsonBool(j, "use_regex", true, "pre_tokenizer(ByteLevel)"));
    std::unique_ptr<Pattern> regex;
    if (use_regex) {
      TOK_ASSIGN_OR_RETURN(regex, Pattern::Regex(kGpt2Regex));
    }
    return std::unique_ptr<PreTokenizer>(
        new ByteLevelPreTokenizer(add_prefix_space, std::move(regex)));
  }
  if (type == "Split") {
    const Json* pattern = JsonFind(j, "pattern");
    if (pattern == nullptr) return JsonTypeError("pre_tokenizer(Split)", "pattern", "an object");
    TOK_ASSIGN_OR_RETURN(auto p, ParsePattern(*pattern, "pre_tokenizer(Split)"));
    TOK_ASSIGN_OR_RETURN(const SplitBehavior behavior, ParseBehavior(j));
    TOK_ASSIGN_OR_RETURN(const bool invert, JsonBool(j, "invert", false, "pre_tokenizer(Split)"));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(p), behavior, invert));
  }
  if (type == "Metaspace") {
    constexpr char kWhere[] = "pre_tokenizer(Metaspace)";
    TOK_ASSIGN_OR_RETURN(std::optional<std::string> replacement,
                         JsonOptString(j, "replacement", kWhere));
    if (!replacement.has_value()) replacement = "\xE2\x96\x81";
    if (replacement->empty() || ValidUtf8SeqLen(*replacement, 0) != replacement->size()) {
      return JsonTypeError(kWhere, "replacement", "a single character");
    }
    PrependScheme scheme = PrependScheme::kAlways;
    TOK_ASSIGN_OR_RETURN(std::optional<std::string> ps, JsonOptString(j, "prepend_scheme", kWhere));
    if (ps.has_value()) {
      if (*ps == "always") {
        scheme = PrependScheme::kAlways;
      } else if (*ps == "never") {
        scheme = PrependScheme::kNever;
      } else if (*ps == "first") {
        scheme = PrependScheme::kFirst;
      } else {
        return JsonTypeError(kWhere, "prepend_scheme", "\"always\", \"never\" or \"first\"");
      }
    } else {
      TOK_ASSIGN_OR_RETURN(const bool add_prefix_space,
                           JsonBool(j, "add_prefix_space", true, kWhere));
      scheme = add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
    }
    TOK_ASSIGN_OR_RETURN(const bool split, JsonBool(j, "split", true, kWhere));
    TOK_ASSIGN_OR_RETURN(auto space, Pattern::Literal(" "));
    TOK_ASSIGN_OR_RETURN(auto repl, Pattern::Literal(*replacement));
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(*replacement, scheme, split, std::move(space), std::move(repl)));
  }
  if (type == "Whitespace") {
    TOK_ASSIGN_OR_RETURN(auto p, Pattern::Regex(R"(\w+|[^\w\s]+)"));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(p), SplitBehavior::kRemoved, /*invert=*/true));
  }
  if (type == "WhitespaceSplit") {
    TOK_ASSIGN_OR_RETURN(auto p, Pattern::Regex(R"(\s+)"));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(p), SplitBehavior::kRemoved, /*invert=*/false));
  }
  return absl::UnimplementedError(absl::StrCat(
      "tokenizer.json: unsupported pre_tokenizer type \"", type,
      "\" (supported: Sequence, ByteLevel, Split, Metaspace, Whitespace, WhitespaceSplit)"));
}

}  // namespace factlens::tok
