// libFuzzer target: Encode + Decode + DisplayToken on the real GPT-2 / Llama-2 / Llama-3
// tokenizers with arbitrary bytes, the tokenizer.json loader on arbitrary (small) JSON, the
// SentencePiece tokenizer.model reader on arbitrary bytes, and fairseq dict.txt dictionaries.
// Input: byte 0 selects the mode, the rest is the payload.
//   mode % 4 in {0,1,2}: tokenizer gpt2/llama2/llama3; bit 2: add_special_tokens.
//   mode % 4 == 3, bits 4 and 5 clear: payload is a tokenizer.json; if it loads,
//     encode/decode with it.
//   mode % 4 == 3, bit 4 set, bit 5 clear: payload is a tokenizer.model (serialized
//     ModelProto); if it loads, encode/decode with it. Seeds:
//     tests/tokenizer/fuzz_corpus/seed_spm_* (make_sentencepiece_fuzz_seeds.py).
//   mode % 4 == 3, bit 5 set, bit 4 clear (0x23, 0x27, ...): payload is a fairseq dict.txt; if
//     it loads, encode/decode with it. Seeds: seed_fairseq_dict*.
//   mode % 4 == 3, bits 5 and 4 set (0x33, 0x37, ...): payload is text for the baevski-tiny
//     fixture dict.txt. Seeds: seed_fairseq_text*.
// Invariants checked (abort on violation): offsets inside the text and ordered, equal lengths,
// decoding our own ids succeeds, invalid UTF-8 is rejected with InvalidArgument; a bad
// tokenizer.model fails only with DataLoss / InvalidArgument / Unimplemented and a loaded one
// has a consistent vocabulary; a bad dict.txt fails only with InvalidArgument naming a line, a
// loaded one has 4 + (number of lines) ids whose words map back to ids with the same word;
// with the fixture dictionary, decoding the ids of a text and encoding that again gives the
// same ids.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "analysis/tokenizer/tokenizer.h"

