// Internal: a thin wrapper over sentencepiece::SentencePieceProcessor that exposes only standard
// C++ types. It exists because <sentencepiece_processor.h> declares `absl::string_view` as
// std::string_view, which clashes with Debian's abseil (its own absl::string_view class), so
// sentencepiece and abseil headers must never meet in one translation unit (sp_wrapper.cc holds
// the only include). Thread-safe for const calls after Load.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_SP_WRAPPER_H_
#define FACTLENS_ANALYSIS_TOKENIZER_SP_WRAPPER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace factlens::tok {

class SpModel {
 public:
  struct Piece {
    int32_t id;
    std::string piece;
    uint32_t begin;  // byte offsets into the input
    uint32_t end;
  };
  // Returns null and sets *error on failure.
  static std::unique_ptr<SpModel> Load(const std::string& path, std::string* error);
  ~SpModel();

  std::vector<Piece> Encode(std::string_view text) const;
  int32_t size() const;
  const std::string& IdToPiece(int32_t id) const;  // 0 <= id < size()
  int32_t PieceToId(std::string_view piece) const;
  bool IsControl(int32_t id) const;
  bool IsByte(int32_t id) const;
  bool IsUnknown(int32_t id) const;
  int32_t bos_id() const;  // -1 if none
  int32_t eos_id() const;

 private:
  SpModel();
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_SP_WRAPPER_H_
