#include "analysis/tokenizer/bpe.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "analysis/tokenizer/text_util.h"

namespace factlens::tok {
namespace {
constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581
}  // namespace

// A bounded, sharded cache word -> [(id, byte length)]. Entries are never evicted; once a shard
// is full new words are simply not cached (like HF's cache).
class WordCache {
 public:
  static constexpr size_t kShards = 16;
  static constexpr size_t kPerShard = 16384;
  static constexpr size_t kMaxWordLen = 256;

  bool Lookup(std::string_view word, std::vector<ModelToken>* out) const {
    const Shard& s = shards_[ShardOf(word)];
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.map.find(AV(word));
    if (it == s.map.end()) return false;
    uint32_t pos = 0;
    for (const auto& [id, len] : it->second) {
      out->push_back({id, pos, pos + len});
      pos += len;
    }
    return true;
  }
  void Insert(std::string_view word, const ModelToken* toks, size_t n) {
    if (word.size() > kMaxWordLen) return;
    Shard& s = shards_[ShardOf(word)];
    std::vector<std::pair<int32_t, uint32_t>> v;
    v.reserve(n);
    for (size_t i = 0; i < n; ++i) v.emplace_back(toks[i].id, toks[i].end - toks[i].begin);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.map.size() >= kPerShard) return;
    s.map.emplace(std::string(word), std::move(v));
  }

 private:
  struct Shard {
    mutable std::mutex mu;  // (absl::Mutex of Debian's abseil costs more: deadlock detection)
    absl::flat_hash_map<std::string, std::vector<std::pair<int32_t, uint32_t>>> map;
  };
  // Cheap shard choice (the map hashes the key again anyway).
  static size_t ShardOf(std::string_view word) {
    if (word.empty()) return 0;
    const size_t h = word.size() * 31 + static_cast<unsigned char>(word[0]) * 7 +
                     static_cast<unsigned char>(word.back());
    return h % kShards;
  }
  Shard shards_[kShards];
};

