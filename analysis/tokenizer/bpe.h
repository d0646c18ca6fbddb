// Internal: the HF BPE model (vocab + ranked merges, byte_fallback, unk/fuse_unk,
// continuing_subword_prefix / end_of_word_suffix, ignore_merges) with a bounded word cache.
// Merges are applied lowest rank first, leftmost first among equal ranks — the order of HF's
// priority queue. Immutable after load; Tokenize is thread-safe (the cache is sharded and
// mutex-protected).
#ifndef FACTLENS_ANALYSIS_TOKENIZER_BPE_H_
#define FACTLENS_ANALYSIS_TOKENIZER_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/tokenizer/json_util.h"

namespace factlens::tok {

struct ModelToken {
  int32_t id;
  uint32_t begin;  // byte offsets within the word
  uint32_t end;
};

// One symbol of a word being merged (a doubly linked list over a vector).
struct BpeSymbol {
  int32_t id;
  uint32_t begin;
  uint32_t len;
  int32_t prev;
  int32_t next;
};

class WordCache;

class BpeModel {
 public:
  // `byte_level`: the pre-tokenizer ends with ByteLevel, so words arrive as raw bytes and the
  // vocabulary is looked up through the byte-level alphabet.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const Json& model, bool byte_level);
  ~BpeModel();

  // Appends the tokens of `word` (offsets relative to `word`). Empty word -> nothing.
  absl::Status Tokenize(std::string_view word, std::vector<ModelToken>* out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary string of `id`, or nullptr.
  const std::string* IdToToken(int32_t id) const;
  // 1 + the largest id in the vocabulary.
  int32_t id_bound() const { return static_cast<int32_t>(id_to_token_.size()); }

  // Tokenizes `word` as one unit: no cache, no splitting at metaspace boundaries (reference for
  // tests; Tokenize must give the same result).
  absl::Status TokenizeWhole(std::string_view word, std::vector<ModelToken>* out) const;
  // True if words are split before each "▁" that follows another character (exact: no merge
  // rule joins such a pair; see bpe.cc).
  bool splits_at_metaspace() const { return metaspace_split_; }

  // Exposed for tests: the priority-queue merge loop and a straightforward quadratic reference
  // (repeatedly merge the lowest-rank, leftmost adjacent pair). Both leave the merged symbols
  // in `syms` (dead symbols have len 0).
  void MergeWithQueue(std::vector<BpeSymbol>* syms) const;
  void MergeQuadratic(std::vector<BpeSymbol>* syms) const;
  // Initial symbols of a word (characters or bytes, with byte fallback / unk handling).
  absl::Status InitialSymbols(std::string_view word, std::vector<BpeSymbol>* syms) const;

 private:
  BpeModel();
  struct MergeInfo {
    int32_t rank;
    int32_t new_id;
  };
  const MergeInfo* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
                           static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  bool byte_level_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::optional<std::string> unk_token_;
  std::string prefix_;  // continuing_subword_prefix, in the model's word alphabet
  std::string suffix_;  // end_of_word_suffix, in the model's word alphabet
  // Original vocabulary strings.
  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  // Lookup table in the word alphabet (raw bytes for byte-level models; else == vocab_).
  absl::flat_hash_map<std::string, int32_t> word_vocab_;
  std::array<int32_t, 256> byte_ids_{};           // byte-level: id of each single byte, or -1
  std::array<int32_t, 256> byte_fallback_ids_{};  // id of "<0xNN>", or -1
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  std::unique_ptr<WordCache> cache_;
  bool metaspace_split_ = false;
  absl::Status TokenizeCached(std::string_view word, std::vector<ModelToken>* out) const;
};

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_BPE_H_
