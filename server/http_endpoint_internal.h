// Internal to server/http_endpoint.cc, exposed for its tests and fuzz target: the HTTP/1.x
// request-head parser of the operations endpoint. A pure function over the bytes received so far;
// no I/O, no allocation beyond the result's strings.

#ifndef FACTLENS_SERVER_HTTP_ENDPOINT_INTERNAL_H_
#define FACTLENS_SERVER_HTTP_ENDPOINT_INTERNAL_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace factlens {
namespace http_internal {

struct RequestHead {
  enum class Outcome {
    kIncomplete,  // valid so far; more bytes are needed
    kComplete,    // a whole, well-formed request head
    kError,       // malformed (400) or too large (431): answer `error_status` and close
  };
  Outcome outcome = Outcome::kIncomplete;

  // kComplete only.
  std::string method;     // as sent (case-sensitive), a token
  std::string path;       // the target's path without query or fragment; "*" for asterisk-form
  int minor_version = 0;  // HTTP/1.<minor_version>
  size_t head_bytes = 0;  // bytes of the head, its terminating empty line included

  // kError only.
  int error_status = 0;  // 400 or 431
  std::string error;     // a short reason, e.g. "bad character in method"
};

// Parses the start of `data` (the bytes of one connection received so far) as an HTTP/1.x request
// head: request line "METHOD SP request-target SP HTTP/1.d", header fields "name: value", then an
// empty line. Lines end in CRLF or a bare LF; empty lines before the request line are skipped.
// Header fields are checked for syntax and otherwise ignored; anything after the head (a body) is
// not looked at.
//
// Errors are reported as early as the bytes allow: a request line whose received prefix cannot
// start a valid one (a TLS ClientHello, binary) is an error before its line ends. A head that has
// not ended within the first `max_head_bytes` bytes is error 431. Pure and thread-safe; O(size).
RequestHead ParseRequestHead(absl::string_view data, size_t max_head_bytes);

}  // namespace http_internal
}  // namespace factlens

#endif  // FACTLENS_SERVER_HTTP_ENDPOINT_INTERNAL_H_
