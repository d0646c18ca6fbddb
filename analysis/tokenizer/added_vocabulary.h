// Internal: HF added tokens (special or not) and the splitting of text around them: leftmost-
// longest matching (like HF's Aho-Corasick), honouring single_word, lstrip and rstrip. Tokens with
// normalized=false are matched on the original text, normalized=true ones on the normalized
// text. Immutable after construction; thread-safe.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_ADDED_VOCABULARY_H_
#define FACTLENS_ANALYSIS_TOKENIZER_ADDED_VOCABULARY_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/json_util.h"

namespace factlens::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A split of a text: [begin, end) bytes, and the added token it is (index), or -1.
struct AddedSplit {
  size_t begin;
  size_t end;
  int added;
};

class AddedVocabulary {
 public:
  // `added_tokens`: the JSON array (may be null/absent). `normalizer` (may be null) normalizes
  // the contents of normalized=true tokens for matching.
  static absl::StatusOr<AddedVocabulary> FromJson(const Json* added_tokens,
                                                  const Normalizer* normalizer);

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* ById(int32_t id) const;
  const AddedToken* ByContent(std::string_view content) const;
  bool has_normalized() const { return !normalized_.empty(); }

  // HF AddedVocabulary::find_matches over `text` with the raw (normalized=false) or the
  // normalized token set. Covers the whole text; an empty text gives one empty non-added split.
  void Split(std::string_view text, bool normalized_set, std::vector<AddedSplit>* out) const;

 private:
  struct Matcher {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;
      int32_t terminal = -1;  // index into tokens_
    };
    std::vector<Node> nodes{Node()};
    std::array<bool, 256> first{};
    void Add(std::string_view pattern, int32_t index);
    // Longest pattern starting at `pos`: its length and token index, or 0.
    size_t LongestAt(std::string_view text, size_t pos, int32_t* index) const;
  };
  void SplitWith(const Matcher& m, std::string_view text, std::vector<AddedSplit>* out) const;

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, int32_t> by_id_;
  absl::flat_hash_map<std::string, int32_t> by_content_;
  Matcher raw_;
  Matcher normalized_matcher_;
  std::vector<int32_t> normalized_;  // indices of normalized=true tokens
};

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_ADDED_VOCABULARY_H_
