#include "analysis/torch_checkpoint.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "analysis/status_macros.h"

namespace factlens {
namespace {

using Kind = PickleValue::Kind;

absl::Status Corrupt(uint64_t offset, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("torch checkpoint: ", what, " at offset ", offset));
}

absl::Status Unsupported(uint64_t offset, absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat("torch checkpoint: ", what, " at offset ", offset));
}

// Little-endian unsigned integer of `n` <= 8 bytes at `p`.
uint64_t LoadLE(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// A printable, bounded rendering of file-provided text for error messages.
std::string Quote(absl::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, 80)) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\'' && c != '\\') {
      out += c;
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(u, absl::kZeroPad2));
    }
  }
  if (s.size() > 80) out += "...";
  return out + "'";
}

// UTF-8 as Python's 'surrogatepass' decoder accepts it: no overlong forms, code points <= U+10FFFF.
bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i < static_cast<size_t>(len)) return false;
    for (int k = 1; k < len; ++k) {
      const uint8_t d = static_cast<uint8_t>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff) return false;
    i += len;
  }
  return true;
}

uint32_t Crc32(absl::string_view data) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (char ch : data) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

// ---------------------------------------------------------------------------------------------
// Storage classes and dtypes named by GLOBALs.

struct StorageType {
  absl::string_view name;
  size_t element_size;
  std::optional<DType> dtype;  // nullopt: known size, no DType (complex, quantized)
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", 4, DType::kF32},         {"HalfStorage", 2, DType::kF16},
    {"BFloat16Storage", 2, DType::kBF16},     {"DoubleStorage", 8, DType::kF64},
    {"LongStorage", 8, DType::kI64},          {"IntStorage", 4, DType::kI32},
    {"ShortStorage", 2, DType::kI16},         {"CharStorage", 1, DType::kI8},
    {"ByteStorage", 1, DType::kU8},           {"BoolStorage", 1, DType::kBool},
    {"UntypedStorage", 1, DType::kU8},        {"_UntypedStorage", 1, DType::kU8},
    {"ComplexFloatStorage", 8, std::nullopt}, {"ComplexDoubleStorage", 16, std::nullopt},
    {"QInt8Storage", 1, std::nullopt},        {"QUInt8Storage", 1, std::nullopt},
    {"QInt32Storage", 4, std::nullopt},       {"QUInt4x2Storage", 1, std::nullopt},
    {"QUInt2x4Storage", 1, std::nullopt},
};

// Index into kStorageTypes of a storage class GLOBAL ("torch.FloatStorage",
// "torch.cuda.HalfStorage", "torch.storage.UntypedStorage"), or -1.
int FindStorageType(absl::string_view global) {
  for (absl::string_view module : {"torch.", "torch.cuda.", "torch.storage."}) {
    if (!absl::StartsWith(global, module)) continue;
    const absl::string_view name = global.substr(module.size());
    for (size_t i = 0; i < std::size(kStorageTypes); ++i) {
      if (kStorageTypes[i].name == name) return static_cast<int>(i);
    }
  }
  return -1;
}

// A torch dtype GLOBAL ("torch.float32", "torch.half", ...), as _rebuild_tensor_v3 receives it.
std::optional<DType> FindDType(absl::string_view global) {
  static constexpr std::pair<absl::string_view, DType> kDTypes[] = {
      {"torch.float32", DType::kF32},   {"torch.float", DType::kF32},
      {"torch.float16", DType::kF16},   {"torch.half", DType::kF16},
      {"torch.bfloat16", DType::kBF16}, {"torch.float64", DType::kF64},
      {"torch.double", DType::kF64},    {"torch.int64", DType::kI64},
      {"torch.long", DType::kI64},      {"torch.int32", DType::kI32},
      {"torch.int", DType::kI32},       {"torch.int16", DType::kI16},
      {"torch.short", DType::kI16},     {"torch.int8", DType::kI8},
      {"torch.uint8", DType::kU8},      {"torch.bool", DType::kBool},
  };
  for (const auto& [name, dtype] : kDTypes) {
    if (name == global) return dtype;
  }
  return std::nullopt;
}

// GLOBALs whose call the unpickler interprets.
enum class Fn {
  kOther,
  kRebuildTensor,
  kRebuildTensorV2,
  kRebuildTensorV3,
  kRebuildParameter,
  kRebuildParameterWithState,
  kOrderedDict,
  kSet,
  kFrozenSet,
  kTorchSize,
  kCodecsEncode,
  kBytes,
};

Fn FindFn(absl::string_view global) {
  static constexpr std::pair<absl::string_view, Fn> kFns[] = {
      {"torch._utils._rebuild_tensor", Fn::kRebuildTensor},
      {"torch._utils._rebuild_tensor_v2", Fn::kRebuildTensorV2},
      {"torch._utils._rebuild_tensor_v3", Fn::kRebuildTensorV3},
      {"torch._utils._rebuild_parameter", Fn::kRebuildParameter},
      {"torch._utils._rebuild_parameter_with_state", Fn::kRebuildParameterWithState},
      {"collections.OrderedDict", Fn::kOrderedDict},
      {"builtins.set", Fn::kSet},
      {"builtins.frozenset", Fn::kFrozenSet},
      {"torch.Size", Fn::kTorchSize},
      {"_codecs.encode", Fn::kCodecsEncode},
      {"builtins.bytes", Fn::kBytes},
  };
  for (const auto& [name, fn] : kFns) {
    if (name == global) return fn;
  }
  return Fn::kOther;
}

constexpr absl::string_view kSetName = "builtins.set";
constexpr absl::string_view kFrozenSetName = "builtins.frozenset";

// ---------------------------------------------------------------------------------------------
// The object graph while it is being built: an arena of nodes that refer to each other by index.
// Each node owns its final PickleValue; children are linked into the PickleValues only at the
// end, for the nodes reachable from the root, after checking that the graph is acyclic and shallow.

struct Node {
  enum class Tag : uint8_t {
    kPlain,
    kGlobal,   // a GLOBAL (a class or function); as a value, a kObject placeholder
    kStorage,  // a persistent-id storage; as a value, kObject "torch.XStorage"(key, loc, numel)
    kBigInt,   // an int outside int64 (only while reading the legacy magic number)
  };
  std::shared_ptr<PickleValue> value;
  Tag tag = Tag::kPlain;
  Fn fn = Fn::kOther;     // kGlobal
  int storage_type = -1;  // kStorage: index into kStorageTypes, -1 if unknown
  uint64_t offset = 0;    // of the opcode that made the node
  std::vector<uint32_t> items;
  std::vector<std::pair<uint32_t, uint32_t>> entries;
  std::unique_ptr<std::unordered_map<std::string, size_t>> key_index;  // entry position by key
};

// str dict keys up to this length replace equal earlier keys (see PickleValue::entries).
constexpr size_t kMaxHashedKey = 256;

class Graph {
 public:
  Graph() = default;

  absl::StatusOr<uint32_t> Add(Kind kind, uint64_t offset) {
    if (nodes_.size() >= kMaxPickleValues) {
      return Unsupported(offset, absl::StrCat("more than ", kMaxPickleValues, " pickle values"));
    }
    Node& node = nodes_.emplace_back();
    node.value = std::make_shared<PickleValue>();
    node.value->kind = kind;
    node.offset = offset;
    return static_cast<uint32_t>(nodes_.size() - 1);
  }

  Node& at(uint32_t index) { return nodes_[index]; }
  Kind kind(uint32_t index) const { return nodes_[index].value->kind; }
  bool plain(uint32_t index) const { return nodes_[index].tag == Node::Tag::kPlain; }
  size_t size() const { return nodes_.size(); }

  // Charges `n` units of copying (elements of containers built from other containers, 8-byte
  // words of copied names and keys) against a budget proportional to the pickle bytes read so
  // far, so that repeated memo references cannot multiply memory.
  absl::Status Spend(uint64_t n, uint64_t offset) {
    const uint64_t budget = 4 * pickle_bytes_ + (uint64_t{1} << 20);
    if (n > budget - std::min(budget, spent_)) {
      return Unsupported(offset, "pickle copies more than the parser's budget allows");
    }
    spent_ += n;
    return absl::OkStatus();
  }
  void AddPickleBytes(uint64_t n) { pickle_bytes_ += n; }

  // dict[key] = value with Python's replacement of an equal str or int key.
  absl::Status SetItem(uint32_t dict, uint32_t key, uint32_t value, uint64_t offset) {
    Node& d = nodes_[dict];
    const PickleValue& k = *nodes_[key].value;
    std::string hash_key;
    if (nodes_[key].tag == Node::Tag::kPlain) {
      // Long str keys are not hashed (bounded work per SETITEM); they never repeat in torch files.
      if (k.kind == Kind::kString && k.string.size() <= kMaxHashedKey)
        hash_key = absl::StrCat("s", k.string);
      if (k.kind == Kind::kInt) hash_key = absl::StrCat("i", k.integer);
      if (k.kind == Kind::kBool) hash_key = absl::StrCat("i", k.boolean ? 1 : 0);
    }
    if (!hash_key.empty()) {
      FACTLENS_RETURN_IF_ERROR(Spend(1 + hash_key.size() / 8, offset));
      if (d.key_index == nullptr) {
        d.key_index = std::make_unique<std::unordered_map<std::string, size_t>>();
      }
      const auto [it, inserted] = d.key_index->emplace(std::move(hash_key), d.entries.size());
      if (!inserted) {
        d.entries[it->second].second = value;
        return absl::OkStatus();
      }
    }
    d.entries.emplace_back(key, value);
    return absl::OkStatus();
  }

