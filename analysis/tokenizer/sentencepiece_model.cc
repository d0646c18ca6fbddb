// SentencePiece ModelProto reader (protobuf wire format, proto2) and its HF LlamaConverter
// conversion to a tokenizer.json document. Field numbers: sentencepiece_model.proto.
#include "analysis/tokenizer/sentencepiece_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581 "▁"

// Protobuf wire types.
enum WireType : int {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// Groups nested deeper than this (only possible in unknown fields) are rejected.
constexpr int kMaxGroupDepth = 64;
// Bounds on the merge derivation (far above real models: Llama-2 has 32000 pieces, 58980
// merges and a split work of ~10^6).
constexpr size_t kMaxMerges = size_t{4} << 20;
constexpr uint64_t kMaxSplitWork = uint64_t{1} << 30;

const char* WireTypeName(int wire_type) {
  switch (wire_type) {
    case kVarint:
      return "varint";
    case kFixed64:
      return "fixed64";
    case kLengthDelimited:
      return "length-delimited";
    case kStartGroup:
      return "start-group";
    case kEndGroup:
      return "end-group";
    case kFixed32:
      return "fixed32";
    default:
      return "invalid";
  }
}

// A bounds-checked cursor over one message's bytes. `base` is the absolute offset of data[0]
// in the file (for error messages); `where` names the message ("ModelProto.trainer_spec").
class WireReader {
 public:
  WireReader(std::string_view data, size_t base, std::string_view where)
      : data_(data), base_(base), where_(where) {}

  bool done() const { return pos_ >= data_.size(); }
  size_t offset() const { return base_ + pos_; }

