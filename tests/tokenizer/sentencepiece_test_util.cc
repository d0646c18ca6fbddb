#include "tests/tokenizer/sentencepiece_test_util.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>

namespace factlens::testing {

bool TrainTinySentencePiece(const std::string& dir, std::string* error) {
  const std::string corpus = dir + "/corpus.txt";
  {
    std::ofstream out(corpus);
    const char* lines[] = {
        "The capital of France is Paris.", "The capital of Germany is Berlin.",
        "The capital of Italy is Rome.",   "Tim Duncan plays the sport of basketball.",
        "Hello world, hello tokenizer.",   "Paris is the capital of France.",
    };
    for (int rep = 0; rep < 20; ++rep) {
      for (const char* l : lines) out << l << "\n";
    }
  }
  const std::string args = "--input=" + corpus + " --model_prefix=" + dir +
                           "/tokenizer --vocab_size=400 --model_type=bpe --byte_fallback=true "
                           "--character_coverage=1.0 --minloglevel=2";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool SentencePieceReferenceIds(const std::string& model, const std::string& text,
                               std::vector<int>* ids, std::string* error) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(model);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  const auto s = sp.Encode(text, ids);
  if (!s.ok()) {
    *error = s.ToString();
    return false;
  }
  return true;
}

}  // namespace factlens::testing
