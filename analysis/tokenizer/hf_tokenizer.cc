// The tokenizer.json pipeline (HF TokenizerImpl::encode_single_sequence / decode):
//   added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> BPE model
//   -> post-processor; decode: ids -> token strings -> decoder chain.
#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "analysis/tokenizer/added_vocabulary.h"
#include "analysis/tokenizer/backend.h"
#include "analysis/tokenizer/bpe.h"
#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens {
namespace {

using tok::AddedSplit;
using tok::AddedToken;
using tok::Json;
using tok::NormString;

class HfTokenizer : public TokenizerBackend {
 public:
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Create(const Json& root);

  absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  absl::StatusOr<std::string> DisplayToken(int32_t id) const override;
  std::optional<std::string> IdToToken(int32_t id) const override {
    const std::string* t = TokenString(id);
    if (t == nullptr) return std::nullopt;
    return *t;
  }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    if (const AddedToken* t = added_.ByContent(token)) return t->id;
    return model_->TokenToId(token);
  }
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

 private:
  const std::string* TokenString(int32_t id) const {
    if (const AddedToken* t = added_.ById(id)) return &t->content;
    return model_->IdToToken(id);
  }
  // Fast path (no normalizer, no normalized added tokens, a pre-tokenizer that never changes
  // the text): tokenizes text[begin, end) through byte spans, appending to *recs.
  absl::Status TokenizeSpans(std::string_view text, size_t begin, size_t end, Encoding* recs) const;
  // Pre-tokenizes and tokenizes one normalized piece, appending to *recs.
  absl::Status TokenizePiece(NormString piece, Encoding* recs) const;
  void AddAdded(const AddedToken& t, std::string_view matched, size_t b, size_t e,
                Encoding* recs) const {
    tok::PushToken(recs, t.id, std::string(matched), b, e, t.special);
  }