 private:
  std::deque<Node> nodes_;  // a deque: references stay valid while nodes are added
  uint64_t pickle_bytes_ = 0;
  uint64_t spent_ = 0;
};

// Called for BINPERSID with the persistent id's node and the opcode's offset; returns the node
// that replaces it.
using PersistentLoad = std::function<absl::StatusOr<uint32_t>(uint32_t pid, uint64_t offset)>;

// Opcode names for error messages (the last group is outside the supported subset).
absl::string_view OpName(uint8_t op) {
  static constexpr std::pair<uint8_t, absl::string_view> kNames[] = {
      {'(', "MARK"},
      {'.', "STOP"},
      {'0', "POP"},
      {'1', "POP_MARK"},
      {'2', "DUP"},
      {'N', "NONE"},
      {0x88, "NEWTRUE"},
      {0x89, "NEWFALSE"},
      {'J', "BININT"},
      {'K', "BININT1"},
      {'M', "BININT2"},
      {0x8a, "LONG1"},
      {0x8b, "LONG4"},
      {'G', "BINFLOAT"},
      {'X', "BINUNICODE"},
      {0x8c, "SHORT_BINUNICODE"},
      {0x8d, "BINUNICODE8"},
      {'T', "BINSTRING"},
      {'U', "SHORT_BINSTRING"},
      {'B', "BINBYTES"},
      {'C', "SHORT_BINBYTES"},
      {0x8e, "BINBYTES8"},
      {0x96, "BYTEARRAY8"},
      {']', "EMPTY_LIST"},
      {'l', "LIST"},
      {'a', "APPEND"},
      {'e', "APPENDS"},
      {')', "EMPTY_TUPLE"},
      {'t', "TUPLE"},
      {0x85, "TUPLE1"},
      {0x86, "TUPLE2"},
      {0x87, "TUPLE3"},
      {'}', "EMPTY_DICT"},
      {'d', "DICT"},
      {'s', "SETITEM"},
      {'u', "SETITEMS"},
      {0x8f, "EMPTY_SET"},
      {0x90, "ADDITEMS"},
      {0x91, "FROZENSET"},
      {'c', "GLOBAL"},
      {0x93, "STACK_GLOBAL"},
      {'R', "REDUCE"},
      {0x81, "NEWOBJ"},
      {0x92, "NEWOBJ_EX"},
      {'b', "BUILD"},
      {'Q', "BINPERSID"},
      {'q', "BINPUT"},
      {'r', "LONG_BINPUT"},
      {0x94, "MEMOIZE"},
      {'h', "BINGET"},
      {'j', "LONG_BINGET"},
      {0x80, "PROTO"},
      {0x95, "FRAME"},
      {'I', "INT"},
      {'L', "LONG"},
      {'F', "FLOAT"},
      {'S', "STRING"},
      {'V', "UNICODE"},
      {'P', "PERSID"},
      {'p', "PUT"},
      {'g', "GET"},
      {'i', "INST"},
      {'o', "OBJ"},
      {0x82, "EXT1"},
      {0x83, "EXT2"},
      {0x84, "EXT4"},
      {0x97, "NEXT_BUFFER"},
      {0x98, "READONLY_BUFFER"},
  };
  for (const auto& [code, name] : kNames) {
    if (code == op) return name;
  }
  return "unknown opcode";
}

// One pickle (up to STOP) of `file`, starting at `begin` and not reading at or past `end`. Offsets
// in errors are offsets in `file`.
class Unpickler {
 public:
  Unpickler(absl::string_view file, uint64_t begin, uint64_t end, Graph* graph,
            PersistentLoad persistent_load, bool allow_big_ints = false)
      : file_(file),
        pos_(begin),
        end_(end),
        graph_(*graph),
        persistent_load_(std::move(persistent_load)),
        allow_big_ints_(allow_big_ints) {}

  // The root node of the pickle; position() is then just past STOP.
  absl::StatusOr<uint32_t> Load();
  uint64_t position() const { return pos_; }

 private:
  absl::Status Need(uint64_t n) const {
    if (end_ - pos_ < n) {
      return Corrupt(op_offset_, absl::StrCat("truncated pickle: ", OpName(op_), " needs ", n,
                                              " more bytes, ", end_ - pos_, " left"));
    }
    return absl::OkStatus();
  }
  uint64_t ReadLE(int n) {
    const uint64_t v = LoadLE(file_.data() + pos_, n);
    pos_ += n;
    return v;
  }
  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::Status Require(size_t n) const {
    if (stack_.size() - Fence() < n) {
      return Corrupt(op_offset_, absl::StrCat("pickle stack underflow: ", OpName(op_), " needs ", n,
                                              " values above the last MARK"));
    }
    return absl::OkStatus();
  }
  uint32_t Pop() {
    const uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  // The values above the last MARK, which is removed.
  absl::StatusOr<std::vector<uint32_t>> PopMark() {
    if (marks_.empty()) return Corrupt(op_offset_, absl::StrCat(OpName(op_), " without a MARK"));
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<uint32_t> values(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return values;
  }
  absl::StatusOr<uint32_t> New(Kind kind) { return graph_.Add(kind, op_offset_); }
  absl::Status Push(absl::StatusOr<uint32_t> node) {
    if (!node.ok()) return node.status();
    stack_.push_back(*node);
    return absl::OkStatus();
  }
  absl::Status PushInt(int64_t v) {
    FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kInt));
    graph_.at(node).value->integer = v;
    stack_.push_back(node);
    return absl::OkStatus();
  }
  absl::Status PushScalar(Kind kind, bool b) {
    FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(kind));
    graph_.at(node).value->boolean = b;
    stack_.push_back(node);
    return absl::OkStatus();
  }
  absl::Status PushSequence(Kind kind, std::vector<uint32_t> items) {
    FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(kind));
    graph_.at(node).items = std::move(items);
    stack_.push_back(node);
    return absl::OkStatus();
  }
  absl::Status ReadLong(uint64_t n);
  absl::Status ReadText(uint64_t n, Kind kind, bool validate_utf8);
  absl::StatusOr<std::string> ReadLine();
  absl::Status PushGlobal(std::string module, absl::string_view name);
  absl::StatusOr<uint32_t> Call(uint32_t callable, uint32_t args);
  absl::StatusOr<uint32_t> NewObject(uint32_t cls, uint32_t args, uint32_t kwargs);
  absl::StatusOr<uint32_t> Placeholder(const std::string& name, uint32_t args);
  absl::StatusOr<uint32_t> RebuildTensor(Fn fn, uint32_t args);
  absl::Status Build(uint32_t inst, uint32_t state);
  absl::Status Put(uint64_t index);
  absl::Status Get(uint64_t index);
  absl::Status Dispatch();

  absl::string_view file_;
  uint64_t pos_;
  const uint64_t end_;
  Graph& graph_;
  PersistentLoad persistent_load_;
  const bool allow_big_ints_;
  uint64_t op_offset_ = 0;
  uint8_t op_ = 0;
  bool stopped_ = false;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
};

absl::StatusOr<uint32_t> Unpickler::Load() {
  while (!stopped_) {
    if (pos_ >= end_) {
      return Corrupt(pos_, "truncated pickle: it ends without a STOP opcode");
    }
    op_offset_ = pos_;
    op_ = static_cast<uint8_t>(file_[pos_++]);
    FACTLENS_RETURN_IF_ERROR(Dispatch());
    graph_.AddPickleBytes(pos_ - op_offset_);
  }
  if (stack_.size() != 1 || !marks_.empty()) {
    return Corrupt(op_offset_,
                   absl::StrCat("STOP with ", stack_.size(), " values and ", marks_.size(),
                                " open MARKs on the stack (want 1 and 0)"));
  }
  return stack_.back();
}

