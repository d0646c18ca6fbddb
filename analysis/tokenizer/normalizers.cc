// Normalizers: Sequence, Prepend, Replace (HF semantics, alignments kept).
#include <utility>

#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Normalize(NormString* s) const override {
    for (const auto& n : steps_) TOK_RETURN_IF_ERROR(n->Normalize(s));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  absl::Status Normalize(NormString* s) const override {
    s->Prepend(prepend_);
    return absl::OkStatus();
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Normalize(NormString* s) const override {
    std::vector<Span> matches;
    TOK_RETURN_IF_ERROR(pattern_->FindMatches(s->text(), &matches));
    s->Replace(matches, content_);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Pattern>> ParsePattern(const Json& j, absl::string_view where) {
  if (const Json* s = JsonFind(j, "String"); s != nullptr) {
    if (!s->is_string()) return JsonTypeError(where, "pattern.String", "a string");
    return Pattern::Literal(s->get<std::string>());
  }
  if (const Json* r = JsonFind(j, "Regex"); r != nullptr) {
    if (!r->is_string()) return JsonTypeError(where, "pattern.Regex", "a string");
    auto p = Pattern::Regex(r->get_ref<const std::string&>());
    if (!p.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: ", where, ": ", p.status().message()));
    }
    return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tokenizer.json: ", where, ".pattern must be an object with a String or Regex member"));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j) {
  const JsonDepthGuard depth;
  if (!depth.ok()) return depth.error("normalizer");
  TOK_ASSIGN_OR_RETURN(const std::string type, JsonComponentType(j, "normalizer"));
  if (type == "Sequence") {
    const Json* list = JsonFind(j, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return JsonTypeError("normalizer(Sequence)", "normalizers", "an array");
    }
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const Json& e : *list) {
      TOK_ASSIGN_OR_RETURN(auto n, ParseNormalizer(e));
      steps.push_back(std::move(n));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Prepend") {
    TOK_ASSIGN_OR_RETURN(std::string prepend, JsonString(j, "prepend", "normalizer(Prepend)"));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prepend)));
  }
  if (type == "Replace") {
    const Json* pattern = JsonFind(j, "pattern");
    if (pattern == nullptr) return JsonTypeError("normalizer(Replace)", "pattern", "an object");
    TOK_ASSIGN_OR_RETURN(auto p, ParsePattern(*pattern, "normalizer(Replace)"));
    TOK_ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", "normalizer(Replace)"));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(p), std::move(content)));
  }
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: unsupported normalizer type \"",
                                               type, "\" (supported: Sequence, Prepend, Replace)"));
}

}  // namespace factlens::tok
