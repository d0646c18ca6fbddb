// The only translation unit that includes <sentencepiece_processor.h> (see sp_wrapper.h).
#include "analysis/tokenizer/sp_wrapper.h"

#include <sentencepiece_processor.h>

namespace factlens::tok {

struct SpModel::Rep {
  sentencepiece::SentencePieceProcessor sp;
};

SpModel::SpModel() : rep_(std::make_unique<Rep>()) {}
SpModel::~SpModel() = default;

std::unique_ptr<SpModel> SpModel::Load(const std::string& path, std::string* error) {
  std::unique_ptr<SpModel> m(new SpModel());
  const auto status = m->rep_->sp.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return m;
}

std::vector<SpModel::Piece> SpModel::Encode(std::string_view text) const {
  const sentencepiece::ImmutableSentencePieceText spt = rep_->sp.EncodeAsImmutableProto(text);
  std::vector<Piece> out;
  out.reserve(spt.pieces_size());
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    const auto p = spt.pieces(static_cast<int>(i));
    out.push_back({static_cast<int32_t>(p.id()), p.piece(), p.begin(), p.end()});
  }
  return out;
}

int32_t SpModel::size() const { return rep_->sp.GetPieceSize(); }
const std::string& SpModel::IdToPiece(int32_t id) const { return rep_->sp.IdToPiece(id); }
int32_t SpModel::PieceToId(std::string_view piece) const { return rep_->sp.PieceToId(piece); }
bool SpModel::IsControl(int32_t id) const { return rep_->sp.IsControl(id); }
bool SpModel::IsByte(int32_t id) const { return rep_->sp.IsByte(id); }
bool SpModel::IsUnknown(int32_t id) const { return rep_->sp.IsUnknown(id); }
int32_t SpModel::bos_id() const { return rep_->sp.bos_id(); }
int32_t SpModel::eos_id() const { return rep_->sp.eos_id(); }

}  // namespace factlens::tok