absl::Status Unpickler::ReadLong(uint64_t n) {
  FACTLENS_RETURN_IF_ERROR(Need(n));
  const char* p = file_.data() + pos_;
  pos_ += n;
  if (n == 0) return PushInt(0);
  const bool negative = (static_cast<uint8_t>(p[n - 1]) & 0x80) != 0;
  bool fits = true;
  if (n > 8) {
    // Bytes beyond the 8th must be pure sign extension, and so must the 8th byte's top bit.
    const uint8_t extension = negative ? 0xff : 0x00;
    for (uint64_t i = 8; i < n; ++i) fits = fits && static_cast<uint8_t>(p[i]) == extension;
    fits = fits && ((static_cast<uint8_t>(p[7]) & 0x80) != 0) == negative;
  }
  if (!fits) {
    if (!allow_big_ints_) {
      return Unsupported(op_offset_,
                         absl::StrCat(OpName(op_), " integer of ", n, " bytes outside int64"));
    }
    FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kInt));
    graph_.at(node).tag = Node::Tag::kBigInt;
    graph_.at(node).value->string.assign(p, n);
    stack_.push_back(node);
    return absl::OkStatus();
  }
  const int used = static_cast<int>(std::min<uint64_t>(n, 8));
  uint64_t v = LoadLE(p, used);
  if (negative && used < 8) v |= ~uint64_t{0} << (8 * used);
  return PushInt(static_cast<int64_t>(v));
}

absl::Status Unpickler::ReadText(uint64_t n, Kind kind, bool validate_utf8) {
  if (n > kMaxPickleString) {
    return Unsupported(op_offset_, absl::StrCat(OpName(op_), " of ", n,
                                                " bytes exceeds the limit of ", kMaxPickleString));
  }
  FACTLENS_RETURN_IF_ERROR(Need(n));
  const absl::string_view text = file_.substr(pos_, n);
  if (validate_utf8 && !IsUtf8(text)) {
    return Corrupt(op_offset_, absl::StrCat(OpName(op_), " string is not valid UTF-8"));
  }
  pos_ += n;
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(kind));
  graph_.at(node).value->string.assign(text.data(), text.size());
  stack_.push_back(node);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Unpickler::ReadLine() {
  const absl::string_view rest = file_.substr(pos_, end_ - pos_);
  const size_t newline = rest.substr(0, kMaxPickleGlobalName + 1).find('\n');
  if (newline == absl::string_view::npos) {
    if (rest.size() <= kMaxPickleGlobalName) {
      return Corrupt(op_offset_, "truncated pickle: GLOBAL name without a newline");
    }
    return Unsupported(op_offset_,
                       absl::StrCat("GLOBAL name longer than ", kMaxPickleGlobalName, " bytes"));
  }
  const absl::string_view line = rest.substr(0, newline);
  if (!IsUtf8(line)) return Corrupt(op_offset_, "GLOBAL name is not valid UTF-8");
  pos_ += newline + 1;
  return std::string(line);
}

absl::Status Unpickler::PushGlobal(std::string module, absl::string_view name) {
  if (module.empty() || name.empty()) return Corrupt(op_offset_, "GLOBAL with an empty name");
  // Python 2 module names, as pickle's fix_imports maps them.
  if (module == "__builtin__") module = "builtins";
  if (module == "copy_reg") module = "copyreg";
  FACTLENS_RETURN_IF_ERROR(graph_.Spend(1 + (module.size() + name.size()) / 8, op_offset_));
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kObject));
  Node& n = graph_.at(node);
  n.tag = Node::Tag::kGlobal;
  n.value->string = absl::StrCat(module, ".", name);
  n.fn = FindFn(n.value->string);
  stack_.push_back(node);
  return absl::OkStatus();
}

absl::Status Unpickler::Put(uint64_t index) {
  FACTLENS_RETURN_IF_ERROR(Require(1));
  if (memo_.size() >= kMaxPickleMemo && memo_.count(index) == 0) {
    return Unsupported(op_offset_, absl::StrCat("more than ", kMaxPickleMemo, " memo entries"));
  }
  memo_[index] = stack_.back();
  return absl::OkStatus();
}

absl::Status Unpickler::Get(uint64_t index) {
  const auto it = memo_.find(index);
  if (it == memo_.end()) {
    return Corrupt(op_offset_,
                   absl::StrCat(OpName(op_), " of memo entry ", index, ", which was never stored"));
  }
  stack_.push_back(it->second);
  return absl::OkStatus();
}

