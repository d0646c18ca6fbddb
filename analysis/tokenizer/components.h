// Internal: the pipeline components of a tokenizer.json, each parsed from its JSON object.
// All components are immutable after parsing and their const methods are thread-safe.
//
//   Normalizer     (normalizers.cc)     edits a NormString in place, keeping alignments.
//   PreTokenizer   (pre_tokenizers.cc)  splits pieces further (HF PreTokenizedString::split).
//   Decoder        (decoders.cc)        HF decode_chain over token strings.
//   PostProcessor  (post_processors.cc) adds template special tokens / trims offsets.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_COMPONENTS_H_
#define FACTLENS_ANALYSIS_TOKENIZER_COMPONENTS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/tokenizer/json_util.h"
#include "analysis/tokenizer/normalized_string.h"
#include "analysis/tokenizer/pattern.h"
#include "analysis/tokenizer/tokenizer.h"

namespace factlens::tok {

// Parses HF's {"String": "..."} / {"Regex": "..."} pattern object.
absl::StatusOr<std::unique_ptr<Pattern>> ParsePattern(const Json& j, absl::string_view where);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::Status Normalize(NormString* s) const = 0;
};
// Supported: Sequence, Prepend, Replace. Others -> Unimplemented.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces *pieces by their sub-pieces (empty pieces are dropped).
  virtual absl::Status PreTokenize(std::vector<NormString>* pieces) const = 0;
  // True if this (sequence) ends with a ByteLevel step: the model then works on raw bytes and
  // its vocabulary is mapped from the byte-level alphabet to bytes (equivalent to HF's
  // byte-to-char transform, without materialising it).
  virtual bool byte_level() const { return false; }
  // Fast path for pre-tokenizers that never change the text (Split, ByteLevel without
  // add_prefix_space, Sequences of those): replaces the byte spans of `text` in *spans by their
  // sub-spans, exactly as PreTokenize would slice them. Only valid if SupportsSpans().
  virtual bool SupportsSpans() const { return false; }
  virtual absl::Status SplitSpans(std::string_view text, std::vector<Span>* spans) const {
    return absl::UnimplementedError("SplitSpans");
  }
};
// Supported: Sequence, ByteLevel, Split, Metaspace, Whitespace, WhitespaceSplit.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF decode_chain. With `display` set (DisplayToken), invalid UTF-8 stays visible and nothing
  // strips the leading space of the first token.
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const = 0;
};
// Supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j);

// Appends one token to an encoding under construction (byte offsets only; the facade adds
// the character offsets).
inline void PushToken(Encoding* enc, int32_t id, std::string token, size_t begin, size_t end,
                      bool special) {
  enc->ids.push_back(id);
  enc->tokens.push_back(std::move(token));
  enc->byte_offsets.emplace_back(begin, end);
  enc->special.push_back(special);
}

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Works on ids, tokens, byte_offsets and special of *enc.
  virtual absl::Status Process(Encoding* enc, bool add_special_tokens) const = 0;
  // The id of the special token a single-sequence template puts first (BOS), if any.
  virtual std::optional<int32_t> LeadingSpecialId() const { return std::nullopt; }
};
// Supported: Sequence, TemplateProcessing, ByteLevel.
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const Json& j);

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_COMPONENTS_H_