  absl::Status ReadVarint(uint64_t* v) {
    const size_t start = pos_;
    uint64_t result = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos_ >= data_.size()) return Error(start, "truncated varint");
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      if (i == 9 && b > 1) return Error(start, "overlong varint (more than 64 bits)");
      result |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) {
        *v = result;
        return absl::OkStatus();
      }
    }
    return Error(start, "overlong varint (more than 10 bytes)");
  }

  // Reads a tag; the field number is >= 1 and the wire type one of the six defined ones.
  absl::Status ReadTag(uint32_t* field, int* wire_type) {
    const size_t start = pos_;
    uint64_t tag;
    TOK_RETURN_IF_ERROR(ReadVarint(&tag));
    if (tag > 0xFFFFFFFFu) return Error(start, "field tag does not fit in 32 bits");
    *field = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<int>(tag & 7);
    if (*field == 0) return Error(start, "field number 0");
    if (*wire_type > kFixed32) {
      return Error(start, absl::StrCat("invalid wire type ", *wire_type, " for field ", *field));
    }
    return absl::OkStatus();
  }

  absl::Status ReadFixed32(uint32_t* v) {
    if (data_.size() - pos_ < 4) return Error(pos_, "truncated fixed32 value");
    uint32_t r = 0;
    for (int i = 3; i >= 0; --i) r = (r << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += 4;
    *v = r;
    return absl::OkStatus();
  }

  absl::Status ReadLengthDelimited(std::string_view* v, size_t* v_offset) {
    const size_t start = pos_;
    uint64_t len;
    TOK_RETURN_IF_ERROR(ReadVarint(&len));
    if (len > data_.size() - pos_) {
      return Error(start, absl::StrCat("length ", len, " runs past the end of the data (",
                                       data_.size() - pos_, " bytes left)"));
    }
    *v = data_.substr(pos_, static_cast<size_t>(len));
    *v_offset = base_ + pos_;
    pos_ += static_cast<size_t>(len);
    return absl::OkStatus();
  }

  // Skips the value of an unknown field (a whole group for kStartGroup).
  absl::Status SkipField(uint32_t field, int wire_type, int depth) {
    switch (wire_type) {
      case kVarint: {
        uint64_t v;
        return ReadVarint(&v);
      }
      case kFixed64:
        if (data_.size() - pos_ < 8) return Error(pos_, "truncated fixed64 value");
        pos_ += 8;
        return absl::OkStatus();
      case kLengthDelimited: {
        std::string_view v;
        size_t off;
        return ReadLengthDelimited(&v, &off);
      }
      case kFixed32: {
        uint32_t v;
        return ReadFixed32(&v);
      }
      case kStartGroup: {
        if (depth >= kMaxGroupDepth) return Error(pos_, "groups nested too deeply");
        const size_t start = pos_;
        while (true) {
          if (done()) {
            return Error(start, absl::StrCat("unterminated group (field ", field, ")"));
          }
          uint32_t f;
          int wt;
          TOK_RETURN_IF_ERROR(ReadTag(&f, &wt));
          if (wt == kEndGroup) {
            if (f != field) {
              return Error(pos_, absl::StrCat("end-group of field ", f, " closes group ", field));
            }
            return absl::OkStatus();
          }
          TOK_RETURN_IF_ERROR(SkipField(f, wt, depth + 1));
        }
      }
      default:  // kEndGroup outside a group
        return Error(pos_, absl::StrCat("unexpected end-group (field ", field, ")"));
    }
  }

  // DataLoss for a known field with a wire type other than `expected`.
  absl::Status WrongWireType(std::string_view name, uint32_t field, int wire_type, int expected) {
    return Error(pos_,
                 absl::StrCat("field ", AV(name), " (", field, ") has wire type ",
                              WireTypeName(wire_type), ", expected ", WireTypeName(expected)));
  }

  absl::Status Error(size_t pos, std::string_view what) const {
    return absl::DataLossError(
        absl::StrCat("SentencePiece model is not a valid ModelProto: ", AV(what), " at byte ",
                     base_ + pos, " (in ", AV(where_), ")"));
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  size_t base_;
  std::string_view where_;
};

// Field readers that check the wire type first.
absl::Status ReadVarintField(WireReader* r, std::string_view name, uint32_t field, int wt,
                             uint64_t* v) {
  if (wt != kVarint) return r->WrongWireType(name, field, wt, kVarint);
  return r->ReadVarint(v);
}

absl::Status ReadInt32Field(WireReader* r, std::string_view name, uint32_t field, int wt,
                            int32_t* out) {
  uint64_t v;
  TOK_RETURN_IF_ERROR(ReadVarintField(r, name, field, wt, &v));
  // int32 / enum: the low 32 bits (negative values are sign-extended to 64 bits on the wire).
  *out = static_cast<int32_t>(static_cast<uint32_t>(v));
  return absl::OkStatus();
}

absl::Status ReadBoolField(WireReader* r, std::string_view name, uint32_t field, int wt,
                           bool* out) {
  uint64_t v;
  TOK_RETURN_IF_ERROR(ReadVarintField(r, name, field, wt, &v));
  *out = v != 0;
  return absl::OkStatus();
}

absl::Status ReadBytesField(WireReader* r, std::string_view name, uint32_t field, int wt,
                            std::string_view* v, size_t* offset) {
  if (wt != kLengthDelimited) return r->WrongWireType(name, field, wt, kLengthDelimited);
  return r->ReadLengthDelimited(v, offset);
}

absl::Status ReadStringField(WireReader* r, std::string_view name, uint32_t field, int wt,
                             std::string* out) {
  std::string_view v;
  size_t offset;
  TOK_RETURN_IF_ERROR(ReadBytesField(r, name, field, wt, &v, &offset));
  out->assign(v.data(), v.size());
  return absl::OkStatus();
}

// Reads every field of the message `r` holds, in order: on_field(field, wire_type) must consume
// it (or skip it with r->SkipField).
template <typename OnField>
absl::Status ForEachField(WireReader* r, OnField on_field) {
  while (!r->done()) {
    uint32_t field;
    int wt;
    TOK_RETURN_IF_ERROR(r->ReadTag(&field, &wt));
    TOK_RETURN_IF_ERROR(on_field(field, wt));
  }
  return absl::OkStatus();
}

absl::Status ParsePiece(std::string_view data, size_t base, SentencePieceModel::Piece* p) {
  WireReader r(data, base, "ModelProto.pieces");
  return ForEachField(&r, [&](uint32_t field, int wt) -> absl::Status {
    switch (field) {
      case 1:
        return ReadStringField(&r, "piece", field, wt, &p->piece);
      case 2: {
        if (wt != kFixed32) return r.WrongWireType("score", field, wt, kFixed32);
        uint32_t bits;
        TOK_RETURN_IF_ERROR(r.ReadFixed32(&bits));
        static_assert(sizeof(float) == sizeof(uint32_t), "IEEE-754 float expected");
        std::memcpy(&p->score, &bits, sizeof(bits));
        return absl::OkStatus();
      }
      case 3:
        return ReadInt32Field(&r, "type", field, wt, &p->type);
      default:
        return r.SkipField(field, wt, 0);
    }
  });
}

absl::Status ParseTrainerSpec(std::string_view data, size_t base, SentencePieceModel* m) {
  WireReader r(data, base, "ModelProto.trainer_spec");
  return ForEachField(&r, [&](uint32_t field, int wt) -> absl::Status {
    switch (field) {
      case 3:
        return ReadInt32Field(&r, "model_type", field, wt, &m->model_type);
      case 24:
        return ReadBoolField(&r, "treat_whitespace_as_suffix", field, wt,
                             &m->treat_whitespace_as_suffix);
      case 35:
        return ReadBoolField(&r, "byte_fallback", field, wt, &m->byte_fallback);
      case 40:
        return ReadInt32Field(&r, "unk_id", field, wt, &m->unk_id);
      case 41:
        return ReadInt32Field(&r, "bos_id", field, wt, &m->bos_id);
      case 42:
        return ReadInt32Field(&r, "eos_id", field, wt, &m->eos_id);
      case 43:
        return ReadInt32Field(&r, "pad_id", field, wt, &m->pad_id);
      case 45:
        return ReadStringField(&r, "unk_piece", field, wt, &m->unk_piece);
      default:
        return r.SkipField(field, wt, 0);
    }
  });
}

absl::Status ParseNormalizerSpec(std::string_view data, size_t base, SentencePieceModel* m) {
  WireReader r(data, base, "ModelProto.normalizer_spec");
  return ForEachField(&r, [&](uint32_t field, int wt) -> absl::Status {
    switch (field) {
      case 1:
        return ReadStringField(&r, "name", field, wt, &m->normalizer_name);
      case 2: {
        std::string_view v;
        size_t off;
        TOK_RETURN_IF_ERROR(ReadBytesField(&r, "precompiled_charsmap", field, wt, &v, &off));
        m->has_precompiled_charsmap = !v.empty();
        return absl::OkStatus();
      }
      case 3:
        return ReadBoolField(&r, "add_dummy_prefix", field, wt, &m->add_dummy_prefix);
      case 4:
        return ReadBoolField(&r, "remove_extra_whitespaces", field, wt,
                             &m->remove_extra_whitespaces);
      case 5:
        return ReadBoolField(&r, "escape_whitespaces", field, wt, &m->escape_whitespaces);
      default:
        return r.SkipField(field, wt, 0);
    }
  });
}

absl::Status InvalidModel(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("SentencePiece model: ", AV(what)));
}