absl::Status Unpickler::Dispatch() {
  switch (op_) {
    case 0x80: {  // PROTO
      FACTLENS_RETURN_IF_ERROR(Need(1));
      const uint64_t version = ReadLE(1);
      if (version > 5) {
        return Unsupported(op_offset_, absl::StrCat("pickle protocol ", version));
      }
      return absl::OkStatus();
    }
    case 0x95: {  // FRAME: a length hint; the frame's opcodes follow in line.
      FACTLENS_RETURN_IF_ERROR(Need(8));
      const uint64_t length = ReadLE(8);
      if (length > end_ - pos_) {
        return Corrupt(op_offset_, absl::StrCat("truncated pickle: FRAME of ", length,
                                                " bytes with ", end_ - pos_, " left"));
      }
      return absl::OkStatus();
    }
    case '.':
      stopped_ = true;
      return absl::OkStatus();
    case '(':
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case '0':  // POP: like CPython, an empty stack above a MARK pops the MARK.
      if (stack_.size() > Fence()) {
        stack_.pop_back();
      } else if (!marks_.empty()) {
        marks_.pop_back();
      } else {
        return Require(1);
      }
      return absl::OkStatus();
    case '1':
      return PopMark().status();
    case '2':
      FACTLENS_RETURN_IF_ERROR(Require(1));
      stack_.push_back(stack_.back());
      return absl::OkStatus();
    case 'N':
      return PushScalar(Kind::kNone, false);
    case 0x88:
      return PushScalar(Kind::kBool, true);
    case 0x89:
      return PushScalar(Kind::kBool, false);
    case 'J':
      FACTLENS_RETURN_IF_ERROR(Need(4));
      return PushInt(static_cast<int32_t>(static_cast<uint32_t>(ReadLE(4))));
    case 'K':
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return PushInt(static_cast<int64_t>(ReadLE(1)));
    case 'M':
      FACTLENS_RETURN_IF_ERROR(Need(2));
      return PushInt(static_cast<int64_t>(ReadLE(2)));
    case 0x8a:
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return ReadLong(ReadLE(1));
    case 0x8b: {
      FACTLENS_RETURN_IF_ERROR(Need(4));
      const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(ReadLE(4)));
      if (n < 0) return Corrupt(op_offset_, "LONG4 with a negative byte count");
      return ReadLong(static_cast<uint64_t>(n));
    }
    case 'G': {
      FACTLENS_RETURN_IF_ERROR(Need(8));
      uint64_t bits = 0;
      for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(file_[pos_ + i]);
      pos_ += 8;
      double v;
      std::memcpy(&v, &bits, sizeof(v));
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kFloat));
      graph_.at(node).value->floating = v;
      stack_.push_back(node);
      return absl::OkStatus();
    }
    case 'X':
      FACTLENS_RETURN_IF_ERROR(Need(4));
      return ReadText(ReadLE(4), Kind::kString, true);
    case 0x8c:
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return ReadText(ReadLE(1), Kind::kString, true);
    case 0x8d:
      FACTLENS_RETURN_IF_ERROR(Need(8));
      return ReadText(ReadLE(8), Kind::kString, true);
    case 'T': {  // Python 2 str; torch.load decodes it as UTF-8
      FACTLENS_RETURN_IF_ERROR(Need(4));
      const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(ReadLE(4)));
      if (n < 0) return Corrupt(op_offset_, "BINSTRING with a negative length");
      return ReadText(static_cast<uint64_t>(n), Kind::kString, true);
    }
    case 'U':
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return ReadText(ReadLE(1), Kind::kString, true);
    case 'B':
      FACTLENS_RETURN_IF_ERROR(Need(4));
      return ReadText(ReadLE(4), Kind::kBytes, false);
    case 'C':
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return ReadText(ReadLE(1), Kind::kBytes, false);
    case 0x8e:
    case 0x96:
      FACTLENS_RETURN_IF_ERROR(Need(8));
      return ReadText(ReadLE(8), Kind::kBytes, false);
    case ']':
      return PushSequence(Kind::kList, {});
    case ')':
      return PushSequence(Kind::kTuple, {});
    case '}':
      return PushSequence(Kind::kDict, {});
    case 0x8f: {  // EMPTY_SET
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kObject));
      graph_.at(node).value->string = std::string(kSetName);
      stack_.push_back(node);
      return absl::OkStatus();
    }
    case 'l':
    case 't': {
      FACTLENS_ASSIGN_OR_RETURN(std::vector<uint32_t> items, PopMark());
      return PushSequence(op_ == 'l' ? Kind::kList : Kind::kTuple, std::move(items));
    }
    case 0x85:
    case 0x86:
    case 0x87: {
      const size_t n = op_ - 0x84;
      FACTLENS_RETURN_IF_ERROR(Require(n));
      std::vector<uint32_t> items(stack_.end() - n, stack_.end());
      stack_.resize(stack_.size() - n);
      return PushSequence(Kind::kTuple, std::move(items));
    }
    case 0x91: {  // FROZENSET
      FACTLENS_ASSIGN_OR_RETURN(std::vector<uint32_t> items, PopMark());
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kObject));
      graph_.at(node).value->string = std::string(kFrozenSetName);
      graph_.at(node).items = std::move(items);
      stack_.push_back(node);
      return absl::OkStatus();
    }
    case 'd': {
      FACTLENS_ASSIGN_OR_RETURN(std::vector<uint32_t> items, PopMark());
      if (items.size() % 2 != 0) {
        return Corrupt(op_offset_, "DICT with an odd number of keys and values");
      }
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kDict));
      for (size_t i = 0; i < items.size(); i += 2) {
        FACTLENS_RETURN_IF_ERROR(graph_.SetItem(node, items[i], items[i + 1], op_offset_));
      }
      stack_.push_back(node);
      return absl::OkStatus();
    }
    case 'a':
    case 'e':
    case 0x90: {  // APPEND, APPENDS, ADDITEMS
      std::vector<uint32_t> values;
      if (op_ == 'a') {
        FACTLENS_RETURN_IF_ERROR(Require(2));
        values.push_back(Pop());
      } else {
        FACTLENS_ASSIGN_OR_RETURN(values, PopMark());
        FACTLENS_RETURN_IF_ERROR(Require(1));
      }
      const uint32_t target = stack_.back();
      const Kind kind = graph_.kind(target);
      const bool ok =
          graph_.plain(target) &&
          (op_ == 0x90 ? kind == Kind::kObject : (kind == Kind::kList || kind == Kind::kObject));
      if (!ok) {
        return Corrupt(op_offset_, absl::StrCat(OpName(op_), " to a value that is not a ",
                                                op_ == 0x90 ? "set" : "list"));
      }
      std::vector<uint32_t>& items = graph_.at(target).items;
      items.insert(items.end(), values.begin(), values.end());
      return absl::OkStatus();
    }
    case 's':
    case 'u': {  // SETITEM, SETITEMS
      std::vector<uint32_t> values;
      if (op_ == 's') {
        FACTLENS_RETURN_IF_ERROR(Require(3));
        values.resize(2);
        values[1] = Pop();
        values[0] = Pop();
      } else {
        FACTLENS_ASSIGN_OR_RETURN(values, PopMark());
        FACTLENS_RETURN_IF_ERROR(Require(1));
        if (values.size() % 2 != 0) {
          return Corrupt(op_offset_, "SETITEMS with an odd number of keys and values");
        }
      }
      const uint32_t target = stack_.back();
      const Kind kind = graph_.kind(target);
      if (!graph_.plain(target) || (kind != Kind::kDict && kind != Kind::kObject)) {
        return Corrupt(op_offset_, absl::StrCat(OpName(op_), " to a value that is not a dict"));
      }
      for (size_t i = 0; i < values.size(); i += 2) {
        FACTLENS_RETURN_IF_ERROR(graph_.SetItem(target, values[i], values[i + 1], op_offset_));
      }
      return absl::OkStatus();
    }
    case 'c': {
      FACTLENS_ASSIGN_OR_RETURN(std::string module, ReadLine());
      FACTLENS_ASSIGN_OR_RETURN(const std::string name, ReadLine());
      return PushGlobal(std::move(module), name);
    }
    case 0x93: {  // STACK_GLOBAL
      FACTLENS_RETURN_IF_ERROR(Require(2));
      const uint32_t name = Pop();
      const uint32_t module = Pop();
      if (!graph_.plain(name) || !graph_.plain(module) || graph_.kind(name) != Kind::kString ||
          graph_.kind(module) != Kind::kString) {
        return Corrupt(op_offset_, "STACK_GLOBAL of values that are not strings");
      }
      const std::string& n = graph_.at(name).value->string;
      const std::string& m = graph_.at(module).value->string;
      if (n.size() > kMaxPickleGlobalName || m.size() > kMaxPickleGlobalName) {
        return Unsupported(
            op_offset_, absl::StrCat("GLOBAL name longer than ", kMaxPickleGlobalName, " bytes"));
      }
      return PushGlobal(m, n);
    }
    case 'R': {
      FACTLENS_RETURN_IF_ERROR(Require(2));
      const uint32_t args = Pop();
      const uint32_t callable = Pop();
      return Push(Call(callable, args));
    }
    case 0x81: {
      FACTLENS_RETURN_IF_ERROR(Require(2));
      const uint32_t args = Pop();
      const uint32_t cls = Pop();
      return Push(NewObject(cls, args, /*kwargs=*/std::numeric_limits<uint32_t>::max()));
    }
    case 0x92: {
      FACTLENS_RETURN_IF_ERROR(Require(3));
      const uint32_t kwargs = Pop();
      const uint32_t args = Pop();
      const uint32_t cls = Pop();
      if (!graph_.plain(kwargs) || graph_.kind(kwargs) != Kind::kDict) {
        return Corrupt(op_offset_, "NEWOBJ_EX keyword arguments are not a dict");
      }
      return Push(NewObject(cls, args, kwargs));
    }
    case 'b': {
      FACTLENS_RETURN_IF_ERROR(Require(2));
      const uint32_t state = Pop();
      return Build(stack_.back(), state);
    }
    case 'Q': {
      FACTLENS_RETURN_IF_ERROR(Require(1));
      const uint32_t pid = Pop();
      if (!persistent_load_) {
        return Corrupt(op_offset_, "persistent id (BINPERSID) where none is allowed");
      }
      return Push(persistent_load_(pid, op_offset_));
    }
    case 'q':
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return Put(ReadLE(1));
    case 'r':
      FACTLENS_RETURN_IF_ERROR(Need(4));
      return Put(ReadLE(4));
    case 0x94:
      return Put(memo_.size());
    case 'h':
      FACTLENS_RETURN_IF_ERROR(Need(1));
      return Get(ReadLE(1));
    case 'j':
      FACTLENS_RETURN_IF_ERROR(Need(4));
      return Get(ReadLE(4));
    default:
      return Unsupported(op_offset_,
                         absl::StrCat("pickle opcode 0x", absl::Hex(op_, absl::kZeroPad2), " (",
                                      OpName(op_), ") is outside the supported subset"));
  }
}

absl::StatusOr<uint32_t> Unpickler::Placeholder(const std::string& name, uint32_t args) {
  const size_t n = graph_.at(args).items.size();
  FACTLENS_RETURN_IF_ERROR(graph_.Spend(n + 1 + name.size() / 8, op_offset_));
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kObject));
  graph_.at(node).value->string = name;
  graph_.at(node).items = graph_.at(args).items;
  return node;
}