BpeModel::BpeModel() : cache_(std::make_unique<WordCache>()) {}
BpeModel::~BpeModel() = default;

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model, bool byte_level) {
  constexpr char kWhere[] = "model(BPE)";
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->byte_level_ = byte_level;
  TOK_ASSIGN_OR_RETURN(m->byte_fallback_, JsonBool(model, "byte_fallback", false, kWhere));
  TOK_ASSIGN_OR_RETURN(m->fuse_unk_, JsonBool(model, "fuse_unk", false, kWhere));
  TOK_ASSIGN_OR_RETURN(m->ignore_merges_, JsonBool(model, "ignore_merges", false, kWhere));
  TOK_ASSIGN_OR_RETURN(m->unk_token_, JsonOptString(model, "unk_token", kWhere));
  TOK_ASSIGN_OR_RETURN(std::optional<std::string> prefix,
                       JsonOptString(model, "continuing_subword_prefix", kWhere));
  TOK_ASSIGN_OR_RETURN(std::optional<std::string> suffix,
                       JsonOptString(model, "end_of_word_suffix", kWhere));
  if (const Json* dropout = JsonFindNonNull(model, "dropout"); dropout != nullptr) {
    if (!dropout->is_number()) return JsonTypeError(kWhere, "dropout", "a number or null");
    if (dropout->get<double>() != 0.0) {
      return absl::UnimplementedError("tokenizer.json: BPE dropout is not supported");
    }
  }

  // Vocabulary.
  const Json* vocab = JsonFind(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return JsonTypeError(kWhere, "vocab", "an object");
  int64_t max_id = -1;
  m->vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    TOK_ASSIGN_OR_RETURN(const int32_t id, JsonTokenId(it.value(), "model.vocab"));
    max_id = std::max<int64_t>(max_id, id);
    m->vocab_[it.key()] = id;
  }
  // Ids index a dense table; refuse absurdly sparse vocabularies instead of allocating gigabytes.
  if (max_id >= static_cast<int64_t>(2 * vocab->size() + 65536)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: model.vocab ids are too sparse (largest id ", max_id, " for ",
                     vocab->size(), " tokens)"));
  }
  m->id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  m->id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : m->vocab_) {
    m->id_to_token_[id] = token;
    m->id_present_[id] = true;
  }
  // Word-alphabet lookup.
  m->byte_ids_.fill(-1);
  m->byte_fallback_ids_.fill(-1);
  if (byte_level) {
    m->word_vocab_.reserve(m->vocab_.size());
    for (const auto& [token, id] : m->vocab_) {
      std::optional<std::string> bytes = ByteLevelToBytes(token);
      if (!bytes.has_value()) continue;  // unreachable through byte-level words
      m->word_vocab_[*bytes] = id;
      if (bytes->size() == 1) m->byte_ids_[static_cast<uint8_t>((*bytes)[0])] = id;
    }
    if (prefix.has_value()) prefix = ByteLevelToBytes(*prefix).value_or(*prefix);
    if (suffix.has_value()) suffix = ByteLevelToBytes(*suffix).value_or(*suffix);
  } else {
    m->word_vocab_ = m->vocab_;
  }
  for (int b = 0; b < 256; ++b) {
    // HF formats with {:#04X}: "0x" then two uppercase hex digits.
    const std::string key = absl::StrCat(
        "<0x", absl::AsciiStrToUpper(absl::StrCat(absl::Hex(b, absl::kZeroPad2))), ">");
    auto it = m->vocab_.find(key);
    if (it != m->vocab_.end()) m->byte_fallback_ids_[b] = it->second;
  }
  m->prefix_ = prefix.value_or("");
  m->suffix_ = suffix.value_or("");
  const size_t prefix_len = prefix.has_value() ? prefix->size() : 0;

  // Merges: "a b" strings or ["a", "b"] pairs; rank = position. A later duplicate pair wins.
  const Json* merges = JsonFind(model, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return JsonTypeError(kWhere, "merges", "an array");
  }
  m->merges_.reserve(merges->size());
  bool crosses_metaspace = false;
  std::string a, b;
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const Json& e = (*merges)[rank];
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: model.merges[", rank,
                                                       "] \"", s, "\" is not of the form \"a b\""));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json: model.merges[", rank, "] must be a \"a b\" string or a [a, b] pair"));
    }
    auto ia = m->vocab_.find(a);
    if (ia == m->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: model.merges[", rank,
                                                     "] references unknown token \"", a, "\""));
    }
    auto ib = m->vocab_.find(b);
    if (ib == m->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: model.merges[", rank,
                                                     "] references unknown token \"", b, "\""));
    }
    if (b.size() < prefix_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json: model.merges[", rank, "] token \"", b, "\" lacks the subword prefix"));
    }
    const std::string merged = absl::StrCat(a, absl::string_view(b).substr(prefix_len));
    auto im = m->vocab_.find(merged);
    if (im == m->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: model.merges[", rank,
                                                     "] produces \"", merged,
                                                     "\" which is not in the vocabulary"));
    }
    if (rank > static_cast<size_t>(INT32_MAX)) {
      return absl::InvalidArgumentError("tokenizer.json: too many merges");
    }
    // A rule joining "…X" + "▁…" (X != ▁) would let a token cross a metaspace boundary.
    if (b.rfind(kMetaspace, 0) == 0 &&
        !(a.size() >= kMetaspace.size() &&
          a.compare(a.size() - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0)) {
      crosses_metaspace = true;
    }
    m->merges_[(static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
               static_cast<uint32_t>(ib->second)] = {static_cast<int32_t>(rank), im->second};
  }
  // Exact speed-up for SentencePiece-style vocabularies (Llama-2): when no merge rule can join
  // a character with a following "▁", no token of the result spans the boundary "X|▁", so the
  // word can be cut there and each part merged (and cached) independently with the same result.
  // Conditions keep every other step local too: "▁" is in the vocabulary (unk runs stop at it),
  // no whole-word lookup (ignore_merges), no prefix/suffix, not byte-level.
  m->metaspace_split_ = !crosses_metaspace && !byte_level && !m->ignore_merges_ &&
                        m->prefix_.empty() && m->suffix_.empty() &&
                        m->vocab_.contains(std::string(kMetaspace));
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AV(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) {
    return nullptr;
  }
  return &id_to_token_[id];
}

