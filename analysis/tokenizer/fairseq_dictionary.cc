#include "analysis/tokenizer/fairseq_dictionary.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens {
namespace {

constexpr std::string_view kSpecials[kFairseqNumSpecial] = {"<s>", "<pad>", "</s>", "<unk>"};
constexpr std::string_view kOverwriteFlag = "#fairseq:overwrite";

// Python's str.isspace() (also what `\s` of a str regex, str.split() and str.strip() use):
// Unicode White_Space plus the separators U+001C..U+001F.
bool IsPythonWhitespace(uint32_t cp) {
  return (cp >= 0x1C && cp <= 0x1F) || tok::IsUnicodeWhitespace(cp);
}

// s without leading (`left`) and trailing Python whitespace; s must be valid UTF-8.
std::string_view PythonStrip(std::string_view s, bool left) {
  size_t begin = 0;
  size_t end = 0;  // end of the last non-whitespace character
  bool seen = false;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    const uint32_t cp = tok::DecodeUtf8(s, i, &len);
    if (!IsPythonWhitespace(cp)) {
      if (!seen) begin = i;
      seen = true;
      end = i + len;
    }
    i += len;
  }
  if (!seen) return s.substr(0, 0);
  return left ? s.substr(begin, end - begin) : s.substr(0, end);
}

// Code points of the digit zero of every Unicode decimal-digit run (general category Nd: ten
// consecutive code points 0..9), Unicode 14.0 as in Python 3.11's unicodedata.
constexpr uint32_t kDecimalZeros[] = {
    0x30,    0x660,   0x6f0,   0x7c0,   0x966,   0x9e6,   0xa66,   0xae6,   0xb66,   0xbe6,
    0xc66,   0xce6,   0xd66,   0xde6,   0xe50,   0xed0,   0xf20,   0x1040,  0x1090,  0x17e0,
    0x1810,  0x1946,  0x19d0,  0x1a80,  0x1a90,  0x1b50,  0x1bb0,  0x1c40,  0x1c50,  0xa620,
    0xa8d0,  0xa900,  0xa9d0,  0xa9f0,  0xaa50,  0xabf0,  0xff10,  0x104a0, 0x10d30, 0x11066,
    0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730, 0x118e0,
    0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2,
    0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0};

bool IsDecimalDigit(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  for (const uint32_t zero : kDecimalZeros) {
    if (cp >= zero && cp < zero + 10) return true;
  }
  return false;
}

// Whether `field` (valid UTF-8) is an integer as Python's int(field) reads it: optional
// surrounding whitespace, an optional sign, decimal digits of any script with single `_`
// between them.
bool IsPythonInt(std::string_view field) {
  std::string_view s = PythonStrip(field, /*left=*/true);
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.remove_prefix(1);
  bool prev_digit = false;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    const uint32_t cp = tok::DecodeUtf8(s, i, &len);
    if (IsDecimalDigit(cp)) {
      prev_digit = true;
    } else if (cp == '_' && prev_digit) {
      prev_digit = false;
    } else {
      return false;
    }
    i += len;
  }
  return prev_digit;  // false for "" and for a trailing '_'
}

// At most ~60 bytes of a (valid UTF-8) line for an error message, cut at a character boundary.
std::string Excerpt(std::string_view line) {
  constexpr size_t kMax = 60;
  if (line.size() <= kMax) return std::string(line);
  size_t cut = kMax;
  while (cut > 0 && tok::IsUtf8Continuation(static_cast<unsigned char>(line[cut]))) --cut;
  return absl::StrCat(tok::AV(line.substr(0, cut)), "...");
}

class FairseqDictionary : public TokenizerBackend {
 public:
  // Built in place on the heap and never moved: symbols_ and index_ view into storage_.
  static absl::StatusOr<std::unique_ptr<FairseqDictionary>> Create(std::string_view dict_txt);

  absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  absl::StatusOr<std::string> DisplayToken(int32_t id) const override;
  std::optional<std::string> IdToToken(int32_t id) const override {
    if (!Valid(id)) return std::nullopt;
    return std::string(symbols_[id]);
  }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    const auto it = index_.find(token);
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(symbols_.size()); }
  std::optional<int32_t> bos_id() const override { return kFairseqEosId; }
  std::optional<int32_t> eos_id() const override { return kFairseqEosId; }
  std::optional<int32_t> unknown_word_id() const override { return kFairseqUnkId; }

 private:
  FairseqDictionary() = default;
  absl::Status Parse();
  bool Valid(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < symbols_.size(); }
  void AddWord(std::string_view text, size_t begin, size_t end, Encoding* enc) const;

  std::string storage_;                    // the dict.txt contents
  std::vector<std::string_view> symbols_;  // id -> word (views into storage_ / literals)
  absl::flat_hash_map<std::string_view, int32_t> index_;  // word -> newest id
};

absl::StatusOr<std::unique_ptr<FairseqDictionary>> FairseqDictionary::Create(
    std::string_view dict_txt) {
  if (dict_txt.size() > kFairseqDictMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat("dict.txt is too large: ", dict_txt.size(),
                                                   " bytes (at most ", kFairseqDictMaxBytes, ")"));
  }
  auto d = std::unique_ptr<FairseqDictionary>(new FairseqDictionary());
  d->storage_.assign(dict_txt.data(), dict_txt.size());
  TOK_RETURN_IF_ERROR(d->Parse());
  return d;
}

// The line starting at *pos, without its terminator, as Python's universal-newline readlines()
// delimits it ("\n", "\r\n" or "\r"); advances *pos past the terminator.
std::string_view NextLine(std::string_view text, size_t* pos) {
  size_t eol = *pos;
  while (eol < text.size() && text[eol] != '\n' && text[eol] != '\r') ++eol;
  const std::string_view line = text.substr(*pos, eol - *pos);
  *pos = eol;
  if (eol < text.size()) {
    *pos += (text[eol] == '\r' && eol + 1 < text.size() && text[eol + 1] == '\n') ? 2 : 1;
  }
  return line;
}

