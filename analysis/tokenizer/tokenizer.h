// Hugging Face tokenizer.json (and SentencePiece tokenizer.model) tokenizers in C++, byte-exact
// with the Rust `tokenizers` library for the BPE pipelines of GPT-2, Llama-2 and Llama-3; and
// fairseq word-level dictionaries (dict.txt, e.g. Baevski & Auli's WikiText-103 LM).
//
// Offsets: `Encoding::offsets` are CHARACTER (Unicode code point) offsets into the input text,
// [begin, end), computed exactly like HF `tokenizers` does for Python strings (a token that covers
// only some bytes of a character covers that whole character). `Encoding::byte_offsets` are the
// same spans as UTF-8 byte offsets. Tokens inserted by a post-processor (e.g. Llama-2's BOS) have
// offsets [0, 0).
//
// Errors: invalid input text (e.g. invalid UTF-8) -> InvalidArgument naming the byte offset;
// a file that cannot be read -> NotFound / PermissionDenied-like codes from the OS (reported as
// NotFound or Unavailable); a tokenizer.json that is not valid JSON -> DataLoss; valid JSON with a
// wrong structure (wrong types, missing fields, merges naming unknown tokens, bad regex) ->
// InvalidArgument; a well-formed but unsupported component (unknown model / normalizer /
// pre-tokenizer / decoder / post-processor type) -> Unimplemented; a malformed fairseq dict.txt
// -> InvalidArgument naming the line. No exception escapes.
//
// Thread-safety: a Tokenizer is immutable after loading; all const methods may be called
// concurrently from several threads (the internal BPE word cache is internally synchronised).
#ifndef FACTLENS_ANALYSIS_TOKENIZER_TOKENIZER_H_
#define FACTLENS_ANALYSIS_TOKENIZER_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace factlens {

// The result of Tokenizer::Encode. All vectors have the same length (one entry per token).
struct Encoding {
  std::vector<int32_t> ids;
  // Token strings as HF reports them: the vocabulary string for model tokens ("ĠParis",
  // "▁Paris", "<0xE2>"), the matched text for added tokens, the template's string for tokens
  // inserted by the post-processor.
  std::vector<std::string> tokens;
  // Character offsets [begin, end) into the input (HF Python semantics).
  std::vector<std::pair<size_t, size_t>> offsets;
  // UTF-8 byte offsets [begin, end) into the input.
  std::vector<std::pair<size_t, size_t>> byte_offsets;
  // True for special tokens: added tokens marked "special" (matched in the text or inserted by
  // the post-processor, e.g. <s>, <|endoftext|>).
  std::vector<bool> special;
};

class TokenizerBackend;  // Implementation interface (analysis/tokenizer/backend.h).

class Tokenizer {  // Immutable after load; all const methods are thread-safe.
 public:
  // Loads a Hugging Face tokenizer.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonString(std::string_view json);
  // Loads a SentencePiece BPE model file (tokenizer.model of the original Llama-1/2 releases):
  // the file is decoded here (no libsentencepiece) and converted to the tokenizer.json that HF
  // `transformers` builds for it (LlamaConverter, legacy=true, BOS added), so the result is the
  // HF fast tokenizer's. Malformed bytes -> DataLoss; invalid content -> InvalidArgument;
  // UNIGRAM/WORD/CHAR models and normalization HF cannot reproduce -> Unimplemented.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSentencePieceFile(const std::string& path);
  // The same from the file's bytes (a serialized sentencepiece.ModelProto).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSentencePieceString(
      std::string_view model_proto);
  // Loads a fairseq Dictionary file (dict.txt) as a word-level tokenizer that encodes like
  // fairseq's LM scoring: ids 0..3 are <s>, <pad>, </s>, <unk>; line k of the file
  // ("<word> <count>", optionally followed by " #fairseq:overwrite") is id k + 4. Encode splits
  // the text on runs of whitespace (Python's str.isspace(), Unicode included), looks each word
  // up case-sensitively (a literal "<s>", "<pad>", "</s>", "<unk>" is that special, as in
  // fairseq), maps unknown words to <unk> (3; `tokens` says "<unk>", the offsets are the word's)
  // and with add_special_tokens prepends </s> (2, the LM start token; offsets [0, 0)). Decode
  // joins the words with single spaces (skip_special_tokens drops ids 0..3). DisplayToken shows
  // a word with a leading space (" Paris", like GPT-2's "ĠParis") and a special as itself;
  // IdToToken / TokenToId use the raw words; bos_id() = eos_id() = 2.
  // A malformed line (no space, a count that is not an integer, invalid UTF-8) or a duplicate
  // word without " #fairseq:overwrite" (fairseq raises there too) -> InvalidArgument naming the
  // line number; more than 64 MiB or 10,000,000 lines -> InvalidArgument.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFairseqDictFile(const std::string& path);
  // The same from the file's contents.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFairseqDictString(
      std::string_view dict_txt);
  // Loads <dir>/tokenizer.json, else <dir>/tokenizer.model, else <dir>/dict.txt (fairseq). If
  // <dir>/tokenizer_config.json names bos_token / eos_token that exist in the vocabulary, they
  // define bos_id() / eos_id(). For a tokenizer.model its legacy / add_prefix_space /
  // add_bos_token / add_eos_token settings are applied like LlamaTokenizerFast does.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelDirectory(const std::string& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes `text` (must be valid UTF-8, else InvalidArgument naming the byte offset).
  // `add_special_tokens` runs the post-processor's special tokens (e.g. Llama-2's BOS) like HF
  // (fairseq dictionaries: prepends </s>).
  absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const;

  // HF `decode`: ids -> token strings -> decoder chain. Ids outside the vocabulary are an
  // InvalidArgument error (HF silently drops them). Invalid UTF-8 produced by byte tokens becomes
  // U+FFFD like HF.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  // One token as a person reads it in a vocabulary projection: "ĠParis" -> " Paris",
  // "▁Paris" -> " Paris" (no stripping of the leading space). Bytes that are not valid UTF-8 on
  // their own stay visible: byte-level tokens show them as "\xe2" escapes, byte-fallback tokens
  // keep their "<0xE2>" form. Special tokens are shown as their content.
  absl::StatusOr<std::string> DisplayToken(int32_t id) const;

  // Raw vocabulary string, e.g. "ĠParis", "▁Paris"; nullopt for unknown ids.
  std::optional<std::string> IdToToken(int32_t id) const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // 1 + the largest id of the model vocabulary and the added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // Set for word-level vocabularies (fairseq dict.txt), which encode each whitespace-separated
  // word independently of its neighbours and give unknown words this id; nullopt for subword
  // tokenizers, whose encoding of a word depends on the space before it.
  std::optional<int32_t> unknown_word_id() const;

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerBackend> backend);
  std::unique_ptr<TokenizerBackend> backend_;
  std::optional<int32_t> bos_override_;
  std::optional<int32_t> eos_override_;
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TOKENIZER_TOKENIZER_H_