absl::Status BpeModel::InitialSymbols(std::string_view word, std::vector<BpeSymbol>* syms) const {
  syms->clear();
  auto add = [syms](int32_t id, uint32_t begin, uint32_t len) {
    const int32_t n = static_cast<int32_t>(syms->size());
    syms->push_back({id, begin, len, n - 1, n + 1});
  };
  // Fast path: byte-level without prefix/suffix, every byte in the vocabulary.
  if (byte_level_ && prefix_.empty() && suffix_.empty()) {
    bool all = true;
    for (size_t i = 0; i < word.size(); ++i) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(word[i])];
      if (id < 0) {
        all = false;
        break;
      }
      add(id, static_cast<uint32_t>(i), 1);
    }
    if (all) {
      if (!syms->empty()) syms->back().next = -1;
      return absl::OkStatus();
    }
    syms->clear();
  }
  // General path (HF BPE::merge_word): characters (bytes for byte-level words).
  std::optional<std::pair<int32_t, uint32_t>> unk;  // (id, byte length) pending
  uint32_t unk_begin = 0;
  std::optional<int32_t> unk_id;
  std::string key;
  size_t i = 0;
  while (i < word.size()) {
    const size_t len = byte_level_ ? 1 : Utf8CharLen(static_cast<unsigned char>(word[i]));
    const size_t end = std::min(word.size(), i + len);
    const bool is_first = i == 0, is_last = end == word.size();
    key.clear();
    if (!prefix_.empty() && !is_first) key += prefix_;
    key.append(word.substr(i, end - i));
    if (!suffix_.empty() && is_last) key += suffix_;
    const uint32_t byte_len = static_cast<uint32_t>(end - i);
    if (auto it = word_vocab_.find(key); it != word_vocab_.end()) {
      if (unk.has_value()) {
        add(unk->first, unk_begin, unk->second);
        unk.reset();
      }
      add(it->second, static_cast<uint32_t>(i), byte_len);
      i = end;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : key) all = all && byte_fallback_ids_[c] >= 0;
      if (all) {
        // Like HF: a pending unk is not flushed here, and each byte token counts one byte.
        for (unsigned char c : key) add(byte_fallback_ids_[c], static_cast<uint32_t>(i), 1);
        i = end;
        continue;
      }
    }
    if (unk_token_.has_value()) {
      if (!unk_id.has_value()) {
        auto it = vocab_.find(*unk_token_);
        if (it == vocab_.end()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "tokenizer.json: model.unk_token \"", *unk_token_, "\" is not in the vocabulary"));
        }
        unk_id = it->second;
      }
      if (unk.has_value() && fuse_unk_) {
        unk->second += byte_len;
      } else {
        if (unk.has_value()) add(unk->first, unk_begin, unk->second);
        unk = std::make_pair(*unk_id, byte_len);
        unk_begin = static_cast<uint32_t>(i);
      }
    }
    i = end;
  }
  if (unk.has_value()) add(unk->first, unk_begin, unk->second);
  if (!syms->empty()) syms->back().next = -1;
  return absl::OkStatus();
}

void BpeModel::MergeWithQueue(std::vector<BpeSymbol>* syms_ptr) const {
  std::vector<BpeSymbol>& syms = *syms_ptr;
  if (syms.size() < 2) return;
  struct Cand {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  // std heap is a max-heap: "less" means lower priority (higher rank, then higher pos).
  auto lower = [](const Cand& x, const Cand& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  thread_local std::vector<Cand> heap;
  heap.clear();
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const MergeInfo* m = FindMerge(syms[i].id, syms[i + 1].id)) {
      heap.push_back({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), lower);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower);
    const Cand top = heap.back();
    heap.pop_back();
    BpeSymbol& cur = syms[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    const BpeSymbol right = syms[next_pos];
    const MergeInfo* m = FindMerge(cur.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[next_pos].len = 0;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const MergeInfo* pm = FindMerge(syms[cur.prev].id, cur.id)) {
        heap.push_back({pm->rank, cur.prev, pm->new_id});
        std::push_heap(heap.begin(), heap.end(), lower);
      }
    }
    if (cur.next >= 0) {
      if (const MergeInfo* nm = FindMerge(cur.id, syms[cur.next].id)) {
        heap.push_back({nm->rank, top.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), lower);
      }
    }
  }
}

