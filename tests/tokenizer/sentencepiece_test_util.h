// Test helper: trains a tiny SentencePiece BPE model (byte fallback on) with Debian's
// libsentencepiece_train. Kept in its own translation unit because the sentencepiece headers
// clash with Debian's abseil (see analysis/tokenizer/sp_wrapper.h).
#ifndef FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_
#define FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_

#include <string>
#include <vector>

namespace factlens::testing {

// Writes <dir>/tokenizer.model (and tokenizer.vocab); false + *error on failure.
bool TrainTinySentencePiece(const std::string& dir, std::string* error);

// Encodes `text` directly with libsentencepiece (reference for the wrapper): ids.
bool SentencePieceReferenceIds(const std::string& model, const std::string& text,
                               std::vector<int>* ids, std::string* error);

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_
