// Internal UTF-8 and byte-level helpers shared by the tokenizer components. Pure functions,
// thread-safe.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_TEXT_UTIL_H_
#define FACTLENS_ANALYSIS_TOKENIZER_TEXT_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#define FACTLENS_TOK_CONCAT_INNER_(a, b) a##b
#define FACTLENS_TOK_CONCAT_(a, b) FACTLENS_TOK_CONCAT_INNER_(a, b)
#define TOK_RETURN_IF_ERROR(expr)              \
  do {                                         \
    const ::absl::Status tok_status_ = (expr); \
    if (!tok_status_.ok()) return tok_status_; \
  } while (0)
#define TOK_ASSIGN_OR_RETURN(lhs, rexpr) \
  TOK_ASSIGN_OR_RETURN_IMPL_(FACTLENS_TOK_CONCAT_(tok_statusor_, __LINE__), lhs, rexpr)
#define TOK_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) return statusor.status();          \
  lhs = *std::move(statusor)

namespace factlens::tok {

// Debian's abseil has its own absl::string_view (not std::string_view): convert explicitly.
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid (RFC 3629:
// no overlongs, no surrogates, <= U+10FFFF).
size_t ValidUtf8SeqLen(std::string_view s, size_t i);

// OK, or InvalidArgument naming the byte offset of the first invalid byte.
absl::Status ValidateUtf8(std::string_view s);

// Length in bytes of the UTF-8 character whose lead byte is `lead` (1 for invalid leads).
inline size_t Utf8CharLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}
inline bool IsUtf8Continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Decodes the code point at s[i] of VALID UTF-8; sets *len.
uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len);
void AppendUtf8(uint32_t cp, std::string* out);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// Like Utf8Lossy but each invalid byte becomes a visible "\xNN" escape (lowercase hex).
std::string Utf8Escaped(std::string_view bytes);

// Unicode White_Space property (what Rust's char::is_whitespace and regex \s use).
bool IsUnicodeWhitespace(uint32_t cp);

// GPT-2 byte-level alphabet: byte -> code point, and code point -> byte (nullopt if not in it).
uint32_t ByteToUnicode(uint8_t b);
std::optional<uint8_t> UnicodeToByte(uint32_t cp);
// Converts a byte-level string ("ĠParis") to raw bytes (" Paris"); nullopt if a character is
// not in the byte-level alphabet.
std::optional<std::string> ByteLevelToBytes(std::string_view s);
// Converts raw bytes to the byte-level alphabet.
std::string BytesToByteLevel(std::string_view bytes);

// "<0xAB>" -> 0xAB (exactly 6 characters, uppercase or lowercase hex like HF's parser).
std::optional<uint8_t> ParseByteToken(std::string_view token);

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_TEXT_UTIL_H_
