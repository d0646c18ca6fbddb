// Decoders: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace (HF decode_chain).
#include <utility>

#include "absl/strings/str_join.h"
#include "analysis/tokenizer/components.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const override {
    for (const auto& d : steps_) TOK_RETURN_IF_ERROR(d->DecodeChain(tokens, display));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Byte-level alphabet -> bytes; the whole sequence becomes one string (invalid UTF-8 -> U+FFFD,
// or "\xNN" escapes in display mode). A token with a character outside the alphabet is taken
// as its raw UTF-8 bytes, like HF.
class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      std::optional<std::string> b = ByteLevelToBytes(t);
      bytes += b.has_value() ? *b : t;
    }
    tokens->assign(1, display ? Utf8Escaped(bytes) : Utf8Lossy(bytes));
    return absl::OkStatus();
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool) const override {
    std::vector<Span> matches;
    for (std::string& t : *tokens) {
      matches.clear();
      TOK_RETURN_IF_ERROR(pattern_->FindMatches(t, &matches));
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const Span& m : matches) {
        out.append(t, prev, m.first - prev);
        out += content_;
        prev = m.second;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

// Runs of "<0xNN>" tokens become their bytes when those form valid UTF-8, else one U+FFFD per
// byte (HF); in display mode an invalid run keeps its "<0xNN>" tokens.
class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const override {
    std::vector<std::string> out;
    std::string bytes;
    std::vector<std::string> run;
    auto flush = [&]() {
      if (bytes.empty()) return;
      if (ValidateUtf8(bytes).ok()) {
        out.push_back(bytes);
      } else if (display) {
        for (std::string& r : run) out.push_back(std::move(r));
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      run.clear();
    };
    for (std::string& t : *tokens) {
      if (std::optional<uint8_t> b = ParseByteToken(t); b.has_value()) {
        bytes.push_back(static_cast<char>(*b));
        run.push_back(std::move(t));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool) const override {
    std::string joined = absl::StrJoin(*tokens, "");
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

// Strips up to `start` leading and `stop` trailing `content` characters of every token. Not
// applied in display mode (a vocabulary projection wants " Paris", not "Paris").
class StripDecoder : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const override {
    if (display) return absl::OkStatus();
    for (std::string& t : *tokens) {
      // Character boundaries of t.
      std::vector<size_t> starts;
      std::vector<uint32_t> cps;
      for (size_t i = 0; i < t.size();) {
        size_t len;
        cps.push_back(DecodeUtf8(t, i, &len));
        starts.push_back(i);
        i += len;
      }
      const size_t n = cps.size();
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < n; ++i) {
        if (cps[i] != content_) break;
        start_cut = i + 1;
      }
      size_t stop_cut = n;
      for (size_t i = 0; i < stop_ && i < n; ++i) {
        const size_t index = n - i - 1;
        if (cps[index] != content_) break;
        stop_cut = index;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      const size_t b = start_cut < n ? starts[start_cut] : t.size();
      const size_t e = stop_cut < n ? starts[stop_cut] : t.size();
      t = t.substr(b, e - b);
    }
    return absl::OkStatus();
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, bool display) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      const bool drop = i == 0 && strip_first_ && !display;
      std::string out;
      size_t pos = 0;
      while (true) {
        const size_t f = t.find(replacement_, pos);
        out.append(t, pos, f == std::string::npos ? std::string::npos : f - pos);
        if (f == std::string::npos) break;
        if (!drop) out.push_back(' ');
        pos = f + replacement_.size();
      }
      t = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j) {
  const JsonDepthGuard depth;
  if (!depth.ok()) return depth.error("decoder");
  TOK_ASSIGN_OR_RETURN(const std::string type, JsonComponentType(j, "decoder"));
  if (type == "Sequence") {
    const Json* list = JsonFind(j, "decoders");
    if (list == nullptr || !list->is_array()) {
      return JsonTypeError("decoder(Sequence)", "decoders", "an array");
    }
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const Json& e : *list) {
      TOK_ASSIGN_OR_RETURN(auto d, ParseDecoder(e));
      steps.push_back(std::move(d));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Replace") {
    const Json* pattern = JsonFind(j, "pattern");
    if (pattern == nullptr) return JsonTypeError("decoder(Replace)", "pattern", "an object");
    TOK_ASSIGN_OR_RETURN(auto p, ParsePattern(*pattern, "decoder(Replace)"));
    TOK_ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", "decoder(Replace)"));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(p), std::move(content)));
  }
  if (type == "Strip") {
    TOK_ASSIGN_OR_RETURN(const std::string content, JsonString(j, "content", "decoder(Strip)"));
    if (content.empty() || ValidUtf8SeqLen(content, 0) != content.size()) {
      return JsonTypeError("decoder(Strip)", "content", "a single character");
    }
    size_t len;
    const uint32_t cp = DecodeUtf8(content, 0, &len);
    TOK_ASSIGN_OR_RETURN(const int64_t start, JsonInt(j, "start", 0, "decoder(Strip)"));
    TOK_ASSIGN_OR_RETURN(const int64_t stop, JsonInt(j, "stop", 0, "decoder(Strip)"));
    if (start < 0 || stop < 0) return JsonTypeError("decoder(Strip)", "start/stop", ">= 0");
    return std::unique_ptr<Decoder>(
        new StripDecoder(cp, static_cast<size_t>(start), static_cast<size_t>(stop)));
  }
  if (type == "Metaspace") {
    constexpr char kWhere[] = "decoder(Metaspace)";
    TOK_ASSIGN_OR_RETURN(std::optional<std::string> replacement,
                         JsonOptString(j, "replacement", kWhere));
    if (!replacement.has_value()) replacement = "\xE2\x96\x81";
    if (replacement->empty()) return JsonTypeError(kWhere, "replacement", "a character");
    bool strip_first = true;
    TOK_ASSIGN_OR_RETURN(std::optional<std::string> ps, JsonOptString(j, "prepend_scheme", kWhere));
    if (ps.has_value()) {
      strip_first = *ps != "never";
    } else {
      TOK_ASSIGN_OR_RETURN(strip_first, JsonBool(j, "add_prefix_space", true, kWhere));
    }
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(*replacement, strip_first));
  }
  return absl::UnimplementedError(absl::StrCat(
      "tokenizer.json: unsupported decoder type \"", type,
      "\" (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)"));
}

}  // namespace factlens::tok
