// libFuzzer target: Encode + Decode + DisplayToken on the real GPT-2 / Llama-2 / Llama-3
// tokenizers with arbitrary bytes, the tokenizer.json loader on arbitrary (small) JSON, and the
// SentencePiece tokenizer.model reader on arbitrary bytes.
// Input: byte 0 selects the mode, the rest is the payload.
//   mode % 4 in {0,1,2}: tokenizer gpt2/llama2/llama3; bit 2: add_special_tokens.
//   mode % 4 == 3, bit 4 clear: payload is a tokenizer.json; if it loads, encode/decode with it.
//   mode % 4 == 3, bit 4 set: payload is a tokenizer.model (serialized ModelProto); if it
//     loads, encode/decode with it. Seeds: tests/tokenizer/fuzz_corpus/seed_spm_*
//     (make_sentencepiece_fuzz_seeds.py).
// Invariants checked (abort on violation): offsets inside the text and ordered, equal lengths,
// decoding our own ids succeeds, invalid UTF-8 is rejected with InvalidArgument; a bad
// tokenizer.model fails only with DataLoss / InvalidArgument / Unimplemented and a loaded one
// has a consistent vocabulary.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "analysis/tokenizer/tokenizer.h"

namespace {

std::unique_ptr<factlens::Tokenizer> g_tokenizers[3];

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
