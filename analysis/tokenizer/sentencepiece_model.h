// Internal: a SentencePiece `tokenizer.model` (a serialized sentencepiece.ModelProto) reader and
// its conversion to the equivalent Hugging Face tokenizer.json document, the way HF
// `transformers` converts a Llama tokenizer.model (LlamaConverter + SentencePieceExtractor +
// LlamaTokenizerFast's post-processor). No libsentencepiece / libprotobuf: the protobuf wire
// format is decoded here, bounds-checked, and only the fields the conversion needs are kept.
//
// Errors: bytes that are not a well-formed ModelProto (truncated data, bad or overlong varints,
// lengths past the end, wrong wire types for known fields, unbalanced groups) -> DataLoss; a
// well-formed proto with invalid content (no pieces, empty / duplicate / non-UTF-8 pieces, NaN
// scores, out-of-range piece types, implausible sizes) -> InvalidArgument; a valid model this
// library cannot convert exactly (UNIGRAM / WORD / CHAR models, normalization rules other than
// identity, remove_extra_whitespaces, whitespace as suffix, no whitespace escaping)
// -> Unimplemented. No exception escapes.
//
// Thread-safety: pure functions over their arguments; safe to call concurrently.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_SENTENCEPIECE_MODEL_H_
#define FACTLENS_ANALYSIS_TOKENIZER_SENTENCEPIECE_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/tokenizer/json_util.h"

namespace factlens::tok {

// The subset of sentencepiece.ModelProto (sentencepiece_model.proto) that the conversion uses;
// defaults are the proto2 defaults of that file.
struct SentencePieceModel {
  // ModelProto.SentencePiece.Type.
  enum PieceType : int32_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  // TrainerSpec.ModelType.
  enum ModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

  struct Piece {
    std::string piece;       // field 1
    float score = 0.0f;      // field 2
    int32_t type = kNormal;  // field 3 (validated to be a PieceType)
  };
  std::vector<Piece> pieces;  // ModelProto field 1

  // ModelProto.trainer_spec (field 2).
  int32_t model_type = kUnigram;            // 3
  bool treat_whitespace_as_suffix = false;  // 24
  bool byte_fallback = false;               // 35
  int32_t unk_id = 0;                       // 40
  int32_t bos_id = 1;                       // 41
  int32_t eos_id = 2;                       // 42
  int32_t pad_id = -1;                      // 43
  std::string unk_piece = "<unk>";          // 45

  // ModelProto.normalizer_spec (field 3).
  std::string normalizer_name;            // 1
  bool has_precompiled_charsmap = false;  // 2 (non-empty)
  bool add_dummy_prefix = true;           // 3
  bool remove_extra_whitespaces = true;   // 4
  bool escape_whitespaces = true;         // 5
};

// Limits on what the reader accepts (InvalidArgument beyond them).
inline constexpr size_t kMaxSentencePieceModelBytes = size_t{256} << 20;
inline constexpr size_t kMaxSentencePieces = size_t{1} << 20;

// Decodes a serialized ModelProto. Unknown fields of every wire type (including groups) are
// skipped; repeated occurrences of a sub-message are merged like protobuf does. Validates the
// pieces (non-empty, valid UTF-8, unique, known type, score not NaN).
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes);

// The options a tokenizer_config.json gives HF's LlamaTokenizerFast (defaults = HF defaults).
struct SentencePieceOptions {
  bool legacy = true;                    // "legacy"
  std::optional<bool> add_prefix_space;  // "add_prefix_space"; unset: add_dummy_prefix
  bool add_bos_token = true;             // "add_bos_token"
  bool add_eos_token = false;            // "add_eos_token"
  std::optional<std::string> bos_token;  // "bos_token"; unset or unknown: the piece at bos_id
  std::optional<std::string> eos_token;  // "eos_token"; unset or unknown: the piece at eos_id
};

// The HF merges of a BPE SentencePiece vocabulary (SentencePieceExtractor with vocab_scores):
// for every piece (in id order) every split into two vocabulary pieces, ordered by
// (id(left), id(right)); then all stably sorted by the piece's score, highest first (pieces
// 0..2 count as score 0, like LlamaConverter's vocab). Returns pairs of piece ids. Bounded:
// implausibly long pieces or too many merges -> InvalidArgument.
absl::StatusOr<std::vector<std::pair<int32_t, int32_t>>> SentencePieceMerges(
    const SentencePieceModel& model);

// The tokenizer.json document HF builds for a BPE model (LlamaConverter):
//   model: BPE(vocab = piece -> id, merges as above, unk_token = trainer_spec.unk_piece,
//          fuse_unk, byte_fallback);
//   legacy: normalizer Sequence[Prepend("▁") if add_prefix_space, Replace(" ", "▁")],
//           no pre-tokenizer;
//   non-legacy: no normalizer, pre-tokenizer Metaspace("▁", prepend_scheme first/never,
//           split=false);
//   decoder: Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0) if
//           add_prefix_space];
//   post_processor: TemplateProcessing "[bos] $A [eos]" per add_bos_token / add_eos_token;
//   added_tokens: the unk piece, CONTROL pieces and the BOS/EOS pieces (special), USER_DEFINED
//           pieces (not special), all normalized=false.
// byte_fallback is always on (LlamaConverter): without <0xNN> pieces that is the same as off.
// Unsupported models -> Unimplemented (see the file comment).
absl::StatusOr<Json> SentencePieceToTokenizerJson(const SentencePieceModel& model,
                                                  const SentencePieceOptions& options);

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_SENTENCEPIECE_MODEL_H_