  std::unique_ptr<tok::Normalizer> normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tok::BpeModel> model_;
  std::unique_ptr<tok::PostProcessor> post_processor_;
  std::unique_ptr<tok::Decoder> decoder_;
  tok::AddedVocabulary added_;
  absl::flat_hash_set<int32_t> special_ids_;
  std::vector<bool> is_special_;  // dense copy of special_ids_, indexed by id
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_, eos_id_;
  bool span_mode_ = false;
};

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Create(const Json& root) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: the top level must be an object");
  }
  auto t = std::unique_ptr<HfTokenizer>(new HfTokenizer());
  if (const Json* n = tok::JsonFindNonNull(root, "normalizer")) {
    TOK_ASSIGN_OR_RETURN(t->normalizer_, tok::ParseNormalizer(*n));
  }
  if (const Json* p = tok::JsonFindNonNull(root, "pre_tokenizer")) {
    TOK_ASSIGN_OR_RETURN(t->pre_tokenizer_, tok::ParsePreTokenizer(*p));
  }
  const Json* model = tok::JsonFindNonNull(root, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: \"model\" must be an object");
  }
  TOK_ASSIGN_OR_RETURN(const std::optional<std::string> model_type,
                       tok::JsonOptString(*model, "type", "model"));
  if (model_type.has_value() ? *model_type != "BPE" : tok::JsonFind(*model, "merges") == nullptr) {
    return absl::UnimplementedError(absl::StrCat("tokenizer.json: unsupported model type \"",
                                                 model_type.value_or("?"), "\" (supported: BPE)"));
  }
  const bool byte_level = t->pre_tokenizer_ != nullptr && t->pre_tokenizer_->byte_level();
  TOK_ASSIGN_OR_RETURN(t->model_, tok::BpeModel::FromJson(*model, byte_level));
  if (const Json* p = tok::JsonFindNonNull(root, "post_processor")) {
    TOK_ASSIGN_OR_RETURN(t->post_processor_, tok::ParsePostProcessor(*p));
  }
  if (const Json* d = tok::JsonFindNonNull(root, "decoder")) {
    TOK_ASSIGN_OR_RETURN(t->decoder_, tok::ParseDecoder(*d));
  }
  TOK_ASSIGN_OR_RETURN(t->added_, tok::AddedVocabulary::FromJson(
                                      tok::JsonFind(root, "added_tokens"), t->normalizer_.get()));
  t->vocab_size_ = t->model_->id_bound();
  for (const AddedToken& a : t->added_.tokens()) {
    t->vocab_size_ = std::max(t->vocab_size_, a.id + 1);
    if (a.special) t->special_ids_.insert(a.id);
  }
  t->is_special_.assign(static_cast<size_t>(t->vocab_size_), false);
  for (int32_t id : t->special_ids_) t->is_special_[id] = true;
  t->span_mode_ = t->normalizer_ == nullptr && !t->added_.has_normalized() &&
                  (t->pre_tokenizer_ == nullptr || t->pre_tokenizer_->SupportsSpans());
  if (t->post_processor_ != nullptr) t->bos_id_ = t->post_processor_->LeadingSpecialId();
  if (!t->bos_id_.has_value()) {
    for (const char* name :
         {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"}) {
      if (auto id = t->TokenToId(name); id.has_value()) {
        t->bos_id_ = id;
        break;
      }
    }
  }
  for (const char* name : {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"}) {
    if (auto id = t->TokenToId(name); id.has_value()) {
      t->eos_id_ = id;
      break;
    }
  }
  return t;
}

absl::Status HfTokenizer::TokenizeSpans(std::string_view text, size_t begin, size_t end,
                                        Encoding* recs) const {
  thread_local std::vector<tok::Span> spans;
  thread_local std::vector<tok::ModelToken> mtoks;
  spans.clear();
  spans.emplace_back(begin, end);
  if (pre_tokenizer_ != nullptr) TOK_RETURN_IF_ERROR(pre_tokenizer_->SplitSpans(text, &spans));
  auto char_start = [text](size_t p) {
    while (p > 0 && tok::IsUtf8Continuation(static_cast<unsigned char>(text[p]))) --p;
    return p;
  };
  for (const tok::Span& sp : spans) {
    if (sp.first == sp.second) continue;
    mtoks.clear();
    TOK_RETURN_IF_ERROR(model_->Tokenize(text.substr(sp.first, sp.second - sp.first), &mtoks));
    for (const tok::ModelToken& m : mtoks) {
      // Identity alignment: a token covering part of a character covers all of it.
      const size_t b = char_start(sp.first + m.begin);
      const size_t last = char_start(sp.first + m.end - 1);
      const size_t e = last + tok::Utf8CharLen(static_cast<unsigned char>(text[last]));
      const std::string* s = model_->IdToToken(m.id);
      tok::PushToken(recs, m.id, s != nullptr ? *s : std::string(), b, e,
                     static_cast<size_t>(m.id) < is_special_.size() && is_special_[m.id]);
    }
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::TokenizePiece(NormString piece, Encoding* recs) const {
  thread_local std::vector<NormString> pieces;
  thread_local std::vector<tok::ModelToken> mtoks;
  pieces.clear();
  pieces.push_back(std::move(piece));
  if (pre_tokenizer_ != nullptr) TOK_RETURN_IF_ERROR(pre_tokenizer_->PreTokenize(&pieces));
  for (const NormString& p : pieces) {
    mtoks.clear();
    TOK_RETURN_IF_ERROR(model_->Tokenize(p.text(), &mtoks));
    for (const tok::ModelToken& m : mtoks) {
      const tok::Span span = p.ToOriginal(m.begin, m.end);
      const std::string* s = model_->IdToToken(m.id);
      tok::PushToken(recs, m.id, s != nullptr ? *s : std::string(), span.first, span.second,
                     static_cast<size_t>(m.id) < is_special_.size() && is_special_[m.id]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Encoding> HfTokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  Encoding recs;
  const size_t guess = text.size() / 3 + 4;
  recs.ids.reserve(guess);
  recs.tokens.reserve(guess);
  recs.byte_offsets.reserve(guess);
  recs.special.reserve(guess);
  std::vector<AddedSplit> splits;
  added_.Split(text, /*normalized_set=*/false, &splits);
  std::vector<AddedSplit> sub;
  for (const AddedSplit& s : splits) {
    if (s.added >= 0) {
      AddAdded(added_.tokens()[s.added], text.substr(s.begin, s.end - s.begin), s.begin, s.end,
               &recs);
      continue;
    }
    if (span_mode_) {
      TOK_RETURN_IF_ERROR(TokenizeSpans(text, s.begin, s.end, &recs));
      continue;
    }
    NormString ns(text, s.begin, s.end);
    if (normalizer_ != nullptr) TOK_RETURN_IF_ERROR(normalizer_->Normalize(&ns));
    if (!added_.has_normalized()) {
      TOK_RETURN_IF_ERROR(TokenizePiece(std::move(ns), &recs));
      continue;
    }
    sub.clear();
    added_.Split(ns.text(), /*normalized_set=*/true, &sub);
    for (const AddedSplit& n : sub) {
      if (n.added >= 0) {
        const tok::Span span = ns.ToOriginal(n.begin, n.end);
        AddAdded(added_.tokens()[n.added], ns.text().substr(n.begin, n.end - n.begin), span.first,
                 span.second, &recs);
      } else {
        TOK_RETURN_IF_ERROR(TokenizePiece(ns.Slice(n.begin, n.end), &recs));
      }
    }
  }
  if (post_processor_ != nullptr) {
    TOK_RETURN_IF_ERROR(post_processor_->Process(&recs, add_special_tokens));
  }
  return recs;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int32_t> ids,
                                                bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* t = TokenString(ids[i]);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot decode id ", ids[i], " at position ",
                                                     i, ": not in the vocabulary (size ",
                                                     vocab_size_, ")"));
    }
    if (skip_special_tokens && special_ids_.contains(ids[i])) continue;
    tokens.push_back(*t);
  }
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");
  TOK_RETURN_IF_ERROR(decoder_->DecodeChain(&tokens, /*display=*/false));
  return absl::StrJoin(tokens, "");
}

absl::StatusOr<std::string> HfTokenizer::DisplayToken(int32_t id) const {
  if (const AddedToken* a = added_.ById(id)) return a->content;
  const std::string* t = model_->IdToToken(id);
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " is not in the vocabulary (size ", vocab_size_, ")"));
  }
  if (decoder_ == nullptr) return *t;
  std::vector<std::string> tokens{*t};
  TOK_RETURN_IF_ERROR(decoder_->DecodeChain(&tokens, /*display=*/true));
  return absl::StrJoin(tokens, "");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewHfTokenizerBackend(std::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::DataLossError("tokenizer.json is not valid JSON (syntax error or bad UTF-8)");
  }
  return NewHfTokenizerBackendFromJson(root);
}

absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewHfTokenizerBackendFromJson(
    const tok::Json& root) {
  TOK_ASSIGN_OR_RETURN(auto t, HfTokenizer::Create(root));
  return std::unique_ptr<TokenizerBackend>(std::move(t));
}

}  // namespace factlens
