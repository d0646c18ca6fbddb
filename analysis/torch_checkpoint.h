// Parsing of PyTorch `torch.save` files (fairseq checkpoints among them) without torch and without
// executing anything: a bounded unpickler for the opcode subset torch writes, plus the two
// containers (the legacy five-pickle stream and the zip archive). Like analysis/safetensors.h, this
// layer only validates bytes and describes where each tensor's elements lie in the file.
//
// Containers (torch/serialization.py):
//  - legacy (torch < 1.6, or _use_new_zipfile_serialization=False): five pickles back to back — the
//    magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a sys_info dict, the object,
//    the list of storage keys — then for each listed key an int64 element count and count × element
//    size raw bytes. A storage's element size comes from the persistent id that referenced its key.
//  - zip (torch >= 1.6): `<prefix>/data.pkl` (the object) and `<prefix>/data/<key>` (raw storage
//    bytes), where <prefix> is the directory that holds data.pkl; entries must be stored
//    (uncompressed); zip64 records are supported. data.pkl's CRC-32 is checked; storage bytes are
//    not (reading them is the caller's business).
//
// Pickle subset (protocols 2 to 4 and the BINSTRING opcodes of Python 2 files): PROTO, FRAME, STOP,
// MARK, POP, POP_MARK, DUP, NONE, NEWTRUE, NEWFALSE, BININT/BININT1/BININT2, LONG1/LONG4 (values
// within int64), BINFLOAT, BINUNICODE/SHORT_BINUNICODE/BINUNICODE8, BINSTRING/SHORT_BINSTRING
// (decoded as UTF-8, like torch.load), BINBYTES/SHORT_BINBYTES/BINBYTES8/BYTEARRAY8, EMPTY_LIST,
// LIST, APPEND, APPENDS, EMPTY_TUPLE, TUPLE, TUPLE1-3, EMPTY_DICT, DICT, SETITEM, SETITEMS,
// EMPTY_SET, ADDITEMS, FROZENSET, GLOBAL, STACK_GLOBAL, REDUCE, NEWOBJ, NEWOBJ_EX, BUILD,
// BINPERSID, BINPUT/LONG_BINPUT/MEMOIZE, BINGET/LONG_BINGET. Anything else is Unimplemented.
//
// GLOBALs are never imported or called. Those with a meaning here:
//  - torch._utils._rebuild_tensor / _rebuild_tensor_v2 / _rebuild_tensor_v3 → kTensor;
//    _rebuild_parameter / _rebuild_parameter_with_state → the tensor they wrap.
//  - storage classes in persistent ids: torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,
//    Bool}Storage (also under torch.cuda) and torch.storage.UntypedStorage (bytes, kU8); complex
//    and quantized storage classes are known by element size only (skipped, absent from
//    `storages`). A storage used as a value (not rebuilt into a tensor) is a kObject named after
//    its class ("torch.FloatStorage") with items (key, location, numel).
//  - collections.OrderedDict → kDict (BUILD state such as `_metadata` is dropped);
//    builtins.set / frozenset (and EMPTY_SET, FROZENSET) → kObject "builtins.set" /
//    "builtins.frozenset" whose items are the elements; torch.Size(t) → the tuple t;
//    _codecs.encode(s, "latin1") (how protocol 2 writes bytes) → kBytes.
//  - every other GLOBAL (argparse.Namespace, optimizer classes, numpy scalars, torch dtypes used as
//    values, ...) is a kObject placeholder named "module.Name"; REDUCE/NEWOBJ keep its arguments as
//    `items`, BUILD with a dict state (or a (dict, slots-dict) pair) keeps it as `entries`.
//    Python 2 module names are mapped (__builtin__ → builtins, copy_reg → copyreg).
//
// The graph is a DAG: an object the pickle references several times (memo) is shared, not copied.
// Cyclic graphs (which torch never writes) are rejected as DataLoss. Extra bytes after the last
// legacy storage or after data.pkl's STOP are ignored, as torch.load ignores them.
#ifndef FACTLENS_ANALYSIS_TORCH_CHECKPOINT_H_
#define FACTLENS_ANALYSIS_TORCH_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "analysis/safetensors.h"

namespace factlens {

// A value of the unpickled object graph. Nothing is ever executed: GLOBALs are recorded by name.
struct PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kBytes,
    kList,
    kTuple,
    kDict,
    kTensor,
    kObject
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double floating = 0;
  std::string string;  // kString (UTF-8) / kBytes; kObject: class name "module.Name"
  std::vector<std::shared_ptr<const PickleValue>>
      items;  // kList, kTuple; kObject: constructor args
  // kDict (insertion order; OrderedDict too); kObject: its state when BUILD gave a dict
  // (argparse.Namespace's __dict__). Repeated int keys and str keys (up to 256 bytes) replace the
  // earlier value in place, as in Python; other keys are kept as they come.
  std::vector<std::pair<std::shared_ptr<const PickleValue>, std::shared_ptr<const PickleValue>>>
      entries;
  // kTensor (offset/stride in elements of `dtype`).
  struct TensorRef {
    std::string storage_key;
    DType dtype = DType::kF32;
    int64_t storage_offset = 0;
    std::vector<int64_t> shape, stride;
  } tensor;
  // Lookup in a kDict or in a kObject's state by string key; nullptr if absent or not such a kind.
  const PickleValue* Get(absl::string_view key) const;
};

// Where one storage's raw little-endian bytes lie in the file: [begin, end), end - begin ==
// numel × DTypeSize(dtype).
struct TorchStorage {
  DType dtype = DType::kF32;
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel = 0;
};

struct TorchCheckpoint {
  std::shared_ptr<const PickleValue> root;
  std::map<std::string, TorchStorage> storages;  // by storage key
  bool zip_format = false;
};

// Limits of the parser (beyond them: Unimplemented, naming the offset).
inline constexpr int kMaxPickleDepth = 100;             // nesting depth of the object graph
inline constexpr size_t kMaxPickleValues = 1 << 22;     // values created per file
inline constexpr size_t kMaxPickleMemo = 1 << 20;       // memo entries per pickle
inline constexpr uint64_t kMaxPickleString = 1u << 28;  // bytes of one str/bytes value
inline constexpr size_t kMaxPickleGlobalName = 256;     // bytes of a GLOBAL's module or name
inline constexpr size_t kMaxTensorDims = 64;            // dims of one tensor
inline constexpr size_t kMaxTorchStorageKey = 256;      // bytes of a storage key (torch: decimal)
inline constexpr size_t kMaxZipEntries = 1 << 20;       // entries of the zip central directory

// Parses the complete bytes of a torch.save file (legacy 5-pickle container or zip container).
// Errors: DataLoss for truncated/corrupt/inconsistent bytes, Unimplemented for
// valid-but-unsupported content (an opcode outside the subset, a compressed zip entry, an unknown
// storage type used by a tensor, a limit above exceeded), each message naming the byte offset ("at
// offset 1234") and what was found. Bounded: limits on nesting depth, memo size, element counts,
// string lengths; never allocates more than O(file size) plus a constant; never executes anything.
// Tensors guaranteed in-bounds: storage_offset + Σ (shape_i−1)·stride_i < storage numel for every
// tensor reachable from root, counting the storage in elements of the tensor's dtype (the same
// unless _rebuild_tensor_v3 gave a dtype over an untyped storage); checked, DataLoss otherwise;
// empty tensors ok. Strides are non-negative. Every such tensor's storage_key is in `storages`.
// Pure function; thread-safe.
absl::StatusOr<TorchCheckpoint> ParseTorchCheckpoint(absl::string_view file);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TORCH_CHECKPOINT_H_
