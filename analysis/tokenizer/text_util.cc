#include "analysis/tokenizer/text_util.h"

#include <array>

#include "absl/strings/str_cat.h"

namespace factlens::tok {
namespace {

// Allowed range of the second byte of a sequence led by `lead`; false if `lead` is invalid.
bool SecondByteRange(unsigned char lead, unsigned char* lo, unsigned char* hi, size_t* len) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    *len = 2;
  } else if (lead == 0xE0) {
    *len = 3;
    *lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    *len = 3;
  } else if (lead == 0xED) {
    *len = 3;
    *hi = 0x9F;
  } else if (lead == 0xF0) {
    *len = 4;
    *lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    *len = 4;
  } else if (lead == 0xF4) {
    *len = 4;
    *hi = 0x8F;
  } else {
    return false;
  }
  return true;
}

// Number of bytes from s[i] that form a valid prefix of a UTF-8 sequence (>= 1), and whether
// the sequence is complete.
size_t ValidPrefixLen(std::string_view s, size_t i, bool* complete) {
  *complete = false;
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) {
    *complete = true;
    return 1;
  }
  unsigned char lo, hi;
  size_t len;
  if (!SecondByteRange(lead, &lo, &hi, &len)) return 1;
  size_t n = 1;
  while (n < len && i + n < s.size()) {
    const auto c = static_cast<unsigned char>(s[i + n]);
    const unsigned char l = n == 1 ? lo : 0x80, h = n == 1 ? hi : 0xBF;
    if (c < l || c > h) break;
    ++n;
  }
  *complete = n == len;
  return n;
}

struct ByteTables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // code points used are < 324
  ByteTables() {
    cp_to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteTables& Tables() {
  static const ByteTables* const tables = new ByteTables();
  return *tables;
}

}  // namespace

size_t ValidUtf8SeqLen(std::string_view s, size_t i) {
  bool complete;
  const size_t n = ValidPrefixLen(s, i, &complete);
  return complete ? n : 0;
}

absl::Status ValidateUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // Fast path for ASCII runs.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = ValidUtf8SeqLen(s, i);
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input text is not valid UTF-8: invalid byte 0x",
          absl::Hex(static_cast<unsigned char>(s[i]), absl::kZeroPad2), " at byte offset ", i));
    }
    i += n;
  }
  return absl::OkStatus();
}

uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  const size_t n = Utf8CharLen(c0);
  *len = n;
  if (n == 1) return c0;
  uint32_t cp = c0 & (0x7F >> n);
  for (size_t k = 1; k < n && i + k < s.size(); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  }
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    bool complete;
    const size_t n = ValidPrefixLen(bytes, i, &complete);
    if (complete) {
      out.append(bytes.substr(i, n));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += n;
  }
  return out;
}

std::string Utf8Escaped(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t n = ValidUtf8SeqLen(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      absl::StrAppend(&out, "\\x",
                      absl::Hex(static_cast<unsigned char>(bytes[i]), absl::kZeroPad2));
      ++i;
    }
  }
  return out;
}

bool IsUnicodeWhitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

uint32_t ByteToUnicode(uint8_t b) { return Tables().byte_to_cp[b]; }

std::optional<uint8_t> UnicodeToByte(uint32_t cp) {
  if (cp >= Tables().cp_to_byte.size()) return std::nullopt;
  const int16_t b = Tables().cp_to_byte[cp];
  if (b < 0) return std::nullopt;
  return static_cast<uint8_t>(b);
}

std::optional<std::string> ByteLevelToBytes(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (ValidUtf8SeqLen(s, i) == 0) return std::nullopt;
    size_t len;
    const uint32_t cp = DecodeUtf8(s, i, &len);
    const std::optional<uint8_t> b = UnicodeToByte(cp);
    if (!b.has_value()) return std::nullopt;
    out.push_back(static_cast<char>(*b));
    i += len;
  }
  return out;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) AppendUtf8(ByteToUnicode(b), &out);
  return out;
}

std::optional<uint8_t> ParseByteToken(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  // Rust's u8::from_str_radix accepts a leading '+'.
  if (token[3] == '+') {
    const int lo = hex(token[4]);
    if (lo < 0) return std::nullopt;
    return static_cast<uint8_t>(lo);
  }
  const int hi = hex(token[3]), lo = hex(token[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

}  // namespace factlens::tok