std::string Quoted(std::string_view s) {
  constexpr size_t kMax = 40;
  return absl::StrCat("\"", AV(s.substr(0, kMax)), s.size() > kMax ? "...\"" : "\"");
}

absl::Status ValidateModel(const SentencePieceModel& m) {
  if (m.pieces.empty()) return InvalidModel("the model has no pieces");
  absl::flat_hash_map<absl::string_view, size_t> seen;
  seen.reserve(m.pieces.size());
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    const SentencePieceModel::Piece& p = m.pieces[i];
    if (p.piece.empty()) return InvalidModel(absl::StrCat("piece ", i, " is empty"));
    if (!ValidateUtf8(p.piece).ok()) {
      return InvalidModel(absl::StrCat("piece ", i, " is not valid UTF-8"));
    }
    if (p.type < SentencePieceModel::kNormal || p.type > SentencePieceModel::kByte) {
      return InvalidModel(absl::StrCat("piece ", i, " has unknown type ", p.type));
    }
    if (std::isnan(p.score)) return InvalidModel(absl::StrCat("piece ", i, " has a NaN score"));
    const auto [it, inserted] = seen.emplace(AV(p.piece), i);
    if (!inserted) {
      return InvalidModel(
          absl::StrCat("piece ", i, " ", Quoted(p.piece), " duplicates piece ", it->second));
    }
  }
  if (!ValidateUtf8(m.unk_piece).ok()) return InvalidModel("unk_piece is not valid UTF-8");
  return absl::OkStatus();
}

