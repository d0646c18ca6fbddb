// Internal: the interface behind factlens::Tokenizer, implemented by the tokenizer.json pipeline
// (hf_tokenizer.cc) and by fairseq word-level dictionaries (fairseq_dictionary.h); SentencePiece
// models are converted to the tokenizer.json pipeline's document (sentencepiece_model.h).
// Contract: implementations are immutable after construction and thread-safe for const calls.
// Encode receives text that the facade has already validated as UTF-8 and fills ids, tokens,
// byte_offsets and special; the facade computes the character offsets.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_BACKEND_H_
#define FACTLENS_ANALYSIS_TOKENIZER_BACKEND_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "analysis/tokenizer/json_util.h"
#include "analysis/tokenizer/tokenizer.h"

namespace factlens {

class TokenizerBackend {
 public:
  virtual ~TokenizerBackend() = default;
  virtual absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                             bool skip_special_tokens) const = 0;
  virtual absl::StatusOr<std::string> DisplayToken(int32_t id) const = 0;
  virtual std::optional<std::string> IdToToken(int32_t id) const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  // Word-level vocabularies (fairseq dict.txt) encode each whitespace-separated word on its own
  // and map unknown words to this id; subword tokenizers return nullopt.
  virtual std::optional<int32_t> unknown_word_id() const { return std::nullopt; }
};

// Factories (hf_tokenizer.cc): from tokenizer.json text (not JSON -> DataLoss) or from an
// already parsed document (e.g. a converted SentencePiece model).
absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewHfTokenizerBackend(std::string_view json);
absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewHfTokenizerBackendFromJson(
    const tok::Json& root);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TOKENIZER_BACKEND_H_
