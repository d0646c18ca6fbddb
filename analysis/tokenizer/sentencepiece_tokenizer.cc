// SentencePiece backend (tokenizer.model of the original Llama-1/2 releases) through Debian's
// libsentencepiece. Encode adds BOS when add_special_tokens is set (Llama convention:
// add_bos_token=true, add_eos_token=false); special tokens written in the text are NOT matched
// (SentencePiece treats "<s>" in text as plain characters). Decode follows the HF Llama decoder
// chain (▁ -> space, byte pieces -> bytes, U+FFFD per invalid byte, strip one leading space);
// control tokens are kept as their piece text unless skip_special_tokens.
#include <utility>

#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/backend.h"
#include "analysis/tokenizer/sp_wrapper.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581

std::string ReplaceSpaceSymbol(std::string_view piece) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t f = piece.find(kSpaceSymbol, pos);
    out.append(piece.substr(pos, f == std::string_view::npos ? std::string_view::npos : f - pos));
    if (f == std::string_view::npos) break;
    out.push_back(' ');
    pos = f + kSpaceSymbol.size();
  }
  return out;
}

class SentencePieceTokenizer : public TokenizerBackend {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<tok::SpModel> sp) : sp_(std::move(sp)) {}

  absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const override {
    const std::vector<tok::SpModel::Piece> pieces = sp_->Encode(text);
    Encoding enc;
    if (add_special_tokens && sp_->bos_id() >= 0) {
      enc.ids.push_back(sp_->bos_id());
      enc.tokens.push_back(sp_->IdToPiece(sp_->bos_id()));
      enc.byte_offsets.emplace_back(0, 0);
      enc.special.push_back(true);
    }
    for (const tok::SpModel::Piece& p : pieces) {
      enc.ids.push_back(p.id);
      enc.tokens.push_back(p.piece);
      const size_t b = std::min<size_t>(p.begin, text.size());
      const size_t e = std::min<size_t>(std::max<size_t>(p.end, b), text.size());
      enc.byte_offsets.emplace_back(b, e);
      enc.special.push_back(sp_->IsControl(p.id));
    }
    return enc;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override {
    std::string out, bytes;
    auto flush = [&]() {
      if (bytes.empty()) return;
      if (tok::ValidateUtf8(bytes).ok()) {
        out += bytes;
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out += "\xEF\xBF\xBD";
      }
      bytes.clear();
    };
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t id = ids[i];
      if (id < 0 || id >= sp_->size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot decode id ", id, " at position ", i, ": not in the vocabulary"));
      }
      if (skip_special_tokens && sp_->IsControl(id)) continue;
      const std::string& piece = sp_->IdToPiece(id);
      if (sp_->IsByte(id)) {
        if (auto b = tok::ParseByteToken(piece); b.has_value()) {
          bytes.push_back(static_cast<char>(*b));
          continue;
        }
      }
      flush();
      out += ReplaceSpaceSymbol(piece);
    }
    flush();
    if (!out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  absl::StatusOr<std::string> DisplayToken(int32_t id) const override {
    if (id < 0 || id >= sp_->size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is not in the vocabulary"));
    }
    const std::string& piece = sp_->IdToPiece(id);
    if (sp_->IsByte(id)) {
      auto b = tok::ParseByteToken(piece);
      if (b.has_value() && *b < 0x80) return std::string(1, static_cast<char>(*b));
      return piece;
    }
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) return piece;
    return ReplaceSpaceSymbol(piece);
  }

  std::optional<std::string> IdToToken(int32_t id) const override {
    if (id < 0 || id >= sp_->size()) return std::nullopt;
    return sp_->IdToPiece(id);
  }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    const int id = sp_->PieceToId(token);
    if (id < 0 || id >= sp_->size() || sp_->IdToPiece(id) != token) return std::nullopt;
    return id;
  }
  int32_t vocab_size() const override { return sp_->size(); }
  std::optional<int32_t> bos_id() const override {
    return sp_->bos_id() >= 0 ? std::optional<int32_t>(sp_->bos_id()) : std::nullopt;
  }
  std::optional<int32_t> eos_id() const override {
    return sp_->eos_id() >= 0 ? std::optional<int32_t>(sp_->eos_id()) : std::nullopt;
  }

 private:
  std::unique_ptr<tok::SpModel> sp_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewSentencePieceBackend(const std::string& path) {
  std::string error;
  std::unique_ptr<tok::SpModel> sp = tok::SpModel::Load(path, &error);
  if (sp == nullptr) {
    return absl::DataLossError(absl::StrCat("cannot load SentencePiece model ", path, ": ", error));
  }
  return std::unique_ptr<TokenizerBackend>(new SentencePieceTokenizer(std::move(sp)));
}

}  // namespace factlens