const char* ModelTypeName(int32_t t) {
  switch (t) {
    case SentencePieceModel::kUnigram:
      return "UNIGRAM";
    case SentencePieceModel::kBpe:
      return "BPE";
    case SentencePieceModel::kWord:
      return "WORD";
    case SentencePieceModel::kChar:
      return "CHAR";
    default:
      return "unknown";
  }
}

Json AddedTokenJson(int32_t id, const std::string& content, bool special) {
  return Json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
              {"rstrip", false}, {"normalized", false}, {"special", special}};
}

Json ReplaceJson(const char* pattern, const char* content) {
  return Json{{"type", "Replace"}, {"pattern", Json{{"String", pattern}}}, {"content", content}};
}

Json TemplateSpecial(const std::string& token, int type_id) {
  return Json{{"SpecialToken", Json{{"id", token}, {"type_id", type_id}}}};
}

Json TemplateSpecialToken(const std::string& token, int32_t id) {
  return Json{{"id", token}, {"ids", Json::array({id})}, {"tokens", Json::array({token})}};
}

Json TemplateSequence(const char* id, int type_id) {
  return Json{{"Sequence", Json{{"id", id}, {"type_id", type_id}}}};
}

}  // namespace

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes) {
  if (bytes.size() > kMaxSentencePieceModelBytes) {
    return InvalidModel(absl::StrCat("implausibly large file (", bytes.size(), " bytes; limit ",
                                     kMaxSentencePieceModelBytes, ")"));
  }
  SentencePieceModel m;
  WireReader r(bytes, 0, "ModelProto");
  const absl::Status parsed = ForEachField(&r, [&](uint32_t field, int wt) -> absl::Status {
    std::string_view sub;
    size_t sub_offset = 0;
    switch (field) {
      case 1:
        TOK_RETURN_IF_ERROR(ReadBytesField(&r, "pieces", field, wt, &sub, &sub_offset));
        if (m.pieces.size() >= kMaxSentencePieces) {
          return InvalidModel(
              absl::StrCat("implausibly many pieces (limit ", kMaxSentencePieces, ")"));
        }
        m.pieces.emplace_back();
        return ParsePiece(sub, sub_offset, &m.pieces.back());
      case 2:
        TOK_RETURN_IF_ERROR(ReadBytesField(&r, "trainer_spec", field, wt, &sub, &sub_offset));
        return ParseTrainerSpec(sub, sub_offset, &m);
      case 3:
        TOK_RETURN_IF_ERROR(ReadBytesField(&r, "normalizer_spec", field, wt, &sub, &sub_offset));
        return ParseNormalizerSpec(sub, sub_offset, &m);
      default:  // self_test_data (4), denormalizer_spec (5), extensions, unknown fields
        return r.SkipField(field, wt, 0);
    }
  });
  TOK_RETURN_IF_ERROR(parsed);
  TOK_RETURN_IF_ERROR(ValidateModel(m));
  return m;
}