void BpeModel::MergeQuadratic(std::vector<BpeSymbol>* syms_ptr) const {
  std::vector<BpeSymbol>& syms = *syms_ptr;
  while (true) {
    int32_t best = -1;
    const MergeInfo* best_m = nullptr;
    for (int32_t i = 0; i >= 0 && i < static_cast<int32_t>(syms.size()); i = syms[i].next) {
      if (syms[i].next < 0) break;
      const MergeInfo* m = FindMerge(syms[i].id, syms[syms[i].next].id);
      if (m != nullptr && (best_m == nullptr || m->rank < best_m->rank)) {
        best = i;
        best_m = m;
      }
    }
    if (best_m == nullptr) return;
    BpeSymbol& cur = syms[best];
    BpeSymbol& right = syms[cur.next];
    cur.id = best_m->new_id;
    cur.len += right.len;
    right.len = 0;
    cur.next = right.next;
    if (cur.next >= 0) syms[cur.next].prev = best;
  }
}

absl::Status BpeModel::Tokenize(std::string_view word, std::vector<ModelToken>* out) const {
  if (!metaspace_split_ || word.size() <= 2 * kMetaspace.size()) return TokenizeCached(word, out);
  // Cut before every "▁" whose previous character is not "▁".
  size_t part_begin = 0;
  size_t pos = word.find(kMetaspace, 1);
  while (part_begin < word.size()) {
    while (pos != std::string_view::npos &&
           (pos <= part_begin ||
            (pos >= kMetaspace.size() &&
             word.compare(pos - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0))) {
      pos = word.find(kMetaspace, pos + 1);
    }
    const size_t part_end = pos == std::string_view::npos ? word.size() : pos;
    const size_t first = out->size();
    TOK_RETURN_IF_ERROR(TokenizeCached(word.substr(part_begin, part_end - part_begin), out));
    for (size_t k = first; k < out->size(); ++k) {
      (*out)[k].begin += static_cast<uint32_t>(part_begin);
      (*out)[k].end += static_cast<uint32_t>(part_begin);
    }
    part_begin = part_end;
  }
  return absl::OkStatus();
}

absl::Status BpeModel::TokenizeWhole(std::string_view word, std::vector<ModelToken>* out) const {
  if (word.empty()) return absl::OkStatus();
  std::vector<BpeSymbol> syms;
  TOK_RETURN_IF_ERROR(InitialSymbols(word, &syms));
  MergeWithQueue(&syms);
  const uint32_t size = static_cast<uint32_t>(word.size());
  uint32_t pos = 0;
  for (const BpeSymbol& s : syms) {
    if (s.len == 0) continue;
    out->push_back({s.id, std::min(pos, size), std::min(pos + s.len, size)});
    pos += s.len;
  }
  return absl::OkStatus();
}

absl::Status BpeModel::TokenizeCached(std::string_view word, std::vector<ModelToken>* out) const {
  if (word.empty()) return absl::OkStatus();
  if (ignore_merges_) {
    if (auto it = word_vocab_.find(AV(word)); it != word_vocab_.end()) {
      out->push_back({it->second, 0, static_cast<uint32_t>(word.size())});
      return absl::OkStatus();
    }
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordLen;
  if (cacheable && cache_->Lookup(word, out)) return absl::OkStatus();
  thread_local std::vector<BpeSymbol> syms;
  TOK_RETURN_IF_ERROR(InitialSymbols(word, &syms));
  MergeWithQueue(&syms);
  const size_t first = out->size();
  // Offsets are cumulative symbol lengths, like HF's Word (live symbols are in vector order).
  const uint32_t size = static_cast<uint32_t>(word.size());
  uint32_t pos = 0;
  for (const BpeSymbol& s : syms) {
    if (s.len == 0) continue;  // merged away
    out->push_back({s.id, std::min(pos, size), std::min(pos + s.len, size)});
    pos += s.len;
  }
  if (cacheable) cache_->Insert(word, out->data() + first, out->size() - first);
  return absl::OkStatus();
}

}  // namespace factlens::tok
