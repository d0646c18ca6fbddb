#include "server/http_endpoint_internal.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace factlens {
namespace http_internal {
namespace {

// RFC 9110 token characters.
bool IsTchar(unsigned char c) {
  if (absl::ascii_isalnum(c)) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
  }
  return false;
}

// Visible ASCII: what a request target may hold.
bool IsTargetChar(unsigned char c) { return c > 0x20 && c < 0x7f; }

// Field value characters: SP, HTAB, visible ASCII and obs-text (bytes >= 0x80).
bool IsFieldValueChar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

RequestHead Error(int status, std::string why) {
  RequestHead head;
  head.outcome = RequestHead::Outcome::kError;
  head.error_status = status;
  head.error = std::move(why);
  return head;
}

RequestHead TooLarge(size_t max_head_bytes) {
  return Error(431, absl::StrCat("request head larger than ", max_head_bytes, " bytes"));
}

absl::string_view StripCr(absl::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

struct RequestLine {
  absl::string_view method;
  absl::string_view target;
  absl::string_view version;
};

// Checks a request line (without its line ending), or with `partial` the prefix of one received
// so far. Returns an empty string when valid (for a prefix: when it can still become valid).
std::string CheckRequestLine(absl::string_view line, bool partial, RequestLine* out) {
  size_t i = 0;
  const size_t n = line.size();
  while (i < n && line[i] != ' ') {
    if (!IsTchar(static_cast<unsigned char>(line[i]))) return "bad character in method";
    ++i;
  }
  if (i == n) return partial ? "" : "request line without a target";
  if (i == 0) return "empty method";
  out->method = line.substr(0, i);
  const size_t target_start = ++i;
  while (i < n && line[i] != ' ') {
    if (!IsTargetChar(static_cast<unsigned char>(line[i]))) {
      return "bad character in request target";
    }
    ++i;
  }
  if (i == n) return partial ? "" : "request line without an HTTP version";
  if (i == target_start) return "empty request target";
  out->target = line.substr(target_start, i - target_start);
  out->version = line.substr(i + 1);
  // "HTTP/1." and one digit.
  constexpr absl::string_view kPrefix = "HTTP/1.";
  const absl::string_view version = out->version;
  const size_t compared = std::min(version.size(), kPrefix.size());
  if (version.substr(0, compared) != kPrefix.substr(0, compared) || version.size() > 8 ||
      (version.size() == 8 && !absl::ascii_isdigit(static_cast<unsigned char>(version[7]))) ||
      (!partial && version.size() != 8)) {
    return "unsupported HTTP version (HTTP/1.x only)";
  }
  return "";
}

// The path of a request target: origin-form as is, absolute-form without scheme and authority,
// both without query and fragment; "*" stays "*". Empty when the target has no usable form.
std::string TargetPath(absl::string_view target) {
  if (target == "*") return "*";
  absl::string_view path = target;
  if (target.front() != '/') {
    size_t scheme_end = 0;
    if (absl::StartsWithIgnoreCase(target, "http://")) {
      scheme_end = 7;
    } else if (absl::StartsWithIgnoreCase(target, "https://")) {
      scheme_end = 8;
    } else {
      return "";
    }
    const absl::string_view rest = target.substr(scheme_end);
    const size_t authority_end = std::min(rest.find_first_of("/?#"), rest.size());
    if (authority_end == 0) return "";
    path = rest.substr(authority_end);
  }
  path = path.substr(0, std::min(path.find_first_of("?#"), path.size()));
  return path.empty() ? "/" : std::string(path);
}

}  // namespace

RequestHead ParseRequestHead(absl::string_view data, size_t max_head_bytes) {
  const absl::string_view window = data.substr(0, std::min(data.size(), max_head_bytes));
  const bool at_limit = data.size() >= max_head_bytes;
  size_t pos = 0;
  // Empty lines before the request line are ignored (RFC 9112 section 2.2).
  while (true) {
    if (window.substr(pos, 2) == "\r\n") {
      pos += 2;
    } else if (pos < window.size() && window[pos] == '\n') {
      pos += 1;
    } else {
      break;
    }
  }
  RequestLine request_line;
  size_t eol = window.find('\n', pos);
  if (eol == absl::string_view::npos) {
    std::string why =
        CheckRequestLine(StripCr(window.substr(pos)), /*partial=*/true, &request_line);
    if (!why.empty()) return Error(400, std::move(why));
    if (at_limit) return TooLarge(max_head_bytes);
    return RequestHead();
  }
  std::string why =
      CheckRequestLine(StripCr(window.substr(pos, eol - pos)), /*partial=*/false, &request_line);
  if (!why.empty()) return Error(400, std::move(why));
  std::string path = TargetPath(request_line.target);
  if (path.empty()) return Error(400, "request target is neither a path nor an http(s) URL");
  pos = eol + 1;

  while (true) {
    eol = window.find('\n', pos);
    if (eol == absl::string_view::npos) {
      if (at_limit) return TooLarge(max_head_bytes);
      return RequestHead();
    }
    const absl::string_view line = StripCr(window.substr(pos, eol - pos));
    pos = eol + 1;
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') {
      return Error(400, "obsolete header line folding");
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) return Error(400, "header line without a colon");
    if (colon == 0) return Error(400, "empty header name");
    for (size_t i = 0; i < colon; ++i) {
      if (!IsTchar(static_cast<unsigned char>(line[i]))) {
        return Error(400, "bad character in header name");
      }
    }
    for (size_t i = colon + 1; i < line.size(); ++i) {
      if (!IsFieldValueChar(static_cast<unsigned char>(line[i]))) {
        return Error(400, "bad character in header value");
      }
    }
  }

  RequestHead head;
  head.outcome = RequestHead::Outcome::kComplete;
  head.method = std::string(request_line.method);
  head.path = std::move(path);
  head.minor_version = request_line.version[7] - '0';
  head.head_bytes = pos;
  return head;
}

}  // namespace http_internal
}  // namespace factlens