absl::StatusOr<std::vector<std::pair<int32_t, int32_t>>> SentencePieceMerges(
    const SentencePieceModel& model) {
  const size_t n = model.pieces.size();
  absl::flat_hash_map<absl::string_view, int32_t> ids;
  ids.reserve(n);
  uint64_t work = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = model.pieces[i].piece;
    // Last occurrence wins like a Python dict (pieces are unique after validation anyway).
    ids[AV(p)] = static_cast<int32_t>(i);
    work += static_cast<uint64_t>(p.size()) * p.size();
  }
  if (work > kMaxSplitWork) {
    return InvalidModel(
        "pieces are implausibly long in total (deriving the merges would take "
        "too long)");
  }
  struct Merge {
    float score;
    int32_t left;
    int32_t right;
  };
  std::vector<Merge> merges;
  std::vector<Merge> local;
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = model.pieces[i].piece;
    // LlamaConverter replaces pieces 0..2 (unk, bos, eos) by their names with score 0.
    const float score = i < 3 ? 0.0f : model.pieces[i].score;
    local.clear();
    // Split at every character (code point) boundary: Python slices str by characters.
    for (size_t k = Utf8CharLen(static_cast<unsigned char>(p[0])); k < p.size();
         k += Utf8CharLen(static_cast<unsigned char>(p[k]))) {
      const auto l = ids.find(AV(std::string_view(p).substr(0, k)));
      if (l == ids.end()) continue;
      const auto r = ids.find(AV(std::string_view(p).substr(k)));
      if (r == ids.end()) continue;
      local.push_back({score, l->second, r->second});
    }
    std::sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) {
      return a.left != b.left ? a.left < b.left : a.right < b.right;
    });
    merges.insert(merges.end(), local.begin(), local.end());
    if (merges.size() > kMaxMerges) {
      return InvalidModel(absl::StrCat(
          "the vocabulary implies implausibly many merge rules (more than ", kMaxMerges, ")"));
    }
  }
  // Python's sorted(..., reverse=True) is stable: equal scores keep their order.
  std::stable_sort(merges.begin(), merges.end(),
                   [](const Merge& a, const Merge& b) { return a.score > b.score; });
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(merges.size());
  for (const Merge& m : merges) out.emplace_back(m.left, m.right);
  return out;
}

