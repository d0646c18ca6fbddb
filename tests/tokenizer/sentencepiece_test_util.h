// Test helpers around Debian's libsentencepiece (+ libsentencepiece_train), the REFERENCE for
// the tokenizer.model reader. Only the tokenizer test binaries link libsentencepiece (never a
// library: its libprotobuf-lite clashes with libtorch's libprotobuf). Kept in their own
// translation unit because <sentencepiece_processor.h> declares absl::string_view as
// std::string_view, which clashes with Debian's abseil; this header uses standard types only.
// Thread-safety: SpReference is safe for concurrent const calls after Load.
#ifndef FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_
#define FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

namespace factlens::testing {

// Trains a SentencePiece model on `lines` (written to <dir>/corpus.txt) with the trainer flags
// `flags` (e.g. "--model_type=bpe --vocab_size=400"); writes <dir>/tokenizer.model.
// false + *error on failure.
bool TrainSentencePiece(const std::string& dir, const std::vector<std::string>& lines,
                        const std::string& flags, std::string* error);

// Trains the historical tiny BPE model of the tests (byte fallback, default normalization).
bool TrainTinySentencePiece(const std::string& dir, std::string* error);

// libsentencepiece's own encoder / decoder for a model file.
class SpReference {
 public:
  // Null + *error on failure.
  static std::unique_ptr<SpReference> Load(const std::string& model_path, std::string* error);
  ~SpReference();

  // Ids and pieces of `text` (no BOS/EOS); false + *error on failure.
  bool Encode(const std::string& text, std::vector<int>* ids, std::vector<std::string>* pieces,
              std::string* error) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;
  int size() const;
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;

 private:
  SpReference();
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_TOKENIZER_SENTENCEPIECE_TEST_UTIL_H_