absl::Status FairseqDictionary::Parse() {
  for (int32_t id = 0; id < kFairseqNumSpecial; ++id) {
    symbols_.push_back(kSpecials[id]);
    index_.emplace(kSpecials[id], id);
  }
  const std::string_view text(storage_);
  // fairseq decodes the whole file before it reads a line, so invalid UTF-8 anywhere comes first.
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    const std::string_view raw = NextLine(text, &pos);
    ++line_no;
    if (line_no > kFairseqDictMaxLines) {
      return absl::InvalidArgumentError(
          absl::StrCat("dict.txt has more than ", kFairseqDictMaxLines, " lines"));
    }
    for (size_t i = 0; i < raw.size();) {
      const size_t len = tok::ValidUtf8SeqLen(raw, i);
      if (len == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "line ", line_no, ": invalid UTF-8 at byte ", i, " of the line (byte offset ",
            raw.data() - text.data() + i, " of the file)"));
      }
      i += len;
    }
  }
  symbols_.reserve(kFairseqNumSpecial + line_no);
  index_.reserve(kFairseqNumSpecial + line_no);
  line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    const std::string_view raw = NextLine(text, &pos);
    ++line_no;
    // line.rstrip().rsplit(" ", 1), then once more after a trailing "#fairseq:overwrite".
    const auto malformed = [&]() {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": expected \"<word> <count>\" optionally followed by \" ",
                       tok::AV(kOverwriteFlag), "\", got \"", Excerpt(raw), "\""));
    };
    std::string_view word = PythonStrip(raw, /*left=*/false);
    size_t space = word.rfind(' ');
    if (space == std::string_view::npos) return malformed();
    std::string_view field = word.substr(space + 1);
    word = word.substr(0, space);
    const bool overwrite = field == kOverwriteFlag;
    if (overwrite) {
      space = word.rfind(' ');
      if (space == std::string_view::npos) return malformed();
      field = word.substr(space + 1);
      word = word.substr(0, space);
    }
    if (!IsPythonInt(field)) return malformed();
    const int32_t id = static_cast<int32_t>(symbols_.size());
    if (overwrite) {
      index_.insert_or_assign(word, id);
    } else if (const auto [it, inserted] = index_.emplace(word, id); !inserted) {
      const int32_t old = it->second;
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", line_no, ": duplicate word \"", Excerpt(word), "\" (already ",
          old < kFairseqNumSpecial ? "a special symbol" : absl::StrCat("on line ", old - 3),
          "); append \" ", tok::AV(kOverwriteFlag), "\" to the line to redefine it"));
    }
    symbols_.push_back(word);
  }
  return absl::OkStatus();
}

void FairseqDictionary::AddWord(std::string_view text, size_t begin, size_t end,
                                Encoding* enc) const {
  const std::string_view word = text.substr(begin, end - begin);
  const auto it = index_.find(word);
  if (it == index_.end()) {
    tok::PushToken(enc, kFairseqUnkId, std::string(kSpecials[kFairseqUnkId]), begin, end,
                   /*special=*/false);
  } else {
    // A special symbol written in the text (e.g. "</s>") is that special token, as in fairseq.
    tok::PushToken(enc, it->second, std::string(word), begin, end,
                   /*special=*/it->second < kFairseqNumSpecial);
  }
}

absl::StatusOr<Encoding> FairseqDictionary::Encode(std::string_view text,
                                                   bool add_special_tokens) const {
  Encoding enc;
  if (add_special_tokens) {
    tok::PushToken(&enc, kFairseqEosId, std::string(kSpecials[kFairseqEosId]), 0, 0,
                   /*special=*/true);
  }
  constexpr size_t kNone = std::string_view::npos;
  size_t word_begin = kNone;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const uint32_t cp = tok::DecodeUtf8(text, i, &len);
    if (IsPythonWhitespace(cp)) {
      if (word_begin != kNone) AddWord(text, word_begin, i, &enc);
      word_begin = kNone;
    } else if (word_begin == kNone) {
      word_begin = i;
    }
    i += len;
  }
  if (word_begin != kNone) AddWord(text, word_begin, text.size(), &enc);
  return enc;
}

absl::StatusOr<std::string> FairseqDictionary::Decode(absl::Span<const int32_t> ids,
                                                      bool skip_special_tokens) const {
  std::string out;
  bool first = true;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!Valid(ids[i])) {
      return absl::InvalidArgumentError(absl::StrCat("cannot decode id ", ids[i], " at position ",
                                                     i, ": not in the vocabulary (size ",
                                                     symbols_.size(), ")"));
    }
    if (skip_special_tokens && ids[i] < kFairseqNumSpecial) continue;
    if (!first) out.push_back(' ');
    first = false;
    out.append(symbols_[ids[i]]);
  }
  return out;
}

absl::StatusOr<std::string> FairseqDictionary::DisplayToken(int32_t id) const {
  if (!Valid(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " is not in the vocabulary (size ", symbols_.size(), ")"));
  }
  if (id < kFairseqNumSpecial) return std::string(symbols_[id]);
  // Words follow a space in running text: shown like GPT-2's "ĠParis" -> " Paris".
  return absl::StrCat(" ", tok::AV(symbols_[id]));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerBackend>> NewFairseqDictionaryBackend(
    std::string_view dict_txt) {
  TOK_ASSIGN_OR_RETURN(auto d, FairseqDictionary::Create(dict_txt));
  return std::unique_ptr<TokenizerBackend>(std::move(d));
}

}  // namespace factlens
