#include "analysis/tokenizer/pattern.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

// Per-thread PCRE2 state: a match context with a JIT stack large enough for long inputs, and a
// reusable match data block (one ovector pair is all we read).
struct ThreadState {
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  pcre2_match_data* md = nullptr;
  ThreadState() {
    mctx = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (mctx != nullptr && jit_stack != nullptr) pcre2_jit_stack_assign(mctx, nullptr, jit_stack);
    md = pcre2_match_data_create(1, nullptr);
  }
  ~ThreadState() {
    if (md) pcre2_match_data_free(md);
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
    if (mctx) pcre2_match_context_free(mctx);
  }
};

ThreadState& State() {
  thread_local ThreadState state;
  return state;
}

}  // namespace

Pattern::~Pattern() {
  if (code_ != nullptr) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

absl::StatusOr<std::unique_ptr<Pattern>> Pattern::Literal(std::string literal) {
  std::unique_ptr<Pattern> p(new Pattern());
  p->literal_ = std::move(literal);
  return p;
}

absl::StatusOr<std::unique_ptr<Pattern>> Pattern::Regex(std::string_view regex) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex.data()), regex.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error, buf, sizeof(buf));
    return absl::InvalidArgumentError(absl::StrCat("cannot compile regex pattern at offset ",
                                                   error_offset, ": ",
                                                   reinterpret_cast<const char*>(buf)));
  }
  // JIT is an optimisation only: on failure pcre2_match falls back to the interpreter.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  std::unique_ptr<Pattern> p(new Pattern());
  p->code_ = code;
  return p;
}

absl::Status Pattern::FindMatches(std::string_view text, std::vector<Span>* out) const {
  if (code_ == nullptr) {
    if (literal_.empty()) return absl::OkStatus();
    size_t pos = 0;
    while (pos <= text.size()) {
      const size_t found = text.find(literal_, pos);
      if (found == std::string_view::npos) break;
      out->emplace_back(found, found + literal_.size());
      pos = found + literal_.size();
    }
    return absl::OkStatus();
  }
  auto* code = static_cast<pcre2_code*>(code_);
  ThreadState& st = State();
  if (st.md == nullptr) return absl::ResourceExhaustedError("cannot allocate PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  size_t last_match_end = static_cast<size_t>(-1);
  while (pos <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, st.md, st.mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.md,
                       st.mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      return absl::ResourceExhaustedError(
          absl::StrCat("regex matching failed: ", reinterpret_cast<const char*>(buf)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    const size_t s = ov[0], e = ov[1];
    if (s == e && last_match_end == e) {
      // An empty match right after the previous match: skip one character.
      if (e >= text.size()) break;
      pos = e + Utf8CharLen(static_cast<unsigned char>(text[e]));
      continue;
    }
    out->emplace_back(s, e);
    last_match_end = e;
    pos = e;
  }
  return absl::OkStatus();
}

absl::Status Pattern::FindSplits(std::string_view text,
                                 std::vector<std::pair<Span, bool>>* out) const {
  if (text.empty()) {
    out->push_back({{0, 0}, false});
    return absl::OkStatus();
  }
  std::vector<Span> matches;
  TOK_RETURN_IF_ERROR(FindMatches(text, &matches));
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.first) out->push_back({{prev, m.first}, false});
    out->push_back({m, true});
    prev = m.second;
  }
  if (prev != text.size()) out->push_back({{prev, text.size()}, false});
  return absl::OkStatus();
}

}  // namespace factlens::tok
