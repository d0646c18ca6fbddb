#include "analysis/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/backend.h"
#include "analysis/tokenizer/fairseq_dictionary.h"
#include "analysis/tokenizer/json_util.h"
#include "analysis/tokenizer/sentencepiece_model.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens {
namespace {

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The whole file; a file larger than max_bytes -> InvalidArgument (checked before reading).
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes = static_cast<size_t>(-1)) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": not a readable file"));
  }
  if (static_cast<unsigned long long>(st.st_size) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is too large: ", st.st_size, " bytes (at most ", max_bytes, ")"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::UnavailableError(absl::StrCat("error reading ", path));
  return std::move(ss).str();
}

// bos_token / eos_token of a tokenizer_config.json: a string or {"content": "..."}.
std::optional<std::string> ConfigToken(const tok::Json& config, const char* key) {
  const tok::Json* v = tok::JsonFindNonNull(config, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (const tok::Json* c = tok::JsonFind(*v, "content"); c != nullptr && c->is_string()) {
    return c->get<std::string>();
  }
  return std::nullopt;
}

// A boolean member of tokenizer_config.json; missing, null or not a boolean -> nullopt.
std::optional<bool> ConfigBool(const tok::Json& config, const char* key) {
  const tok::Json* v = tok::JsonFindNonNull(config, key);
  if (v == nullptr || !v->is_boolean()) return std::nullopt;
  return v->get<bool>();
}

// <dir>/tokenizer_config.json as a JSON object; nullopt if missing or malformed (the tokenizer
// file is authoritative, so a bad config is ignored).
std::optional<tok::Json> ReadConfig(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/tokenizer_config.json");
  if (!IsRegularFile(path)) return std::nullopt;
  auto text = ReadFile(path);
  if (!text.ok()) return std::nullopt;
  tok::Json config = tok::Json::parse(text->begin(), text->end(), nullptr, false);
  if (config.is_discarded() || !config.is_object()) return std::nullopt;
  return config;
}

// LlamaTokenizerFast's settings from a tokenizer_config.json (HF defaults where absent).
tok::SentencePieceOptions SentencePieceOptionsFromConfig(const std::optional<tok::Json>& config) {
  tok::SentencePieceOptions o;
  if (!config.has_value()) return o;
  o.legacy = ConfigBool(*config, "legacy").value_or(true);
  o.add_prefix_space = ConfigBool(*config, "add_prefix_space");
  o.add_bos_token = ConfigBool(*config, "add_bos_token").value_or(true);
  o.add_eos_token = ConfigBool(*config, "add_eos_token").value_or(false);
  o.bos_token = ConfigToken(*config, "bos_token");
  o.eos_token = ConfigToken(*config, "eos_token");
  return o;
}

// A converted SentencePiece model: the tokenizer.json pipeline plus the model's own BOS / EOS.
struct SentencePieceBackend {
  std::unique_ptr<TokenizerBackend> backend;
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
};

absl::StatusOr<SentencePieceBackend> LoadSentencePiece(std::string_view bytes,
                                                       const tok::SentencePieceOptions& options) {
  TOK_ASSIGN_OR_RETURN(const tok::SentencePieceModel model, tok::ParseSentencePieceModel(bytes));
  TOK_ASSIGN_OR_RETURN(const tok::Json json, tok::SentencePieceToTokenizerJson(model, options));
  SentencePieceBackend out;
  TOK_ASSIGN_OR_RETURN(out.backend, NewHfTokenizerBackendFromJson(json));
  const auto valid = [&model](int32_t id) -> std::optional<int32_t> {
    if (id >= 0 && static_cast<size_t>(id) < model.pieces.size()) return id;
    return std::nullopt;
  };
  out.bos_id = valid(model.bos_id);
  out.eos_id = valid(model.eos_id);
  return out;
}

absl::Status WithPath(const std::string& path, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

// Byte offset -> character index, HF's BytesToCharOffsetConverter semantics, with a cursor that
// moves both ways so that nearly sorted queries are O(distance).
class CharIndexer {
 public:
  explicit CharIndexer(std::string_view text) : text_(text) {}
  // Number of character starts in [0, b).
  size_t LeadsBefore(size_t b) {
    while (pos_ < b) {
      if (!tok::IsUtf8Continuation(static_cast<unsigned char>(text_[pos_]))) ++leads_;
      ++pos_;
    }
    while (pos_ > b) {
      --pos_;
      if (!tok::IsUtf8Continuation(static_cast<unsigned char>(text_[pos_]))) --leads_;
    }
    return leads_;
  }
  // Index of the character containing byte b (b < size).
  size_t CharOf(size_t b) { return LeadsBefore(b + 1) - 1; }
  std::pair<size_t, size_t> Convert(std::pair<size_t, size_t> o) {
    const size_t n = text_.size();
    if (o.first >= n) {
      // Empty span at the end (e.g. after ByteLevel offset trimming). HF leaves such offsets as
      // BYTE offsets; we return the character count so that offsets stay character offsets.
      const size_t c = LeadsBefore(n);
      return {c, c};
    }
    const size_t s = CharOf(o.first);
    const size_t e = o.second < n ? CharOf(o.second) : (o.second == 0 ? 0 : CharOf(n - 1) + 1);
    return {s, e};
  }

 private:
  std::string_view text_;
  size_t pos_ = 0;
  size_t leads_ = 0;
};

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<TokenizerBackend> backend) : backend_(std::move(backend)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonString(std::string_view json) {
  TOK_ASSIGN_OR_RETURN(auto backend, NewHfTokenizerBackend(json));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(backend)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonFile(const std::string& path) {
  TOK_ASSIGN_OR_RETURN(const std::string json, ReadFile(path));
  auto t = FromJsonString(json);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  }
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSentencePieceString(
    std::string_view model_proto) {
  TOK_ASSIGN_OR_RETURN(SentencePieceBackend sp,
                       LoadSentencePiece(model_proto, tok::SentencePieceOptions()));
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer(std::move(sp.backend)));
  t->bos_override_ = sp.bos_id;
  t->eos_override_ = sp.eos_id;
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSentencePieceFile(
    const std::string& path) {
  TOK_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  auto t = FromSentencePieceString(bytes);
  if (!t.ok()) return WithPath(path, t.status());
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFairseqDictString(
    std::string_view dict_txt) {
  TOK_ASSIGN_OR_RETURN(auto backend, NewFairseqDictionaryBackend(dict_txt));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(backend)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFairseqDictFile(const std::string& path) {
  TOK_ASSIGN_OR_RETURN(const std::string text, ReadFile(path, kFairseqDictMaxBytes));
  auto t = FromFairseqDictString(text);
  if (!t.ok()) return WithPath(path, t.status());
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelDirectory(const std::string& dir) {
  std::unique_ptr<Tokenizer> t;
  const std::string json_path = absl::StrCat(dir, "/tokenizer.json");
  const std::string sp_path = absl::StrCat(dir, "/tokenizer.model");
  const std::string dict_path = absl::StrCat(dir, "/dict.txt");
  const std::optional<tok::Json> config = ReadConfig(dir);
  if (IsRegularFile(json_path)) {
    TOK_ASSIGN_OR_RETURN(t, FromJsonFile(json_path));
  } else if (IsRegularFile(sp_path)) {
    TOK_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(sp_path));
    auto sp = LoadSentencePiece(bytes, SentencePieceOptionsFromConfig(config));
    if (!sp.ok()) return WithPath(sp_path, sp.status());
    t.reset(new Tokenizer(std::move(sp->backend)));
    t->bos_override_ = sp->bos_id;
    t->eos_override_ = sp->eos_id;
  } else if (IsRegularFile(dict_path)) {
    TOK_ASSIGN_OR_RETURN(t, FromFairseqDictFile(dict_path));
  } else {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.json, tokenizer.model or dict.txt in directory ", dir));
  }
  // bos_token / eos_token of tokenizer_config.json (ignored if not in the vocabulary).
  if (config.has_value()) {
    if (auto bos = ConfigToken(*config, "bos_token")) {
      if (auto id = t->TokenToId(*bos)) t->bos_override_ = id;
    }
    if (auto eos = ConfigToken(*config, "eos_token")) {
      if (auto id = t->TokenToId(*eos)) t->eos_override_ = id;
    }
  }
  return t;
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  if (text.size() >= 0xFFFFFFFFu) {
    return absl::InvalidArgumentError("input text is too large (4 GiB or more)");
  }
  TOK_RETURN_IF_ERROR(tok::ValidateUtf8(text));
  TOK_ASSIGN_OR_RETURN(Encoding enc, backend_->Encode(text, add_special_tokens));
  CharIndexer indexer(text);
  enc.offsets.reserve(enc.byte_offsets.size());
  for (const auto& o : enc.byte_offsets) enc.offsets.push_back(indexer.Convert(o));
  return enc;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  return backend_->Decode(ids, skip_special_tokens);
}

absl::StatusOr<std::string> Tokenizer::DisplayToken(int32_t id) const {
  return backend_->DisplayToken(id);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  return backend_->IdToToken(id);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  return backend_->TokenToId(token);
}

int32_t Tokenizer::vocab_size() const { return backend_->vocab_size(); }

std::optional<int32_t> Tokenizer::bos_id() const {
  return bos_override_.has_value() ? bos_override_ : backend_->bos_id();
}

std::optional<int32_t> Tokenizer::unknown_word_id() const { return backend_->unknown_word_id(); }

std::optional<int32_t> Tokenizer::eos_id() const {
  return eos_override_.has_value() ? eos_override_ : backend_->eos_id();
}

}  // namespace factlens