absl::StatusOr<Json> SentencePieceToTokenizerJson(const SentencePieceModel& model,
                                                  const SentencePieceOptions& options) {
  if (model.model_type != SentencePieceModel::kBpe) {
    return absl::UnimplementedError(absl::StrCat(
        "SentencePiece model: model_type ", ModelTypeName(model.model_type), " (", model.model_type,
        ") is not supported; only BPE models (Llama-1/2 style) are converted. Provide a "
        "tokenizer.json instead"));
  }
  const bool identity_rule =
      (model.normalizer_name.empty() || model.normalizer_name == "identity") &&
      !model.has_precompiled_charsmap;
  if (!identity_rule) {
    return absl::UnimplementedError(absl::StrCat(
        "SentencePiece model: normalization rule ",
        Quoted(model.normalizer_name.empty() ? "(custom)" : model.normalizer_name),
        " is not supported (HF's LlamaConverter ignores it, so the result would not match "
        "SentencePiece); only \"identity\". Provide a tokenizer.json instead"));
  }
  if (model.remove_extra_whitespaces) {
    return absl::UnimplementedError(
        "SentencePiece model: normalizer_spec.remove_extra_whitespaces=true is not supported "
        "(HF's LlamaConverter ignores it). Provide a tokenizer.json instead");
  }
  if (!model.escape_whitespaces || model.treat_whitespace_as_suffix) {
    return absl::UnimplementedError(
        "SentencePiece model: escape_whitespaces=false / treat_whitespace_as_suffix=true are "
        "not supported. Provide a tokenizer.json instead");
  }
  TOK_ASSIGN_OR_RETURN(const auto merge_ids, SentencePieceMerges(model));

  const int32_t n = static_cast<int32_t>(model.pieces.size());
  Json vocab = Json::object();
  for (int32_t i = 0; i < n; ++i) vocab[model.pieces[i].piece] = i;
  Json merges = Json::array();
  for (const auto& [l, r] : merge_ids) {
    merges.push_back(Json::array({model.pieces[l].piece, model.pieces[r].piece}));
  }

  // Special tokens named by the options (tokenizer_config.json) or by the model's ids.
  auto special_id = [&](const std::optional<std::string>& name,
                        int32_t model_id) -> std::optional<int32_t> {
    if (name.has_value()) {
      if (auto it = vocab.find(*name); it != vocab.end()) return it->get<int32_t>();
    }
    if (model_id >= 0 && model_id < n) return model_id;
    return std::nullopt;
  };
  const std::optional<int32_t> bos = special_id(options.bos_token, model.bos_id);
  const std::optional<int32_t> eos = special_id(options.eos_token, model.eos_id);

  Json added = Json::array();
  for (int32_t i = 0; i < n; ++i) {
    const SentencePieceModel::Piece& p = model.pieces[i];
    const bool special = p.type == SentencePieceModel::kControl ||
                         p.type == SentencePieceModel::kUnknown || p.piece == model.unk_piece ||
                         i == bos || i == eos;
    if (special || p.type == SentencePieceModel::kUserDefined) {
      added.push_back(AddedTokenJson(i, p.piece, special));
    }
  }

  const bool prefix_space = options.add_prefix_space.value_or(model.add_dummy_prefix);
  Json normalizer = nullptr;
  Json pre_tokenizer = nullptr;
  if (options.legacy) {
    Json seq = Json::array();
    if (prefix_space) seq.push_back(Json{{"type", "Prepend"}, {"prepend", kSpaceSymbol}});
    seq.push_back(ReplaceJson(" ", kSpaceSymbol));
    normalizer = Json{{"type", "Sequence"}, {"normalizers", std::move(seq)}};
  } else {
    pre_tokenizer = Json{{"type", "Metaspace"},
                         {"replacement", kSpaceSymbol},
                         {"prepend_scheme", prefix_space ? "first" : "never"},
                         {"split", false}};
  }

  Json decoders = Json::array(
      {ReplaceJson(kSpaceSymbol, " "), Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}}});
  if (prefix_space) {
    decoders.push_back(Json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }

  // LlamaTokenizerFast.update_post_processor: "[bos:0] $A:0 [eos:0]" and the pair template.
  Json post_processor = nullptr;
  const bool use_bos = options.add_bos_token && bos.has_value();
  const bool use_eos = options.add_eos_token && eos.has_value();
  if (use_bos || use_eos) {
    const std::string& bos_piece = use_bos ? model.pieces[*bos].piece : model.unk_piece;
    const std::string& eos_piece = use_eos ? model.pieces[*eos].piece : model.unk_piece;
    Json single = Json::array();
    if (use_bos) single.push_back(TemplateSpecial(bos_piece, 0));
    single.push_back(TemplateSequence("A", 0));
    if (use_eos) single.push_back(TemplateSpecial(eos_piece, 0));
    Json pair = single;
    if (use_bos) pair.push_back(TemplateSpecial(bos_piece, 1));
    pair.push_back(TemplateSequence("B", 1));
    if (use_eos) pair.push_back(TemplateSpecial(eos_piece, 1));
    Json specials = Json::object();
    if (use_bos) specials[bos_piece] = TemplateSpecialToken(bos_piece, *bos);
    if (use_eos) specials[eos_piece] = TemplateSpecialToken(eos_piece, *eos);
    post_processor = Json{{"type", "TemplateProcessing"},
                          {"single", std::move(single)},
                          {"pair", std::move(pair)},
                          {"special_tokens", std::move(specials)}};
  }

  return Json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", std::move(normalizer)},
      {"pre_tokenizer", std::move(pre_tokenizer)},
      {"post_processor", std::move(post_processor)},
      {"decoder", Json{{"type", "Sequence"}, {"decoders", std::move(decoders)}}},
      {"model", Json{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", model.unk_piece},
                     {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr},
                     {"fuse_unk", true},
                     {"byte_fallback", true},
                     {"vocab", std::move(vocab)},
                     {"merges", std::move(merges)}}},
  };
}

}  // namespace factlens::tok
