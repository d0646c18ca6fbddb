// libFuzzer target: the metrics endpoint's HTTP request-head parser on arbitrary bytes. Any input
// must yield complete, incomplete or an error (400/431), never a crash; a complete head must be
// well formed and described the same way by any longer input; and a prefix of the bytes must never
// be judged differently from the whole (the endpoint parses whatever has arrived so far, so a
// verdict that depended on how the bytes were split into packets would be a bug).
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "server/http_endpoint_internal.h"

namespace {

using factlens::http_internal::ParseRequestHead;
using factlens::http_internal::RequestHead;

bool IsTchar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

bool Same(const RequestHead& a, const RequestHead& b) {
  return a.outcome == b.outcome && a.method == b.method && a.path == b.path &&
         a.minor_version == b.minor_version && a.head_bytes == b.head_bytes &&
         a.error_status == b.error_status;
}

void Check(absl::string_view bytes, size_t max) {
  const RequestHead head = ParseRequestHead(bytes, max);
  switch (head.outcome) {
    case RequestHead::Outcome::kIncomplete:
      if (bytes.size() >= max) std::abort();  // At the limit there is always a verdict.
      break;
    case RequestHead::Outcome::kComplete: {
      if (head.head_bytes == 0 || head.head_bytes > bytes.size() || head.head_bytes > max) {
        std::abort();
      }
      if (bytes[head.head_bytes - 1] != '\n') std::abort();
      if (head.method.empty()) std::abort();
      for (char c : head.method) {
        if (!IsTchar(c)) std::abort();
      }
      if (head.path.empty() || (head.path[0] != '/' && head.path != "*")) std::abort();
      if (head.path.find_first_of("?# ") != std::string::npos) std::abort();
      if (head.minor_version < 0 || head.minor_version > 9) std::abort();
      // The head alone says the same (what follows it is not looked at).
      if (!Same(ParseRequestHead(bytes.substr(0, head.head_bytes), max), head)) std::abort();
      break;
    }
    case RequestHead::Outcome::kError:
      if (head.error.empty()) std::abort();
      if (head.error_status != 400 && head.error_status != 431) std::abort();
      if (head.error_status == 431 && bytes.size() < max) std::abort();
      break;
  }
  // Prefixes: incomplete, or the same verdict as the whole.
  for (size_t cut : {bytes.size() / 2, bytes.size() > 0 ? bytes.size() - 1 : 0, bytes.find('\n')}) {
    if (cut >= bytes.size()) continue;
    const RequestHead part = ParseRequestHead(bytes.substr(0, cut), max);
    if (part.outcome == RequestHead::Outcome::kIncomplete) continue;
    if (!Same(part, head)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  Check(bytes, 8192);
  Check(bytes, size / 2 + 1);  // The size limit's paths.
  return 0;
}