absl::StatusOr<uint32_t> Unpickler::Call(uint32_t callable, uint32_t args) {
  if (graph_.at(callable).tag != Node::Tag::kGlobal) {
    return Unsupported(op_offset_, "REDUCE of a callable that is not a GLOBAL");
  }
  if (!graph_.plain(args) || graph_.kind(args) != Kind::kTuple) {
    return Corrupt(op_offset_, "REDUCE arguments are not a tuple");
  }
  const Fn fn = graph_.at(callable).fn;
  const std::string& name = graph_.at(callable).value->string;
  const std::vector<uint32_t>& a = graph_.at(args).items;  // nodes never move
  auto wrong_arity = [&] {
    return Corrupt(op_offset_, absl::StrCat(name, " called with ", a.size(), " arguments"));
  };
  switch (fn) {
    case Fn::kRebuildTensor:
    case Fn::kRebuildTensorV2:
    case Fn::kRebuildTensorV3:
      return RebuildTensor(fn, args);
    case Fn::kRebuildParameter:
    case Fn::kRebuildParameterWithState:
      if (a.size() != (fn == Fn::kRebuildParameter ? 3u : 4u)) return wrong_arity();
      return a[0];  // the Parameter is its tensor
    case Fn::kOrderedDict: {
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t dict, New(Kind::kDict));
      if (a.empty()) return dict;
      if (a.size() != 1) return wrong_arity();
      const Kind kind = graph_.kind(a[0]);
      if (graph_.plain(a[0]) && kind == Kind::kDict) {
        const auto& entries = graph_.at(a[0]).entries;
        FACTLENS_RETURN_IF_ERROR(graph_.Spend(entries.size(), op_offset_));
        for (const auto& [k, v] : entries) {
          FACTLENS_RETURN_IF_ERROR(graph_.SetItem(dict, k, v, op_offset_));
        }
        return dict;
      }
      if (!graph_.plain(a[0]) || (kind != Kind::kList && kind != Kind::kTuple)) {
        return Unsupported(op_offset_, "collections.OrderedDict of neither pairs nor a dict");
      }
      const std::vector<uint32_t>& pairs = graph_.at(a[0]).items;
      FACTLENS_RETURN_IF_ERROR(graph_.Spend(pairs.size(), op_offset_));
      for (uint32_t pair : pairs) {
        const Kind pk = graph_.kind(pair);
        if (!graph_.plain(pair) || (pk != Kind::kTuple && pk != Kind::kList) ||
            graph_.at(pair).items.size() != 2) {
          return Corrupt(op_offset_, "collections.OrderedDict item is not a (key, value) pair");
        }
        FACTLENS_RETURN_IF_ERROR(
            graph_.SetItem(dict, graph_.at(pair).items[0], graph_.at(pair).items[1], op_offset_));
      }
      return dict;
    }
    case Fn::kSet:
    case Fn::kFrozenSet: {
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t set, New(Kind::kObject));
      graph_.at(set).value->string = std::string(fn == Fn::kSet ? kSetName : kFrozenSetName);
      if (a.empty()) return set;
      const Kind kind = graph_.kind(a[0]);
      if (a.size() != 1 || !graph_.plain(a[0]) ||
          (kind != Kind::kList && kind != Kind::kTuple && kind != Kind::kObject)) {
        return Unsupported(op_offset_, absl::StrCat(name, " of something other than a sequence"));
      }
      FACTLENS_RETURN_IF_ERROR(graph_.Spend(graph_.at(a[0]).items.size(), op_offset_));
      graph_.at(set).items = graph_.at(a[0]).items;
      return set;
    }
    case Fn::kTorchSize:
      if (a.size() == 1 && graph_.plain(a[0]) && graph_.kind(a[0]) == Kind::kTuple) return a[0];
      return Placeholder(name, args);
    case Fn::kBytes:
      if (a.empty()) return New(Kind::kBytes);
      return Placeholder(name, args);
    case Fn::kCodecsEncode: {
      // Protocol 2 writes bytes b as _codecs.encode(b.decode("latin1"), "latin1").
      if (a.size() != 2 || !graph_.plain(a[0]) || !graph_.plain(a[1]) ||
          graph_.kind(a[0]) != Kind::kString || graph_.kind(a[1]) != Kind::kString) {
        return Placeholder(name, args);
      }
      const std::string& encoding = graph_.at(a[1]).value->string;
      if (encoding != "latin1" && encoding != "latin-1" && encoding != "iso-8859-1") {
        return Placeholder(name, args);
      }
      const std::string& text = graph_.at(a[0]).value->string;  // valid UTF-8
      FACTLENS_RETURN_IF_ERROR(graph_.Spend(1 + text.size() / 8, op_offset_));
      std::string bytes;
      for (size_t i = 0; i < text.size();) {
        const uint8_t c = static_cast<uint8_t>(text[i]);
        if (c < 0x80) {
          bytes += static_cast<char>(c);
          i += 1;
        } else if ((c & 0xe0) == 0xc0 && c <= 0xc3) {
          bytes +=
              static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3f));
          i += 2;
        } else {
          return Corrupt(op_offset_, "_codecs.encode of a character outside latin1");
        }
      }
      FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kBytes));
      graph_.at(node).value->string = std::move(bytes);
      return node;
    }
    case Fn::kOther:
      break;
  }
  return Placeholder(name, args);
}

absl::StatusOr<uint32_t> Unpickler::NewObject(uint32_t cls, uint32_t args, uint32_t kwargs) {
  if (graph_.at(cls).tag != Node::Tag::kGlobal) {
    return Unsupported(op_offset_, absl::StrCat(OpName(op_), " of a class that is not a GLOBAL"));
  }
  if (!graph_.plain(args) || graph_.kind(args) != Kind::kTuple) {
    return Corrupt(op_offset_, absl::StrCat(OpName(op_), " arguments are not a tuple"));
  }
  const Fn fn = graph_.at(cls).fn;
  if (fn == Fn::kOrderedDict) return New(Kind::kDict);  // cls.__new__ ignores the arguments
  const std::string name = graph_.at(cls).value->string;
  if (fn == Fn::kSet || fn == Fn::kFrozenSet) {
    FACTLENS_ASSIGN_OR_RETURN(const uint32_t set, New(Kind::kObject));
    graph_.at(set).value->string = std::string(fn == Fn::kSet ? kSetName : kFrozenSetName);
    return set;
  }
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, Placeholder(name, args));
  if (kwargs != std::numeric_limits<uint32_t>::max()) {
    const auto& entries = graph_.at(kwargs).entries;
    FACTLENS_RETURN_IF_ERROR(graph_.Spend(entries.size(), op_offset_));
    for (const auto& [k, v] : entries) {
      FACTLENS_RETURN_IF_ERROR(graph_.SetItem(node, k, v, op_offset_));
    }
  }
  return node;
}

absl::Status Unpickler::Build(uint32_t inst, uint32_t state) {
  if (!graph_.plain(inst)) {
    return Corrupt(op_offset_, "BUILD on a class or storage");
  }
  switch (graph_.kind(inst)) {
    case Kind::kObject: {
      // A dict state is the instance's __dict__; a (dict, slots-dict) pair is __dict__ and slots.
      std::vector<uint32_t> dicts;
      if (graph_.plain(state) && graph_.kind(state) == Kind::kDict) {
        dicts.push_back(state);
      } else if (graph_.plain(state) && graph_.kind(state) == Kind::kTuple &&
                 graph_.at(state).items.size() == 2) {
        for (uint32_t part : graph_.at(state).items) {
          if (graph_.plain(part) && graph_.kind(part) == Kind::kDict) dicts.push_back(part);
        }
      }
      for (uint32_t dict : dicts) {
        const auto& entries = graph_.at(dict).entries;
        FACTLENS_RETURN_IF_ERROR(graph_.Spend(entries.size(), op_offset_));
        for (const auto& [k, v] : entries) {
          FACTLENS_RETURN_IF_ERROR(graph_.SetItem(inst, k, v, op_offset_));
        }
      }
      return absl::OkStatus();  // other states (for __setstate__) are dropped
    }
    case Kind::kDict:    // OrderedDict attributes such as the state_dict's _metadata
    case Kind::kTensor:  // tensor-subclass state
      return absl::OkStatus();
    default:
      return Corrupt(op_offset_, "BUILD on a value that has no attributes");
  }
}

absl::StatusOr<uint32_t> Unpickler::RebuildTensor(Fn fn, uint32_t args) {
  const std::vector<uint32_t>& a = graph_.at(args).items;
  const char* fname = fn == Fn::kRebuildTensor     ? "_rebuild_tensor"
                      : fn == Fn::kRebuildTensorV2 ? "_rebuild_tensor_v2"
                                                   : "_rebuild_tensor_v3";
  const size_t min_args = fn == Fn::kRebuildTensor ? 4 : fn == Fn::kRebuildTensorV2 ? 6 : 7;
  if (a.size() != min_args && !(fn != Fn::kRebuildTensor && a.size() == min_args + 1)) {
    return Corrupt(op_offset_, absl::StrCat(fname, " called with ", a.size(), " arguments"));
  }
  const Node& storage = graph_.at(a[0]);
  if (storage.tag != Node::Tag::kStorage) {
    return Corrupt(op_offset_, absl::StrCat(fname, ": the first argument is not a storage"));
  }
  const PickleValue& offset = *graph_.at(a[1]).value;
  if (!graph_.plain(a[1]) || offset.kind != Kind::kInt || offset.integer < 0) {
    return Corrupt(op_offset_, absl::StrCat(fname, ": storage offset is not an int >= 0"));
  }
  auto dims = [&](uint32_t node, std::vector<int64_t>* out) -> absl::Status {
    const Kind kind = graph_.kind(node);
    if (!graph_.plain(node) || (kind != Kind::kTuple && kind != Kind::kList)) {
      return Corrupt(op_offset_, absl::StrCat(fname, ": size or stride is not a tuple"));
    }
    const std::vector<uint32_t>& items = graph_.at(node).items;
    if (items.size() > kMaxTensorDims) {
      return Unsupported(op_offset_, absl::StrCat("tensor with ", items.size(),
                                                  " dimensions (limit ", kMaxTensorDims, ")"));
    }
    for (uint32_t item : items) {
      const PickleValue& v = *graph_.at(item).value;
      if (!graph_.plain(item) || v.kind != Kind::kInt || v.integer < 0) {
        return Corrupt(op_offset_, absl::StrCat(fname, ": size or stride is not an int >= 0"));
      }
      out->push_back(v.integer);
    }
    return absl::OkStatus();
  };
  std::vector<int64_t> shape, stride;
  FACTLENS_RETURN_IF_ERROR(dims(a[2], &shape));
  FACTLENS_RETURN_IF_ERROR(dims(a[3], &stride));
  if (shape.size() != stride.size()) {
    return Corrupt(op_offset_, absl::StrCat(fname, ": ", shape.size(), " sizes but ", stride.size(),
                                            " strides"));
  }
  const std::string& storage_name = storage.value->string;
  std::optional<DType> dtype;
  if (fn == Fn::kRebuildTensorV3) {
    const Node& d = graph_.at(a[6]);
    if (d.tag != Node::Tag::kGlobal) {
      return Corrupt(op_offset_, "_rebuild_tensor_v3: the dtype is not a GLOBAL");
    }
    dtype = FindDType(d.value->string);
    if (!dtype) {
      return Unsupported(op_offset_, absl::StrCat("tensor of dtype ", Quote(d.value->string)));
    }
  } else if (storage.storage_type < 0) {
    return Unsupported(op_offset_,
                       absl::StrCat("tensor on a storage of unknown type ", Quote(storage_name)));
  } else {
    dtype = kStorageTypes[storage.storage_type].dtype;
    if (!dtype) {
      return Unsupported(
          op_offset_, absl::StrCat("tensor on a ", Quote(storage_name), " (no supported dtype)"));
    }
  }
  const std::string& key = graph_.at(storage.items[0]).value->string;
  FACTLENS_RETURN_IF_ERROR(graph_.Spend(1 + shape.size() + key.size() / 8, op_offset_));
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, New(Kind::kTensor));
  PickleValue::TensorRef& ref = graph_.at(node).value->tensor;
  ref.storage_key = key;
  ref.dtype = *dtype;
  ref.storage_offset = offset.integer;
  ref.shape = std::move(shape);
  ref.stride = std::move(stride);
  return node;
}

