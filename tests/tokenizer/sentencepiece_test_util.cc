// The only test translation unit that includes the sentencepiece headers (see the header).
#include "tests/tokenizer/sentencepiece_test_util.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>

namespace factlens::testing {

bool TrainSentencePiece(const std::string& dir, const std::vector<std::string>& lines,
                        const std::string& flags, std::string* error) {
  const std::string corpus = dir + "/corpus.txt";
  {
    std::ofstream out(corpus, std::ios::binary);
    for (const std::string& l : lines) out << l << "\n";
    if (!out) {
      *error = "cannot write " + corpus;
      return false;
    }
  }
  const std::string args = "--input=" + corpus + " --model_prefix=" + dir + "/tokenizer " + flags +
                           " --minloglevel=2 --num_threads=1";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool TrainTinySentencePiece(const std::string& dir, std::string* error) {
  std::vector<std::string> lines;
  const char* base[] = {
      "The capital of France is Paris.", "The capital of Germany is Berlin.",
      "The capital of Italy is Rome.",   "Tim Duncan plays the sport of basketball.",
      "Hello world, hello tokenizer.",   "Paris is the capital of France.",
  };
  for (int rep = 0; rep < 20; ++rep) {
    for (const char* l : base) lines.emplace_back(l);
  }
  return TrainSentencePiece(
      dir, lines, "--vocab_size=400 --model_type=bpe --byte_fallback=true --character_coverage=1.0",
      error);
}

struct SpReference::Rep {
  sentencepiece::SentencePieceProcessor sp;
};

SpReference::SpReference() : rep_(std::make_unique<Rep>()) {}
SpReference::~SpReference() = default;

std::unique_ptr<SpReference> SpReference::Load(const std::string& model_path, std::string* error) {
  std::unique_ptr<SpReference> r(new SpReference());
  const auto status = r->rep_->sp.Load(model_path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return r;
}

bool SpReference::Encode(const std::string& text, std::vector<int>* ids,
                         std::vector<std::string>* pieces, std::string* error) const {
  ids->clear();
  pieces->clear();
  const auto spt = rep_->sp.EncodeAsImmutableProto(text);
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    const auto p = spt.pieces(static_cast<int>(i));
    ids->push_back(static_cast<int>(p.id()));
    pieces->push_back(p.piece());
  }
  (void)error;
  return true;
}

bool SpReference::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  const auto status = rep_->sp.Decode(ids, text);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

int SpReference::size() const { return rep_->sp.GetPieceSize(); }
int SpReference::bos_id() const { return rep_->sp.bos_id(); }
int SpReference::eos_id() const { return rep_->sp.eos_id(); }
int SpReference::unk_id() const { return rep_->sp.unk_id(); }

}  // namespace factlens::testing
