// Post-processors: Sequence, TemplateProcessing (single-sequence template), ByteLevel.
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Process(Encoding* enc, bool add_special_tokens) const override {
    for (const auto& p : steps_) TOK_RETURN_IF_ERROR(p->Process(enc, add_special_tokens));
    return absl::OkStatus();
  }
  std::optional<int32_t> LeadingSpecialId() const override {
    for (const auto& p : steps_) {
      if (auto id = p->LeadingSpecialId(); id.has_value()) return id;
    }
    return std::nullopt;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// HF TemplateProcessing, "single" template only (this library encodes single sequences).
class TemplateProcessor : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<std::pair<int32_t, std::string>> specials;  // when !is_sequence
  };
  explicit TemplateProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  absl::Status Process(Encoding* enc, bool add_special_tokens) const override {
    if (!add_special_tokens) return absl::OkStatus();
    Encoding out;
    const size_t n = enc->ids.size() + items_.size();
    out.ids.reserve(n);
    out.tokens.reserve(n);
    out.byte_offsets.reserve(n);
    out.special.reserve(n);
    for (const Item& item : items_) {
      if (item.is_sequence) {
        for (size_t i = 0; i < enc->ids.size(); ++i) {
          PushToken(&out, enc->ids[i], std::move(enc->tokens[i]), enc->byte_offsets[i].first,
                    enc->byte_offsets[i].second, enc->special[i]);
        }
      } else {
        for (const auto& [id, token] : item.specials) PushToken(&out, id, token, 0, 0, true);
      }
    }
    *enc = std::move(out);
    return absl::OkStatus();
  }
  std::optional<int32_t> LeadingSpecialId() const override {
    if (!items_.empty() && !items_[0].is_sequence && !items_[0].specials.empty()) {
      return items_[0].specials[0].first;
    }
    return std::nullopt;
  }

 private:
  std::vector<Item> items_;
};

// HF ByteLevel post-processor: only trims offsets (when trim_offsets is set).
class ByteLevelProcessor : public PostProcessor {
 public:
  ByteLevelProcessor(bool trim_offsets, bool add_prefix_space)
      : trim_offsets_(trim_offsets), add_prefix_space_(add_prefix_space) {}
  absl::Status Process(Encoding* enc, bool) const override {
    if (!trim_offsets_) return absl::OkStatus();
    std::vector<uint32_t> cps;
    for (size_t i = 0; i < enc->ids.size(); ++i) {
      const std::string& token = enc->tokens[i];
      size_t& begin = enc->byte_offsets[i].first;
      size_t& end = enc->byte_offsets[i].second;
      cps.clear();
      for (size_t k = 0; k < token.size();) {
        size_t len;
        cps.push_back(DecodeUtf8(token, k, &len));
        k += len;
      }
      auto is_space = [](uint32_t c) { return c == 0x120 || IsUnicodeWhitespace(c); };
      size_t leading = 0;
      while (leading < cps.size() && is_space(cps[leading])) ++leading;
      size_t trailing = 0;
      while (trailing < cps.size() && is_space(cps[cps.size() - 1 - trailing])) ++trailing;
      if (leading > 0) {
        const bool is_first = i == 0 || begin == 0;
        if (is_first && add_prefix_space_ && leading == 1) leading = 0;
        begin = std::min(begin + leading, end);
      }
      if (trailing > 0 && end >= trailing) end = std::max(end - trailing, begin);
    }
    return absl::OkStatus();
  }

 private:
  bool trim_offsets_;
  bool add_prefix_space_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const Json& j) {
  constexpr char kWhere[] = "post_processor(TemplateProcessing)";
  const Json* specials = JsonFind(j, "special_tokens");
  absl::flat_hash_map<std::string, std::vector<std::pair<int32_t, std::string>>> special_map;
  if (specials != nullptr && !specials->is_null()) {
    if (!specials->is_object()) return JsonTypeError(kWhere, "special_tokens", "an object");
    for (auto it = specials->begin(); it != specials->end(); ++it) {
      const Json& st = it.value();
      const Json* ids = JsonFind(st, "ids");
      const Json* toks = JsonFind(st, "tokens");
      if (ids == nullptr || !ids->is_array() || toks == nullptr || !toks->is_array() ||
          ids->size() != toks->size()) {
        return JsonTypeError(kWhere, absl::StrCat("special_tokens[\"", it.key(), "\"]"),
                             "an object with equally long ids and tokens arrays");
      }
      std::vector<std::pair<int32_t, std::string>> entries;
      for (size_t k = 0; k < ids->size(); ++k) {
        TOK_ASSIGN_OR_RETURN(const int32_t id, JsonTokenId((*ids)[k], kWhere));
        if (!(*toks)[k].is_string())
          return JsonTypeError(kWhere, "special_tokens.tokens", "strings");
        entries.emplace_back(id, (*toks)[k].get<std::string>());
      }
      special_map[it.key()] = std::move(entries);
    }
  }
  const Json* single = JsonFind(j, "single");
  if (single == nullptr || !single->is_array()) {
    return JsonTypeError(kWhere, "single", "an array of template pieces");
  }
  std::vector<TemplateProcessor::Item> items;
  for (const Json& piece : *single) {
    if (const Json* seq = JsonFind(piece, "Sequence"); seq != nullptr) {
      items.push_back({true, {}});
      continue;
    }
    const Json* sp = JsonFind(piece, "SpecialToken");
    if (sp == nullptr) {
      return JsonTypeError(kWhere, "single[]", "a {\"Sequence\"} or {\"SpecialToken\"} object");
    }
    TOK_ASSIGN_OR_RETURN(const std::string name, JsonString(*sp, "id", kWhere));
    auto it = special_map.find(name);
    if (it == special_map.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", kWhere,
                                                     " uses special token \"", name,
                                                     "\" missing from special_tokens"));
    }
    items.push_back({false, it->second});
  }
  return std::unique_ptr<PostProcessor>(new TemplateProcessor(std::move(items)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const Json& j) {
  const JsonDepthGuard depth;
  if (!depth.ok()) return depth.error("post_processor");
  TOK_ASSIGN_OR_RETURN(const std::string type, JsonComponentType(j, "post_processor"));
  if (type == "Sequence") {
    const Json* list = JsonFind(j, "processors");
    if (list == nullptr || !list->is_array()) {
      return JsonTypeError("post_processor(Sequence)", "processors", "an array");
    }
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const Json& e : *list) {
      TOK_ASSIGN_OR_RETURN(auto p, ParsePostProcessor(e));
      steps.push_back(std::move(p));
    }
    return std::unique_ptr<PostProcessor>(new SequenceProcessor(std::move(steps)));
  }
  if (type == "TemplateProcessing") return ParseTemplate(j);
  if (type == "ByteLevel") {
    TOK_ASSIGN_OR_RETURN(const bool trim, JsonBool(j, "trim_offsets", true, "post_processor"));
    TOK_ASSIGN_OR_RETURN(const bool aps, JsonBool(j, "add_prefix_space", true, "post_processor"));
    return std::unique_ptr<PostProcessor>(new ByteLevelProcessor(trim, aps));
  }
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: unsupported post_processor type \"", type,
                   "\" (supported: Sequence, TemplateProcessing, ByteLevel)"));
}

}  // namespace factlens::tok