// ---------------------------------------------------------------------------------------------
// Persistent ids: ('storage', storage class, key, location, numel[, view_metadata]).

struct StorageUse {
  int type = -1;  // index into kStorageTypes, -1 unknown
  std::string type_name;
  int64_t numel = 0;
  uint64_t offset = 0;  // of the first BINPERSID naming it
};

class StorageLoader {
 public:
  StorageLoader(Graph* graph, bool legacy) : graph_(*graph), legacy_(legacy) {}

  absl::StatusOr<uint32_t> Load(uint32_t pid, uint64_t offset);
  const std::map<std::string, StorageUse>& uses() const { return uses_; }

 private:
  Graph& graph_;
  const bool legacy_;
  std::map<std::string, StorageUse> uses_;
};

absl::StatusOr<uint32_t> StorageLoader::Load(uint32_t pid, uint64_t offset) {
  if (!graph_.plain(pid) || graph_.kind(pid) != Kind::kTuple || graph_.at(pid).items.empty()) {
    return Corrupt(offset, "persistent id is not a non-empty tuple");
  }
  const std::vector<uint32_t>& items = graph_.at(pid).items;  // nodes never move
  const PickleValue& type_name = *graph_.at(items[0]).value;
  if (!graph_.plain(items[0]) ||
      (type_name.kind != Kind::kString && type_name.kind != Kind::kBytes)) {
    return Corrupt(offset, "persistent id does not start with a type name");
  }
  if (legacy_ && type_name.string == "module" && items.size() >= 2) {
    return items[1];  // a pickled nn.Module class with its source: the class itself
  }
  if (type_name.string != "storage") {
    return Corrupt(offset, absl::StrCat("persistent id of unknown type ", Quote(type_name.string)));
  }
  const size_t want = legacy_ ? 6 : 5;
  if (items.size() != want) {
    return Corrupt(offset, absl::StrCat("storage persistent id of ", items.size(), " fields (want ",
                                        want, ")"));
  }
  const Node& cls = graph_.at(items[1]);
  const PickleValue& key = *graph_.at(items[2]).value;
  const PickleValue& numel = *graph_.at(items[4]).value;
  if (cls.tag != Node::Tag::kGlobal) {
    return Corrupt(offset, "storage persistent id without a storage class");
  }
  if (!graph_.plain(items[2]) || key.kind != Kind::kString) {
    return Corrupt(offset, "storage persistent id whose key is not a string");
  }
  if (key.string.size() > kMaxTorchStorageKey) {
    return Unsupported(offset, absl::StrCat("storage key of ", key.string.size(),
                                            " bytes (torch writes short decimal keys)"));
  }
  if (!graph_.plain(items[4]) || numel.kind != Kind::kInt || numel.integer < 0) {
    return Corrupt(offset, "storage persistent id whose size is not an int >= 0");
  }
  if (legacy_ && graph_.kind(items[5]) != Kind::kNone) {
    return Unsupported(offset, "storage views (view_metadata of torch < 0.4 files)");
  }
  const int type = FindStorageType(cls.value->string);
  FACTLENS_RETURN_IF_ERROR(graph_.Spend(1 + cls.value->string.size() / 8, offset));
  const auto [it, inserted] = uses_.try_emplace(key.string);
  StorageUse& use = it->second;
  if (inserted) {
    use.type = type;
    use.type_name = cls.value->string;
    use.numel = numel.integer;
    use.offset = offset;
  } else if (use.type_name != cls.value->string || use.numel != numel.integer) {
    return Corrupt(
        offset, absl::StrCat("storage ", Quote(key.string), " referenced as ", Quote(use.type_name),
                             " of ", use.numel, " elements and as ", Quote(cls.value->string),
                             " of ", numel.integer));
  }
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t node, graph_.Add(Kind::kObject, offset));
  Node& n = graph_.at(node);
  n.tag = Node::Tag::kStorage;
  n.storage_type = type;
  n.value->string = graph_.at(items[1]).value->string;
  n.items = {items[2], items[3], items[4]};
  return node;
}

// ---------------------------------------------------------------------------------------------
// Linking the reachable graph into PickleValues; checks cycles, depth and tensor bounds.

class Linker {
 public:
  Linker(Graph* graph, const std::map<std::string, TorchStorage>& storages)
      : graph_(*graph), storages_(storages), height_(graph->size(), -1) {}

  absl::StatusOr<std::shared_ptr<const PickleValue>> Link(uint32_t root) {
    FACTLENS_ASSIGN_OR_RETURN(const int height, Visit(root, 1));
    if (height > kMaxPickleDepth) {
      return Unsupported(graph_.at(root).offset,
                         absl::StrCat("object graph nested deeper than ", kMaxPickleDepth));
    }
    return graph_.at(root).value;
  }

 private:
  static constexpr int kInProgress = -2;

  absl::StatusOr<int> Visit(uint32_t index, int depth) {
    Node& node = graph_.at(index);
    if (depth > kMaxPickleDepth) {
      return Unsupported(node.offset,
                         absl::StrCat("object graph nested deeper than ", kMaxPickleDepth));
    }
    if (height_[index] == kInProgress) {
      return Corrupt(node.offset, "the object graph has a cycle (a container inside itself)");
    }
    if (height_[index] >= 0) return CheckDepth(index, depth, height_[index]);
    height_[index] = kInProgress;
    int height = 1;
    auto visit = [&](uint32_t child) -> absl::Status {
      FACTLENS_ASSIGN_OR_RETURN(const int h, Visit(child, depth + 1));
      height = std::max(height, h + 1);
      return absl::OkStatus();
    };
    PickleValue& value = *node.value;
    value.items.reserve(node.items.size());
    for (uint32_t child : node.items) {
      FACTLENS_RETURN_IF_ERROR(visit(child));
      value.items.push_back(graph_.at(child).value);
    }
    value.entries.reserve(node.entries.size());
    for (const auto& [k, v] : node.entries) {
      FACTLENS_RETURN_IF_ERROR(visit(k));
      FACTLENS_RETURN_IF_ERROR(visit(v));
      value.entries.emplace_back(graph_.at(k).value, graph_.at(v).value);
    }
    node.items = {};
    node.entries = {};
    node.key_index.reset();
    if (node.tag == Node::Tag::kBigInt) {
      return Unsupported(node.offset, "integer outside int64");
    }
    if (value.kind == Kind::kTensor) FACTLENS_RETURN_IF_ERROR(CheckTensor(node));
    height_[index] = height;
    return CheckDepth(index, depth, height);
  }

  // The longest path through a node is at least its depth plus its height below it.
  absl::StatusOr<int> CheckDepth(uint32_t index, int depth, int height) {
    if (depth - 1 + height > kMaxPickleDepth) {
      return Unsupported(graph_.at(index).offset,
                         absl::StrCat("object graph nested deeper than ", kMaxPickleDepth));
    }
    return height;
  }

  absl::Status CheckTensor(const Node& node) {
    const PickleValue::TensorRef& ref = node.value->tensor;
    const auto it = storages_.find(ref.storage_key);
    if (it == storages_.end()) {
      return Corrupt(node.offset, absl::StrCat("tensor on storage ", Quote(ref.storage_key),
                                               ", which the file does not hold"));
    }
    for (int64_t d : ref.shape) {
      if (d == 0) return absl::OkStatus();  // empty: no element is read
    }
    // Index of the last element, in elements of the tensor's dtype; 128-bit, saturating far
    // above any storage size.
    unsigned __int128 last = static_cast<uint64_t>(ref.storage_offset);
    constexpr unsigned __int128 kCap = static_cast<unsigned __int128>(1) << 100;
    for (size_t i = 0; i < ref.shape.size() && last < kCap; ++i) {
      last +=
          static_cast<unsigned __int128>(ref.shape[i] - 1) * static_cast<uint64_t>(ref.stride[i]);
    }
    const uint64_t storage_bytes = it->second.end - it->second.begin;
    const uint64_t numel = storage_bytes / DTypeSize(ref.dtype);
    if (last >= numel) {
      return Corrupt(node.offset,
                     absl::StrCat("tensor view (offset ", ref.storage_offset, ", ",
                                  ref.shape.size(), " dims) reads past the end of storage ",
                                  Quote(ref.storage_key), " of ", numel, " elements"));
    }
    return absl::OkStatus();
  }