namespace {

std::unique_ptr<factlens::Tokenizer> g_tokenizers[3];
std::unique_ptr<factlens::Tokenizer> g_fairseq;  // the baevski-tiny fixture dict.txt

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

bool ValidUtf8(const std::string& s) {
  // Independent (simple) validator for the cross-check.
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
      n = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4;
      cp = c & 0x07;
    } else
      return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = s[i + k];
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

void Exercise(const factlens::Tokenizer& tok, const std::string& text, bool add_special) {
  auto enc = tok.Encode(text, add_special);
  if (!ValidUtf8(text)) {
    Check(!enc.ok() && enc.status().code() == absl::StatusCode::kInvalidArgument,
          "invalid UTF-8 must be rejected");
    return;
  }
  if (!enc.ok()) {
    // Only engine limits may fail on valid text.
    Check(enc.status().code() == absl::StatusCode::kResourceExhausted ||
              enc.status().code() == absl::StatusCode::kFailedPrecondition,
          "valid text must encode");
    return;
  }
  const size_t n = enc->ids.size();
  Check(enc->tokens.size() == n && enc->offsets.size() == n && enc->byte_offsets.size() == n &&
            enc->special.size() == n,
        "encoding vectors have equal sizes");
  size_t chars = 0;
  for (size_t i = 0; i < text.size(); ++i)
    chars += (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80;
  for (size_t i = 0; i < n; ++i) {
    Check(enc->byte_offsets[i].first <= enc->byte_offsets[i].second, "byte offsets ordered");
    Check(enc->byte_offsets[i].second <= text.size(), "byte offsets inside the text");
    Check(enc->offsets[i].first <= enc->offsets[i].second, "char offsets ordered");
    Check(enc->offsets[i].second <= chars, "char offsets inside the text");
  }
  auto dec = tok.Decode(enc->ids, false);
  Check(dec.ok(), "decoding our own ids succeeds");
  auto dec2 = tok.Decode(enc->ids, true);
  Check(dec2.ok(), "decoding with skip_special_tokens succeeds");
  for (size_t i = 0; i < n && i < 64; ++i) {
    Check(tok.DisplayToken(enc->ids[i]).ok(), "DisplayToken of our own ids succeeds");
  }
}

// Lines of a dict.txt as Python's universal-newline readlines() counts them.
size_t CountLines(const std::string& s) {
  size_t lines = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' || (s[i] == '\r' && (i + 1 == s.size() || s[i + 1] != '\n'))) ++lines;
  }
  if (!s.empty() && s.back() != '\n' && s.back() != '\r') ++lines;
  return lines;
}

void FuzzFairseqDict(const std::string& payload, bool add_special) {
  if (payload.size() > 65536) return;
  auto tok = factlens::Tokenizer::FromFairseqDictString(payload);
  if (!tok.ok()) {
    Check(tok.status().code() == absl::StatusCode::kInvalidArgument,
          "a bad dict.txt fails with InvalidArgument");
    Check(tok.status().message().substr(0, 5) == "line ", "a dict.txt error names the line");
    return;
  }
  const factlens::Tokenizer& t = **tok;
  Check(static_cast<size_t>(t.vocab_size()) == 4 + CountLines(payload),
        "a dict.txt has 4 + (number of lines) ids");
  Check(t.bos_id() == 2 && t.eos_id() == 2, "fairseq start token is </s>");
  for (int32_t id = 0; id < t.vocab_size() && id < 256; ++id) {
    const auto word = t.IdToToken(id);
    Check(word.has_value(), "every id below vocab_size has a word");
    Check(ValidUtf8(*word), "words are valid UTF-8");
    const auto back = t.TokenToId(*word);
    Check(back.has_value() && t.IdToToken(*back) == word, "words map back to an id");
  }
  Exercise(
      t, "Hello  world, <s> caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\n\t123 <unk></s>",
      add_special);
  Exercise(t, payload, add_special);
}

void FuzzFairseqText(const std::string& payload, bool add_special) {
  const factlens::Tokenizer& t = *g_fairseq;
  Exercise(t, payload, add_special);
  auto enc = t.Encode(payload, add_special);
  if (!enc.ok()) return;
  for (size_t i = 0; i < enc->ids.size(); ++i) {
    Check(enc->byte_offsets[i].first < enc->byte_offsets[i].second ||
              (add_special && i == 0 && enc->ids[0] == 2),
          "only the inserted </s> has an empty span");
  }
  auto text = t.Decode(enc->ids, false);
  Check(text.ok(), "decoding our own ids succeeds");
  auto again = t.Encode(*text, false);
  Check(again.ok(), "decoded text encodes");
  std::vector<int32_t> expected = enc->ids;
  if (add_special) expected.erase(expected.begin());  // "</s>" decodes to text and comes back
  if (add_special) Check(again->ids.size() == expected.size() + 1, "</s> round-trips");
  if (add_special) again->ids.erase(again->ids.begin());
  Check(again->ids == expected, "decode + encode gives the ids back (fixture dictionary)");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* names[3] = {"gpt2", "llama2", "llama3"};
  for (int i = 0; i < 3; ++i) {
    auto t = factlens::Tokenizer::FromJsonFile(std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/" +
                                               names[i] + "/tokenizer.json");
    if (!t.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", names[i],
                   std::string(t.status().message()).c_str());
      std::abort();
    }
    g_tokenizers[i] = std::move(*t);
  }
  auto fairseq = factlens::Tokenizer::FromFairseqDictFile(FACTLENS_FAIRSEQ_DICT);
  if (!fairseq.ok()) {
    std::fprintf(stderr, "cannot load %s: %s\n", FACTLENS_FAIRSEQ_DICT,
                 std::string(fairseq.status().message()).c_str());
    std::abort();
  }
  g_fairseq = std::move(*fairseq);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string payload(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool add_special = (mode & 4) != 0;
  if (mode % 4 < 3) {
    const factlens::Tokenizer& tok = *g_tokenizers[mode % 4];
    Exercise(tok, payload, add_special);
    // Decode arbitrary ids (also out-of-range ones) and show them.
    std::vector<int32_t> ids;
    for (size_t i = 0; i + 2 < payload.size() && ids.size() < 256; i += 3) {
      const uint32_t v = (static_cast<uint8_t>(payload[i]) << 16) |
                         (static_cast<uint8_t>(payload[i + 1]) << 8) |
                         static_cast<uint8_t>(payload[i + 2]);
      ids.push_back(static_cast<int32_t>(v % (tok.vocab_size() + 8)) - 4);
    }
    auto dec = tok.Decode(ids, (mode & 8) != 0);
    bool all_valid = true;
    for (int32_t id : ids) all_valid = all_valid && tok.IdToToken(id).has_value();
    Check(dec.ok() == all_valid, "Decode fails exactly on unknown ids");
    if (dec.ok()) Check(ValidUtf8(*dec), "decoded text is valid UTF-8");
    for (int32_t id : ids) {
      auto shown = tok.DisplayToken(id);
      if (shown.ok()) Check(ValidUtf8(*shown), "DisplayToken is valid UTF-8");
    }
    return 0;
  }
  if ((mode & 32) != 0) {
    if ((mode & 16) != 0) {
      FuzzFairseqText(payload, add_special);
    } else {
      FuzzFairseqDict(payload, add_special);
    }
    return 0;
  }
  if ((mode & 16) != 0) {
    if (payload.size() > 65536) return 0;
    auto tok = factlens::Tokenizer::FromSentencePieceString(payload);
    if (!tok.ok()) {
      const absl::StatusCode code = tok.status().code();
      Check(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument ||
                code == absl::StatusCode::kUnimplemented,
            "a bad tokenizer.model fails with DataLoss / InvalidArgument / Unimplemented");
      return 0;
    }
    const factlens::Tokenizer& t = **tok;
    Check(t.vocab_size() > 0, "a loaded tokenizer.model has pieces");
    for (int32_t id = 0; id < t.vocab_size() && id < 64; ++id) {
      const auto piece = t.IdToToken(id);
      Check(piece.has_value(), "every id below vocab_size has a piece");
      Check(t.TokenToId(*piece) == id, "pieces map back to their id");
    }
    Exercise(t, "Hello  world, <s> café 日本 😀\n\t123 <unk></s>", add_special);
    Exercise(t, payload, add_special);
    return 0;
  }
  if (payload.size() > 4096) return 0;
  auto tok = factlens::Tokenizer::FromJsonString(payload);
  if (!tok.ok()) return 0;
  Exercise(**tok, "Hello  world, <s> café 日本 😀\n\t123", add_special);
  Exercise(**tok, payload, add_special);
  return 0;
}
