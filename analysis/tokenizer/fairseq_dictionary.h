// Internal: a word-level tokenizer backend for a fairseq `Dictionary` file (dict.txt), e.g. the
// one of Baevski & Auli's WikiText-103 language model (`transformer_lm_wiki103`).
//
// Loading follows fairseq's `Dictionary.add_from_file` (fairseq/data/dictionary.py):
//   - ids 0..3 are the specials `<s>`, `<pad>`, `</s>`, `<unk>` (not in the file);
//   - the file is UTF-8, split into lines like Python's text-mode readlines ("\n", "\r\n", "\r");
//     line k (0-based) gets id k + 4; every line, blank ones included, must be
//     `<word> <count>` optionally followed by ` #fairseq:overwrite`: trailing (Python) whitespace
//     is stripped, then the line is split at its LAST ASCII space (the word may contain spaces);
//   - <count> is an integer as Python's int() reads it (surrounding whitespace, a sign, `_`
//     between digits, decimal digits of any script); its value is not used;
//   - a word already in the dictionary (specials included) is an error unless the line carries
//     `#fairseq:overwrite`; an overwriting line still gets its own id k + 4, and looking the word
//     up afterwards gives the newest id (the older id keeps the word as its string).
// Errors: InvalidArgument naming the 1-based line number (malformed line, duplicate word,
// invalid UTF-8), or the size limits below.
//
// Encoding follows fairseq LM scoring (`tokenize_line` + `Dictionary.index` + the `</s>` the LM
// task prepends): the text is split on runs of Python whitespace (`str.isspace()`: Unicode
// White_Space plus U+001C..U+001F), each word is looked up case-sensitively (a literal `<s>`,
// `<pad>`, `</s>`, `<unk>` maps to its special id), unknown words become `<unk>` (id 3);
// add_special_tokens prepends `</s>` (id 2) with offsets [0, 0).
#ifndef FACTLENS_ANALYSIS_TOKENIZER_FAIRSEQ_DICTIONARY_H_
#define FACTLENS_ANALYSIS_TOKENIZER_FAIRSEQ_DICTIONARY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "analysis/tokenizer/backend.h"

namespace factlens {

// Size limits of a dict.txt (the real WikiText-103 dictionary has 267,740 lines, ~3 MB).
inline constexpr size_t kFairseqDictMaxBytes = size_t{64} << 20;
inline constexpr size_t kFairseqDictMaxLines = 10'000'000;

// The fixed ids of fairseq's special symbols.
inline constexpr int32_t kFairseqBosId = 0;  // <s>
inline constexpr int32_t kFairseqPadId = 1;  // <pad>
inline constexpr int32_t kFairseqEosId = 2;  // </s>, also the start token of LM inputs
inline constexpr int32_t kFairseqUnkId = 3;  // <unk>
inline constexpr int32_t kFairseqNumSpecial = 4;

// Parses the contents of a dict.txt. Errors as described above; the messages start with
// "line N: " (or name the limit that was exceeded).
absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewFairseqDictionaryBackend(
    std::string_view dict_txt);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TOKENIZER_FAIRSEQ_DICTIONARY_H_