  Graph& graph_;
  const std::map<std::string, TorchStorage>& storages_;
  std::vector<int> height_;  // -1 unvisited, kInProgress, else the node's height
};

// ---------------------------------------------------------------------------------------------
// The legacy container.

constexpr char kLegacyMagic[] = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";  // 10 bytes, LE

absl::StatusOr<TorchCheckpoint> ParseLegacy(absl::string_view file) {
  Graph graph;
  const uint64_t size = file.size();

  Unpickler magic(file, 0, size, &graph, nullptr, /*allow_big_ints=*/true);
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t magic_node, magic.Load());
  if (graph.at(magic_node).tag != Node::Tag::kBigInt ||
      graph.at(magic_node).value->string != absl::string_view(kLegacyMagic, 10)) {
    return Corrupt(0, "not a torch.save file: the first pickle is not the magic number");
  }

  Unpickler protocol(file, magic.position(), size, &graph, nullptr);
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t protocol_node, protocol.Load());
  const PickleValue& version = *graph.at(protocol_node).value;
  if (version.kind != Kind::kInt) {
    return Corrupt(magic.position(), "legacy torch.save protocol version is not an int");
  }
  if (version.integer != 1001) {
    return Unsupported(magic.position(), absl::StrCat("legacy torch.save protocol version ",
                                                      version.integer, " (only 1001 exists)"));
  }

  Unpickler sys_info(file, protocol.position(), size, &graph, nullptr);
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t sys_info_node, sys_info.Load());
  {
    // sys_info is not linked into the result: read it from the arena.
    const Node& info = graph.at(sys_info_node);
    if (info.value->kind != Kind::kDict) {
      return Corrupt(protocol.position(), "legacy torch.save sys_info is not a dict");
    }
    std::optional<bool> little_endian;
    for (const auto& [k, v] : info.entries) {
      const PickleValue& key = *graph.at(k).value;
      const PickleValue& value = *graph.at(v).value;
      if (key.kind == Kind::kString && key.string == "little_endian" && value.kind == Kind::kBool) {
        little_endian = value.boolean;
      }
    }
    if (!little_endian) {
      return Corrupt(protocol.position(), "legacy torch.save sys_info lacks bool little_endian");
    }
    if (!*little_endian) {
      return Unsupported(protocol.position(), "big-endian legacy torch.save file");
    }
  }

  StorageLoader loader(&graph, /*legacy=*/true);
  Unpickler object(file, sys_info.position(), size, &graph,
                   [&loader](uint32_t pid, uint64_t offset) { return loader.Load(pid, offset); });
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t root, object.Load());

  Unpickler keys_pickle(file, object.position(), size, &graph, nullptr);
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t keys_node, keys_pickle.Load());
  if (graph.kind(keys_node) != Kind::kList) {
    return Corrupt(object.position(), "legacy torch.save storage key list is not a list");
  }

  TorchCheckpoint checkpoint;
  std::map<std::string, bool> seen;
  uint64_t pos = keys_pickle.position();
  for (uint32_t key_node : graph.at(keys_node).items) {
    const PickleValue& key = *graph.at(key_node).value;
    if (key.kind != Kind::kString) {
      return Corrupt(object.position(), "legacy torch.save storage key is not a string");
    }
    const auto use = loader.uses().find(key.string);
    if (use == loader.uses().end()) {
      return Corrupt(pos, absl::StrCat("storage ", Quote(key.string),
                                       " is listed but no persistent id references it (its "
                                       "element size is unknown)"));
    }
    if (!seen.emplace(key.string, true).second) {
      return Corrupt(pos, absl::StrCat("storage ", Quote(key.string), " is listed twice"));
    }
    if (size - pos < 8) {
      return Corrupt(pos, absl::StrCat("truncated file: storage ", Quote(key.string),
                                       " has no element count"));
    }
    const int64_t count = static_cast<int64_t>(LoadLE(file.data() + pos, 8));
    if (count != use->second.numel) {
      return Corrupt(pos, absl::StrCat("storage ", Quote(key.string), " holds ", count,
                                       " elements but its persistent id says ", use->second.numel));
    }
    if (use->second.type < 0) {
      return Unsupported(
          pos, absl::StrCat("storage ", Quote(key.string), " of unknown type ",
                            Quote(use->second.type_name), " (its size cannot be skipped)"));
    }
    const StorageType& type = kStorageTypes[use->second.type];
    const uint64_t available = size - pos - 8;
    if (static_cast<uint64_t>(count) > available / type.element_size) {
      return Corrupt(pos, absl::StrCat("truncated file: storage ", Quote(key.string), " of ", count,
                                       " elements needs ", count, " x ", type.element_size,
                                       " bytes, ", available, " left"));
    }
    const uint64_t begin = pos + 8;
    const uint64_t end = begin + static_cast<uint64_t>(count) * type.element_size;
    if (type.dtype) checkpoint.storages[key.string] = TorchStorage{*type.dtype, begin, end, count};
    pos = end;
  }
  for (const auto& [key, use] : loader.uses()) {
    if (seen.count(key) == 0) {
      return Corrupt(use.offset, absl::StrCat("storage ", Quote(key),
                                              " is referenced but not in the storage list"));
    }
  }

  Linker linker(&graph, checkpoint.storages);
  FACTLENS_ASSIGN_OR_RETURN(checkpoint.root, linker.Link(root));
  return checkpoint;
}

// ---------------------------------------------------------------------------------------------
// The zip container.

struct ZipEntry {
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed = 0;
  uint64_t size = 0;
  uint64_t local_offset = 0;
  uint64_t record_offset = 0;  // of its central directory record
};

struct ZipDirectory {
  std::map<std::string, ZipEntry> entries;
  uint64_t begin = 0;  // of the central directory: entry data must lie before it
};

absl::StatusOr<ZipDirectory> ReadZipDirectory(absl::string_view file) {
  const uint64_t size = file.size();
  const char* d = file.data();
  if (size < 22) return Corrupt(0, "zip file too short for an end-of-central-directory record");
  // The end-of-central-directory record: the last one whose comment ends the file.
  uint64_t eocd = 0;
  bool found = false;
  const uint64_t lowest = size - 22 > 0xffff ? size - 22 - 0xffff : 0;
  for (uint64_t i = size - 22 + 1; i-- > lowest;) {
    if (LoadLE(d + i, 4) == 0x06054b50 && i + 22 + LoadLE(d + i + 20, 2) == size) {
      eocd = i;
      found = true;
      break;
    }
  }
  if (!found) {
    return Corrupt(size, "no zip end-of-central-directory record (truncated zip?)");
  }
  uint64_t disk = LoadLE(d + eocd + 4, 2);
  uint64_t cd_disk = LoadLE(d + eocd + 6, 2);
  uint64_t count = LoadLE(d + eocd + 10, 2);
  uint64_t cd_size = LoadLE(d + eocd + 12, 4);
  uint64_t cd_offset = LoadLE(d + eocd + 16, 4);
  uint64_t limit = eocd;  // the central directory ends at or before this
  if (eocd >= 20 && LoadLE(d + eocd - 20, 4) == 0x07064b50) {
    const uint64_t locator = eocd - 20;
    const uint64_t record = LoadLE(d + locator + 8, 8);
    if (record > locator || locator - record < 56 || LoadLE(d + record, 4) != 0x06064b50) {
      return Corrupt(locator, "zip64 locator does not point to a zip64 end record");
    }
    disk = LoadLE(d + record + 16, 4);
    cd_disk = LoadLE(d + record + 20, 4);
    count = LoadLE(d + record + 32, 8);
    cd_size = LoadLE(d + record + 40, 8);
    cd_offset = LoadLE(d + record + 48, 8);
    limit = record;
  } else if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    return Corrupt(eocd, "zip end record needs zip64 values but there is no zip64 locator");
  }
  if (disk != 0 || cd_disk != 0) return Unsupported(eocd, "multi-disk zip archive");
  if (cd_offset > limit || cd_size > limit - cd_offset) {
    return Corrupt(eocd, absl::StrCat("zip central directory [", cd_offset, ", +", cd_size,
                                      ") runs past its end record"));
  }
  if (count > cd_size / 46) {
    return Corrupt(eocd, absl::StrCat("zip says ", count,
                                      " entries but its central directory "
                                      "has room for ",
                                      cd_size / 46));
  }
  if (count > kMaxZipEntries) {
    return Unsupported(eocd, absl::StrCat("zip with ", count, " entries"));
  }
  ZipDirectory dir;
  dir.begin = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t p = cd_offset;
  for (uint64_t k = 0; k < count; ++k) {
    if (cd_end - p < 46 || LoadLE(d + p, 4) != 0x02014b50) {
      return Corrupt(p, "bad zip central directory record");
    }
    ZipEntry e;
    e.record_offset = p;
    e.flags = static_cast<uint16_t>(LoadLE(d + p + 8, 2));
    e.method = static_cast<uint16_t>(LoadLE(d + p + 10, 2));
    e.crc = static_cast<uint32_t>(LoadLE(d + p + 16, 4));
    e.compressed = LoadLE(d + p + 20, 4);
    e.size = LoadLE(d + p + 24, 4);
    const uint64_t name_len = LoadLE(d + p + 28, 2);
    const uint64_t extra_len = LoadLE(d + p + 30, 2);
    const uint64_t comment_len = LoadLE(d + p + 32, 2);
    uint64_t start_disk = LoadLE(d + p + 34, 2);
    e.local_offset = LoadLE(d + p + 42, 4);
    if (cd_end - p - 46 < name_len + extra_len + comment_len) {
      return Corrupt(p, "zip central directory record runs past the directory");
    }
    std::string name(d + p + 46, name_len);
    // zip64 extended information: the saturated fields, in this order, 8 bytes each.
    absl::string_view extra(d + p + 46 + name_len, extra_len);
    while (extra.size() >= 4) {
      const uint64_t id = LoadLE(extra.data(), 2);
      const uint64_t len = LoadLE(extra.data() + 2, 2);
      if (len > extra.size() - 4) return Corrupt(p, "zip extra field runs past its record");
      if (id == 0x0001) {
        absl::string_view field = extra.substr(4, len);
        for (uint64_t* v : {&e.size, &e.compressed, &e.local_offset}) {
          if (*v != 0xffffffff) continue;
          if (field.size() < 8) return Corrupt(p, "zip64 extra field is too short");
          *v = LoadLE(field.data(), 8);
          field.remove_prefix(8);
        }
        if (start_disk == 0xffff && field.size() >= 4) start_disk = LoadLE(field.data(), 4);
      }
      extra.remove_prefix(4 + len);
    }
    if (start_disk != 0) return Unsupported(p, "multi-disk zip archive");
    if (!dir.entries.emplace(std::move(name), e).second) {
      return Corrupt(p, "zip archive names one entry twice");
    }
    p += 46 + name_len + extra_len + comment_len;
  }
  return dir;
}

// The byte range of a stored entry's data.
absl::StatusOr<std::pair<uint64_t, uint64_t>> EntryData(absl::string_view file,
                                                        const ZipDirectory& dir,
                                                        const std::string& name,
                                                        const ZipEntry& e) {
  if (e.flags & 1) return Unsupported(e.record_offset, "encrypted zip entry " + Quote(name));
  if (e.method != 0) {
    return Unsupported(e.record_offset,
                       absl::StrCat("zip entry ", Quote(name), " is compressed (method ", e.method,
                                    "); torch.save writes stored entries"));
  }
  if (e.compressed != e.size) {
    return Corrupt(e.record_offset,
                   absl::StrCat("stored zip entry ", Quote(name), " has ", e.compressed,
                                " compressed bytes and ", e.size, " bytes"));
  }
  const uint64_t lo = e.local_offset;
  const char* d = file.data();
  if (lo > dir.begin || dir.begin - lo < 30 || LoadLE(d + lo, 4) != 0x04034b50) {
    return Corrupt(lo, absl::StrCat("no zip local header for ", Quote(name)));
  }
  const uint64_t name_len = LoadLE(d + lo + 26, 2);
  const uint64_t extra_len = LoadLE(d + lo + 28, 2);
  const uint64_t data = lo + 30 + name_len + extra_len;
  if (data > dir.begin || file.substr(lo + 30, name_len) != name) {
    return Corrupt(lo, absl::StrCat("zip local header does not match entry ", Quote(name)));
  }
  if (e.size > dir.begin - data) {
    return Corrupt(data, absl::StrCat("zip entry ", Quote(name), " of ", e.size,
                                      " bytes runs into the central directory"));
  }
  return std::make_pair(data, data + e.size);
}

absl::StatusOr<TorchCheckpoint> ParseZip(absl::string_view file) {
  FACTLENS_ASSIGN_OR_RETURN(const ZipDirectory dir, ReadZipDirectory(file));
  // data.pkl: the shallowest entry named */data.pkl.
  const std::string* pickle_name = nullptr;
  int best_depth = std::numeric_limits<int>::max();
  bool ambiguous = false;
  for (const auto& [name, entry] : dir.entries) {
    if (!absl::EndsWith(name, "/data.pkl")) continue;
    const int depth = static_cast<int>(std::count(name.begin(), name.end(), '/'));
    if (depth < best_depth) {
      best_depth = depth;
      pickle_name = &name;
      ambiguous = false;
    } else if (depth == best_depth) {
      ambiguous = true;
    }
  }
  if (pickle_name == nullptr) {
    return Corrupt(dir.begin, "zip archive has no <prefix>/data.pkl: not a torch.save file");
  }
  if (ambiguous) {
    return Corrupt(dir.begin, "zip archive has several <prefix>/data.pkl entries");
  }
  const std::string prefix = pickle_name->substr(0, pickle_name->size() - 8);  // keeps the '/'
  const ZipEntry& pickle_entry = dir.entries.at(*pickle_name);
  FACTLENS_ASSIGN_OR_RETURN(const auto pickle_range,
                            EntryData(file, dir, *pickle_name, pickle_entry));
  const absl::string_view pickle_bytes =
      file.substr(pickle_range.first, pickle_range.second - pickle_range.first);
  if (Crc32(pickle_bytes) != pickle_entry.crc) {
    return Corrupt(pickle_range.first, absl::StrCat(Quote(*pickle_name), " fails its CRC-32"));
  }
  const auto byteorder = dir.entries.find(prefix + "byteorder");
  if (byteorder != dir.entries.end()) {
    FACTLENS_ASSIGN_OR_RETURN(const auto range,
                              EntryData(file, dir, byteorder->first, byteorder->second));
    const absl::string_view order = file.substr(range.first, range.second - range.first);
    if (order == "big") return Unsupported(range.first, "big-endian torch.save file");
    if (order != "little") {
      return Corrupt(range.first, absl::StrCat("byteorder record says ", Quote(order)));
    }
  }

  Graph graph;
  StorageLoader loader(&graph, /*legacy=*/false);
  Unpickler object(file, pickle_range.first, pickle_range.second, &graph,
                   [&loader](uint32_t pid, uint64_t offset) { return loader.Load(pid, offset); });
  FACTLENS_ASSIGN_OR_RETURN(const uint32_t root, object.Load());

  TorchCheckpoint checkpoint;
  checkpoint.zip_format = true;
  for (const auto& [key, use] : loader.uses()) {
    const std::string name = absl::StrCat(prefix, "data/", key);
    const auto entry = dir.entries.find(name);
    if (entry == dir.entries.end()) {
      return Corrupt(use.offset, absl::StrCat("storage record ", Quote(name), " is missing"));
    }
    if (use.type < 0) continue;  // unknown class: usable by no tensor (checked when built)
    const StorageType& type = kStorageTypes[use.type];
    if (!type.dtype) continue;
    FACTLENS_ASSIGN_OR_RETURN(const auto range, EntryData(file, dir, name, entry->second));
    const uint64_t bytes = range.second - range.first;
    if (static_cast<uint64_t>(use.numel) > bytes / type.element_size ||
        static_cast<uint64_t>(use.numel) * type.element_size != bytes) {
      return Corrupt(range.first, absl::StrCat("storage record ", Quote(name), " holds ", bytes,
                                               " bytes but its persistent id says ", use.numel,
                                               " x ", type.element_size));
    }
    checkpoint.storages[key] = TorchStorage{*type.dtype, range.first, range.second, use.numel};
  }

  Linker linker(&graph, checkpoint.storages);
  FACTLENS_ASSIGN_OR_RETURN(checkpoint.root, linker.Link(root));
  return checkpoint;
}

}  // namespace

const PickleValue* PickleValue::Get(absl::string_view key) const {
  if (kind != Kind::kDict && kind != Kind::kObject) return nullptr;
  for (const auto& [k, v] : entries) {
    if (k != nullptr && k->kind == Kind::kString && k->string == key) return v.get();
  }
  return nullptr;
}

absl::StatusOr<TorchCheckpoint> ParseTorchCheckpoint(absl::string_view file) {
  if (absl::StartsWith(file, "PK")) return ParseZip(file);
  if (!file.empty() && static_cast<uint8_t>(file[0]) == 0x80) return ParseLegacy(file);
  if (file.size() >= 262 && file.substr(257, 5) == "ustar") {
    return Unsupported(0, "tar-format torch.save file (torch < 0.4)");
  }
  if (file.empty()) return Corrupt(0, "empty file: not a torch.save file");
  return Corrupt(0, absl::StrCat("not a torch.save file: it starts with byte 0x",
                                 absl::Hex(static_cast<uint8_t>(file[0]), absl::kZeroPad2),
                                 ", neither a zip archive nor a pickle"));
}

}  // namespace factlens
