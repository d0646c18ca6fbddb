// The torch.save parser: the fairseq fixture in both containers, generated variants
// (tests/data/torch-checkpoint/make_checkpoints.py: every dtype, views, shared storages, protocol
// 4, zip64, unknown classes), and damage of every kind — each an error naming an offset, never a
// crash.
#include "analysis/torch_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/file_util.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::testing::HasSubstr;
using Kind = PickleValue::Kind;

std::string ReadData(const std::string& relative) {
  const std::string bytes = testing::ReadFileToString(testing::SourcePath(relative));
  EXPECT_FALSE(bytes.empty()) << "cannot read " << relative;
  return bytes;
}

const char kFairseqDir[] = "tests/data/fairseq-reference/baevski-tiny/";
const char kGeneratedDir[] = "tests/data/torch-checkpoint/";

std::string Generated(const std::string& name) { return ReadData(kGeneratedDir + name); }

// The elements of a tensor in row-major order, as raw bytes.
std::string Gather(absl::string_view file, const TorchCheckpoint& checkpoint,
                   const PickleValue::TensorRef& ref) {
  const TorchStorage& storage = checkpoint.storages.at(ref.storage_key);
  const size_t element = DTypeSize(ref.dtype);
  int64_t numel = 1;
  for (int64_t d : ref.shape) numel *= d;
  std::string out;
  std::vector<int64_t> index(ref.shape.size(), 0);
  for (int64_t n = 0; n < numel; ++n) {
    int64_t at = ref.storage_offset;
    for (size_t i = 0; i < index.size(); ++i) at += index[i] * ref.stride[i];
    out.append(file.data() + storage.begin + at * element, element);
    for (size_t i = index.size(); i-- > 0;) {
      if (++index[i] < ref.shape[i]) break;
      index[i] = 0;
    }
  }
  return out;
}

template <typename T>
std::vector<T> Elements(absl::string_view file, const TorchCheckpoint& checkpoint,
                        const PickleValue& tensor) {
  EXPECT_EQ(tensor.kind, Kind::kTensor);
  const std::string bytes = Gather(file, checkpoint, tensor.tensor);
  EXPECT_EQ(bytes.size() % sizeof(T), 0u);
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

float HalfToFloat(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  float v = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -24)
                          : std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  return (h & 0x8000) ? -v : v;
}

// Deep equality of two parsed graphs; tensors compare by dtype, geometry and element bytes (their
// storage keys differ between containers).
void ExpectSame(const PickleValue& a, absl::string_view file_a, const TorchCheckpoint& ca,
                const PickleValue& b, absl::string_view file_b, const TorchCheckpoint& cb,
                const std::string& path) {
  ASSERT_EQ(a.kind, b.kind) << path;
  EXPECT_EQ(a.boolean, b.boolean) << path;
  EXPECT_EQ(a.integer, b.integer) << path;
  EXPECT_EQ(a.floating, b.floating) << path;
  EXPECT_EQ(a.string, b.string) << path;
  ASSERT_EQ(a.items.size(), b.items.size()) << path;
  ASSERT_EQ(a.entries.size(), b.entries.size()) << path;
  if (a.kind == Kind::kTensor) {
    EXPECT_EQ(a.tensor.dtype, b.tensor.dtype) << path;
    EXPECT_EQ(a.tensor.shape, b.tensor.shape) << path;
    EXPECT_EQ(a.tensor.stride, b.tensor.stride) << path;
    EXPECT_EQ(a.tensor.storage_offset, b.tensor.storage_offset) << path;
    EXPECT_EQ(Gather(file_a, ca, a.tensor), Gather(file_b, cb, b.tensor)) << path;
  }
  for (size_t i = 0; i < a.items.size(); ++i) {
    ExpectSame(*a.items[i], file_a, ca, *b.items[i], file_b, cb, absl::StrCat(path, "[", i, "]"));
  }
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const std::string key = a.entries[i].first->kind == Kind::kString ? a.entries[i].first->string
                                                                      : absl::StrCat("#", i);
    ExpectSame(*a.entries[i].first, file_a, ca, *b.entries[i].first, file_b, cb,
               absl::StrCat(path, ".key(", key, ")"));
    ExpectSame(*a.entries[i].second, file_a, ca, *b.entries[i].second, file_b, cb,
               absl::StrCat(path, ".", key));
  }
}

// Every parse failure must be DataLoss or Unimplemented and name an offset.
void ExpectCleanError(const absl::Status& status, const std::string& context) {
  EXPECT_FALSE(status.ok()) << context;
  EXPECT_TRUE(status.code() == absl::StatusCode::kDataLoss ||
              status.code() == absl::StatusCode::kUnimplemented)
      << context << ": " << status;
  EXPECT_THAT(status.message(), HasSubstr("at offset ")) << context;
}

// ------------------------------------------------------------------------------------------------
// The fairseq fixture.

TEST(TorchCheckpointTest, FairseqFixtureLegacyAndZipAgree) {
  const std::string legacy_file = ReadData(absl::StrCat(kFairseqDir, "model.pt"));
  const std::string zip_file = ReadData(absl::StrCat(kFairseqDir, "model-zipformat.pt"));
  absl::StatusOr<TorchCheckpoint> legacy = ParseTorchCheckpoint(legacy_file);
  absl::StatusOr<TorchCheckpoint> zip = ParseTorchCheckpoint(zip_file);
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  ASSERT_TRUE(zip.ok()) << zip.status();
  EXPECT_FALSE(legacy->zip_format);
  EXPECT_TRUE(zip->zip_format);
  EXPECT_EQ(legacy->storages.size(), zip->storages.size());
  ExpectSame(*legacy->root, legacy_file, *legacy, *zip->root, zip_file, *zip, "root");

  for (const TorchCheckpoint* checkpoint : {&*legacy, &*zip}) {
    const absl::string_view file = checkpoint == &*legacy ? legacy_file : zip_file;
    const PickleValue& root = *checkpoint->root;
    ASSERT_EQ(root.kind, Kind::kDict);
    const PickleValue* model = root.Get("model");
    ASSERT_NE(model, nullptr);
    ASSERT_EQ(model->kind, Kind::kDict);
    EXPECT_EQ(model->entries.size(), 65u);
    for (const auto& [key, value] : model->entries) {
      ASSERT_EQ(key->kind, Kind::kString);
      ASSERT_EQ(value->kind, Kind::kTensor) << key->string;
    }
    const PickleValue* version = model->Get("decoder.version");
    ASSERT_NE(version, nullptr);
    EXPECT_EQ(version->tensor.dtype, DType::kF32);
    EXPECT_EQ(Elements<float>(file, *checkpoint, *version), std::vector<float>{3.0f});
    const PickleValue* sm_version = model->Get("decoder.adaptive_softmax.version");
    ASSERT_NE(sm_version, nullptr);
    EXPECT_EQ(sm_version->tensor.dtype, DType::kI64);
    EXPECT_EQ(Elements<int64_t>(file, *checkpoint, *sm_version), std::vector<int64_t>{1});
    const PickleValue* embed = model->Get("decoder.embed_tokens.embeddings.0.0.weight");
    ASSERT_NE(embed, nullptr);
    EXPECT_EQ(embed->tensor.shape, (std::vector<int64_t>{100, 32}));
    EXPECT_EQ(embed->tensor.stride, (std::vector<int64_t>{32, 1}));
    const std::vector<float> e = Elements<float>(file, *checkpoint, *embed);
    ASSERT_EQ(e.size(), 3200u);
    EXPECT_FLOAT_EQ(e[0], -0.05004407837986946f);
    EXPECT_FLOAT_EQ(e[1], -0.16393810510635376f);
    double sum = 0;
    for (float x : e) sum += x;
    EXPECT_NEAR(sum, 2.6079150529694743, 1e-4);

    // Tied weights: one storage under several keys.
    auto key_of = [&](const char* name) {
      const PickleValue* t = model->Get(name);
      return t == nullptr ? std::string("<missing>") : t->tensor.storage_key;
    };
    EXPECT_EQ(key_of("decoder.embed_tokens.embeddings.0.0.weight"),
              key_of("decoder.adaptive_softmax.head.word_proj.weight"));
    EXPECT_EQ(key_of("decoder.embed_tokens.embeddings.1.0.weight"),
              key_of("decoder.adaptive_softmax.tail.0.2.weight"));
    EXPECT_EQ(key_of("decoder.embed_tokens.embeddings.1.1.weight"),
              key_of("decoder.adaptive_softmax.tail.0.0.weight"));
    EXPECT_EQ(key_of("decoder.embed_tokens.embeddings.2.1.weight"),
              key_of("decoder.adaptive_softmax.tail.1.0.weight"));
    EXPECT_NE(key_of("decoder.embed_tokens.embeddings.0.0.weight"),
              key_of("decoder.embed_tokens.embeddings.0.1.weight"));

    // args: an argparse.Namespace whose __dict__ came through BUILD.
    const PickleValue* args = root.Get("args");
    ASSERT_NE(args, nullptr);
    EXPECT_EQ(args->kind, Kind::kObject);
    EXPECT_EQ(args->string, "argparse.Namespace");
    ASSERT_NE(args->Get("decoder_layers"), nullptr);
    EXPECT_EQ(args->Get("decoder_layers")->kind, Kind::kInt);
    EXPECT_EQ(args->Get("decoder_layers")->integer, 3);
    EXPECT_EQ(args->Get("decoder_embed_dim")->integer, 32);
    EXPECT_EQ(args->Get("decoder_attention_heads")->integer, 4);
    EXPECT_EQ(args->Get("adaptive_softmax_cutoff")->kind, Kind::kString);
    EXPECT_EQ(args->Get("adaptive_softmax_cutoff")->string, "100,300");
    EXPECT_EQ(args->Get("arch")->string, "transformer_lm_wiki103");
    EXPECT_EQ(args->Get("tie_adaptive_weights")->kind, Kind::kBool);
    EXPECT_TRUE(args->Get("tie_adaptive_weights")->boolean);
    EXPECT_EQ(args->Get("adaptive_softmax_dropout")->kind, Kind::kFloat);
    EXPECT_DOUBLE_EQ(args->Get("adaptive_softmax_dropout")->floating, 0.2);
    EXPECT_EQ(args->Get("no_such_field"), nullptr);
    EXPECT_EQ(root.Get("last_optimizer_state")->kind, Kind::kNone);
    EXPECT_EQ(root.Get("optimizer_history")->kind, Kind::kList);
  }
}

TEST(TorchCheckpointTest, OtherFairseqFixturesParse) {
  for (const char* dir :
       {"baevski-4band", "baevski-tiny-final-norm", "baevski-tiny-fp16", "baevski-tiny-inproj"}) {
    const std::string path = absl::StrCat("tests/data/fairseq-reference/", dir, "/model.pt");
    const std::string file = testing::ReadFileToString(testing::SourcePath(path));
    if (file.empty()) continue;  // optional fixtures
    absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(file);
    ASSERT_TRUE(parsed.ok()) << path << ": " << parsed.status();
    const PickleValue* model = parsed->root->Get("model");
    ASSERT_NE(model, nullptr) << path;
    EXPECT_GT(model->entries.size(), 10u) << path;
  }
}

// ------------------------------------------------------------------------------------------------
// Generated variants.

TEST(TorchCheckpointTest, MixedCheckpointAgreesAcrossContainersAndProtocols) {
  const std::string reference_file = Generated("mixed_legacy.pt");
  absl::StatusOr<TorchCheckpoint> reference = ParseTorchCheckpoint(reference_file);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_FALSE(reference->zip_format);
  for (const char* name :
       {"mixed_zip.pt", "mixed_proto4_legacy.pt", "mixed_proto4_zip.pt", "mixed_zip64.pt"}) {
    const std::string file = Generated(name);
    absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(file);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.status();
    EXPECT_EQ(parsed->zip_format, absl::StrContains(name, "zip")) << name;
    EXPECT_EQ(parsed->storages.size(), reference->storages.size()) << name;
    ExpectSame(*reference->root, reference_file, *reference, *parsed->root, file, *parsed,
               absl::StrCat(name, ":root"));
  }
}

TEST(TorchCheckpointTest, MixedCheckpointContents) {
  for (const char* name : {"mixed_legacy.pt", "mixed_zip.pt", "mixed_proto4_zip.pt"}) {
    SCOPED_TRACE(name);
    const std::string file = Generated(name);
    absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(file);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    const PickleValue& root = *parsed->root;
    const PickleValue* model = root.Get("model");
    ASSERT_NE(model, nullptr);
    auto tensor = [&](const char* key) -> const PickleValue& {
      const PickleValue* t = model->Get(key);
      EXPECT_NE(t, nullptr) << key;
      static const PickleValue kEmpty;
      return t == nullptr ? kEmpty : *t;
    };
    const PickleValue& f32 = tensor("f32");
    EXPECT_EQ(f32.tensor.dtype, DType::kF32);
    EXPECT_EQ(Elements<float>(file, *parsed, f32),
              (std::vector<float>{-1, -0.75, -0.5, -0.25, 0, 0.25}));
    std::vector<float> f16;
    for (uint16_t h : Elements<uint16_t>(file, *parsed, tensor("f16"))) {
      f16.push_back(HalfToFloat(h));
    }
    EXPECT_EQ(tensor("f16").tensor.dtype, DType::kF16);
    EXPECT_EQ(f16, (std::vector<float>{-1, -0.5, 0, 0.5, 1}));
    EXPECT_EQ(tensor("bf16").tensor.dtype, DType::kBF16);
    EXPECT_EQ(Elements<uint16_t>(file, *parsed, tensor("bf16")),
              (std::vector<uint16_t>{0xbf80, 0xbf40, 0xbf00, 0xbe80}));  // -1 -0.75 -0.5 -0.25
    EXPECT_EQ(tensor("f64").tensor.dtype, DType::kF64);
    EXPECT_DOUBLE_EQ(Elements<double>(file, *parsed, tensor("f64"))[1], -1.0 + 1.0 / 3);
    EXPECT_EQ(tensor("i64").tensor.dtype, DType::kI64);
    EXPECT_EQ(Elements<int64_t>(file, *parsed, tensor("i64")),
              (std::vector<int64_t>{-(int64_t{1} << 40), 7}));
    EXPECT_EQ(tensor("i32").tensor.dtype, DType::kI32);
    EXPECT_EQ(Elements<int32_t>(file, *parsed, tensor("i32")), (std::vector<int32_t>{-5, 1 << 30}));
    EXPECT_EQ(tensor("i16").tensor.dtype, DType::kI16);
    EXPECT_EQ(Elements<int16_t>(file, *parsed, tensor("i16")), (std::vector<int16_t>{-300, 300}));
    EXPECT_EQ(tensor("i8").tensor.dtype, DType::kI8);
    EXPECT_EQ(Elements<int8_t>(file, *parsed, tensor("i8")), (std::vector<int8_t>{-100, 100}));
    EXPECT_EQ(tensor("u8").tensor.dtype, DType::kU8);
    EXPECT_EQ(Elements<uint8_t>(file, *parsed, tensor("u8")), (std::vector<uint8_t>{0, 255, 7}));
    EXPECT_EQ(tensor("bool").tensor.dtype, DType::kBool);
    EXPECT_EQ(Elements<uint8_t>(file, *parsed, tensor("bool")), (std::vector<uint8_t>{1, 0, 1}));

    // Views share f32's storage.
    const PickleValue& t = tensor("f32_t");
    EXPECT_EQ(t.tensor.storage_key, f32.tensor.storage_key);
    EXPECT_EQ(t.tensor.shape, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(t.tensor.stride, (std::vector<int64_t>{1, 3}));
    EXPECT_EQ(Elements<float>(file, *parsed, t),
              (std::vector<float>{-1, -0.25, -0.75, 0, -0.5, 0.25}));
    const PickleValue& row = tensor("f32_row1");
    EXPECT_EQ(row.tensor.storage_key, f32.tensor.storage_key);
    EXPECT_EQ(row.tensor.storage_offset, 3);
    EXPECT_EQ(Elements<float>(file, *parsed, row), (std::vector<float>{-0.25, 0, 0.25}));
    EXPECT_EQ(tensor("f32_tied").tensor.storage_key, f32.tensor.storage_key);
    EXPECT_EQ(tensor("scalar").tensor.shape, std::vector<int64_t>{});
    EXPECT_EQ(Elements<float>(file, *parsed, tensor("scalar")), std::vector<float>{3.5f});
    EXPECT_EQ(tensor("empty").tensor.shape, (std::vector<int64_t>{0, 4}));
    EXPECT_TRUE(Elements<float>(file, *parsed, tensor("empty")).empty());
    EXPECT_EQ(tensor("expanded").tensor.stride, (std::vector<int64_t>{0, 1}));
    EXPECT_EQ(Elements<float>(file, *parsed, tensor("expanded")).size(), 12u);
    EXPECT_EQ(Elements<float>(file, *parsed, tensor("param")), (std::vector<float>{-1, 1, 3, 5}));
    EXPECT_EQ(parsed->storages.at(f32.tensor.storage_key).numel, 6);

    const PickleValue* args = root.Get("args");
    ASSERT_NE(args, nullptr);
    EXPECT_EQ(args->string, "argparse.Namespace");
    EXPECT_EQ(args->Get("decoder_layers")->integer, 2);
    EXPECT_EQ(args->Get("adaptive_softmax_cutoff")->string, "10,20");
    ASSERT_EQ(args->Get("lr")->kind, Kind::kList);
    EXPECT_EQ(args->Get("lr")->items.at(0)->floating, 0.25);
    EXPECT_TRUE(args->Get("flag")->boolean);
    EXPECT_EQ(args->Get("nothing")->kind, Kind::kNone);
    EXPECT_EQ(args->Get("name")->string, "caf\xc3\xa9 \xe2\x98\x83");
    EXPECT_EQ(args->Get("ratio")->floating, 0.5);
    EXPECT_EQ(args->Get("big")->integer, int64_t{1} << 62);
    EXPECT_EQ(args->Get("most_negative")->integer, std::numeric_limits<int64_t>::min());
    ASSERT_EQ(args->Get("shape")->kind, Kind::kTuple);
    EXPECT_EQ(args->Get("shape")->items.at(1)->integer, 2);

    // Unknown classes become placeholders that keep their state, tensors included.
    const PickleValue* history = root.Get("optimizer_history");
    ASSERT_NE(history, nullptr);
    ASSERT_EQ(history->items.size(), 2u);
    const PickleValue* thing = history->items[0]->Get("thing");
    ASSERT_NE(thing, nullptr);
    EXPECT_EQ(thing->kind, Kind::kObject);
    EXPECT_EQ(thing->string, "__main__.Thing");
    EXPECT_EQ(thing->Get("note")->string, "opaque");
    EXPECT_EQ(Elements<float>(file, *parsed, *thing->Get("weight")), (std::vector<float>{9, 10}));
    const PickleValue* ids = history->items[0]->Get("ids");
    ASSERT_NE(ids, nullptr);
    EXPECT_EQ(ids->string, "builtins.set");
    std::vector<int64_t> id_values;
    for (const auto& item : ids->items) id_values.push_back(item->integer);
    std::sort(id_values.begin(), id_values.end());
    EXPECT_EQ(id_values, (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(history->items[1]->string, "builtins.frozenset");
    ASSERT_EQ(history->items[1]->items.size(), 1u);
    EXPECT_EQ(history->items[1]->items[0]->integer, 4);

    const PickleValue* extra = root.Get("extra_state");
    ASSERT_NE(extra, nullptr);
    EXPECT_EQ(extra->Get("raw")->kind, Kind::kBytes);
    EXPECT_EQ(extra->Get("raw")->string, std::string("\x00\xff"
                                                     "ab",
                                                     4));
    bool found_int_key = false;
    for (const auto& [k, v] : extra->entries) {
      if (k->kind == Kind::kInt && k->integer == 7) {
        found_int_key = true;
        EXPECT_EQ(v->string, "int key");
      }
    }
    EXPECT_TRUE(found_int_key);
    const PickleValue* nested = extra->Get("nested");
    ASSERT_NE(nested, nullptr);
    EXPECT_EQ(nested->items.at(0)->items.at(1)->items.at(1)->kind, Kind::kTuple);
  }
}

TEST(TorchCheckpointTest, Fp16FairseqVariants) {
  const std::string legacy_file = Generated("fairseq_fp16_legacy.pt");
  const std::string zip_file = Generated("fairseq_fp16_zip.pt");
  absl::StatusOr<TorchCheckpoint> legacy = ParseTorchCheckpoint(legacy_file);
  absl::StatusOr<TorchCheckpoint> zip = ParseTorchCheckpoint(zip_file);
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  ASSERT_TRUE(zip.ok()) << zip.status();
  ExpectSame(*legacy->root, legacy_file, *legacy, *zip->root, zip_file, *zip, "root");
  const PickleValue* model = legacy->root->Get("model");
  ASSERT_NE(model, nullptr);
  const PickleValue* embed = model->Get("decoder.embed_tokens.embeddings.0.0.weight");
  const PickleValue* head = model->Get("decoder.adaptive_softmax.head.word_proj.weight");
  ASSERT_NE(embed, nullptr);
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(embed->tensor.dtype, DType::kF16);
  EXPECT_EQ(embed->tensor.storage_key, head->tensor.storage_key);
  EXPECT_EQ(legacy->storages.at(embed->tensor.storage_key).dtype, DType::kF16);
  EXPECT_EQ(legacy->storages.at(embed->tensor.storage_key).numel, 48);
  const std::vector<uint16_t> e = Elements<uint16_t>(legacy_file, *legacy, *embed);
  EXPECT_FLOAT_EQ(HalfToFloat(e[0]), -1.1259765625f);
  EXPECT_FLOAT_EQ(HalfToFloat(e[1]), -1.15234375f);
  EXPECT_EQ(
      HalfToFloat(Elements<uint16_t>(legacy_file, *legacy, *model->Get("decoder.version"))[0]),
      3.0f);
  EXPECT_EQ(model->Get("decoder.adaptive_softmax.version")->tensor.dtype, DType::kI64);
  EXPECT_TRUE(legacy->root->Get("args")->Get("fp16")->boolean);
}

TEST(TorchCheckpointTest, UnsupportedContentIsUnimplemented) {
  absl::Status uint16 = ParseTorchCheckpoint(Generated("uint16_zip.pt")).status();
  EXPECT_EQ(uint16.code(), absl::StatusCode::kUnimplemented) << uint16;
  EXPECT_THAT(uint16.message(), HasSubstr("torch.uint16"));
  EXPECT_THAT(uint16.message(), HasSubstr("at offset "));
  absl::Status deflated = ParseTorchCheckpoint(Generated("mixed_deflated.pt")).status();
  EXPECT_EQ(deflated.code(), absl::StatusCode::kUnimplemented) << deflated;
  EXPECT_THAT(deflated.message(), HasSubstr("compressed"));
  EXPECT_THAT(deflated.message(), HasSubstr("at offset "));
}

// ------------------------------------------------------------------------------------------------
// Damage.

TEST(TorchCheckpointTest, TruncationAtEveryOffsetIsAnError) {
  for (const char* name : {"fairseq_fp16_legacy.pt", "mixed_legacy.pt", "mixed_proto4_legacy.pt",
                           "mixed_zip.pt", "mixed_zip64.pt"}) {
    const std::string file = Generated(name);
    ASSERT_TRUE(ParseTorchCheckpoint(file).ok()) << name;
    for (size_t n = 0; n < file.size(); ++n) {
      const absl::Status status =
          ParseTorchCheckpoint(absl::string_view(file).substr(0, n)).status();
      ExpectCleanError(status, absl::StrCat(name, " cut to ", n, " bytes"));
      if (status.ok()) break;
    }
  }
}

TEST(TorchCheckpointTest, EveryFlippedByteIsSafe) {
  // Flipping any single byte either leaves a valid file (tensor data, float bits, ...) or gives a
  // clean error naming an offset.
  for (const char* name : {"fairseq_fp16_legacy.pt", "fairseq_fp16_zip.pt"}) {
    const std::string original = Generated(name);
    int errors = 0;
    for (size_t i = 0; i < original.size(); ++i) {
      std::string file = original;
      file[i] = static_cast<char>(file[i] ^ 0xff);
      absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(file);
      if (parsed.ok()) continue;
      ++errors;
      ExpectCleanError(parsed.status(), absl::StrCat(name, " flipped at ", i));
    }
    EXPECT_GT(errors, 100) << name;
  }
}

TEST(TorchCheckpointTest, CorruptedBytesNameTheirOffset) {
  const std::string legacy = Generated("mixed_legacy.pt");
  {
    std::string file = legacy;
    file[6] ^= 0x01;  // inside the magic number
    const absl::Status status = ParseTorchCheckpoint(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("magic number at offset 0"));
  }
  {
    // An opcode outside the subset (INST) in place of the GLOBAL of argparse.Namespace.
    std::string file = legacy;
    const size_t at = file.find("cargparse\nNamespace\n");
    ASSERT_NE(at, std::string::npos);
    file[at] = 'i';
    const absl::Status status = ParseTorchCheckpoint(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
    EXPECT_THAT(status.message(),
                HasSubstr(absl::StrCat("INST) is outside the supported subset at offset ", at)));
  }
  {
    // A storage's element count that disagrees with its persistent id.
    absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(legacy);
    ASSERT_TRUE(parsed.ok());
    uint64_t first = legacy.size();
    for (const auto& [key, storage] : parsed->storages) first = std::min(first, storage.begin);
    std::string file = legacy;
    file[first - 8] = static_cast<char>(file[first - 8] + 1);
    const absl::Status status = ParseTorchCheckpoint(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("at offset ", first - 8)));
  }
  const std::string zip = Generated("mixed_zip.pt");
  {
    // A byte of data.pkl: the CRC-32 catches what the pickle would not.
    std::string file = zip;
    const size_t at = file.find("adaptive_softmax_cutoff");
    ASSERT_NE(at, std::string::npos);
    file[at] = 'A';
    const absl::Status status = ParseTorchCheckpoint(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("CRC-32 at offset "));
  }
  {
    std::string file = zip;
    const size_t at = file.rfind("PK\x05\x06");
    ASSERT_NE(at, std::string::npos);
    file[at + 3] = 0x07;
    const absl::Status status = ParseTorchCheckpoint(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("end-of-central-directory"));
  }
}

TEST(TorchCheckpointTest, NotACheckpoint) {
  ExpectCleanError(ParseTorchCheckpoint("").status(), "empty");
  ExpectCleanError(ParseTorchCheckpoint("hello world").status(), "text");
  ExpectCleanError(ParseTorchCheckpoint("PK\x03\x04").status(), "zip stub");
  ExpectCleanError(ParseTorchCheckpoint("\x80\x02K\x01.").status(), "plain pickle");
  std::string tar(512, '\0');
  tar.replace(257, 5, "ustar");
  EXPECT_EQ(ParseTorchCheckpoint(tar).status().code(), absl::StatusCode::kUnimplemented);
}

// ------------------------------------------------------------------------------------------------
// Hand-made legacy files.

std::string U32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}
std::string I64(int64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i)
    s[i] = static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
  return s;
}
std::string Str(const std::string& s) { return "X" + U32(static_cast<uint32_t>(s.size())) + s; }
std::string Int(int64_t v) { return "\x8a\x08" + I64(v); }  // LONG1 of 8 bytes
std::string Global(const std::string& module, const std::string& name) {
  return "c" + module + "\n" + name + "\n";
}
std::string Tuple(const std::vector<int64_t>& values) {
  std::string s = "(";
  for (int64_t v : values) s += Int(v);
  return s + "t";
}
std::string StoragePid(const std::string& cls, const std::string& key, int64_t numel) {
  return "(" + Str("storage") + Global("torch", cls) + Str(key) + Str("cpu") + Int(numel) + "Nt" +
         "Q";
}
std::string TensorPickle(const std::string& cls, const std::string& key, int64_t numel,
                         int64_t offset, const std::vector<int64_t>& shape,
                         const std::vector<int64_t>& stride) {
  return Global("torch._utils", "_rebuild_tensor_v2") + "(" + StoragePid(cls, key, numel) +
         Int(offset) + Tuple(shape) + Tuple(stride) + "\x89" + "}" + "tR";
}

struct RawStorage {
  std::string key;
  int64_t count;
  size_t element_size;
};

// A legacy container around `object` (a pickle body without PROTO and STOP).
std::string LegacyFile(const std::string& object, const std::vector<RawStorage>& storages) {
  std::string file =
      "\x80\x02\x8a\x0a" + std::string("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19") + ".";
  file += std::string("\x80\x02M\xe9\x03.");
  file += "\x80\x02}" + Str("little_endian") + "\x88s.";
  file += "\x80\x02" + object + ".";
  file += "\x80\x02]";
  for (const RawStorage& s : storages) file += Str(s.key) + "a";
  file += ".";
  for (const RawStorage& s : storages) {
    file += I64(s.count) + std::string(static_cast<size_t>(s.count) * s.element_size, '\x01');
  }
  return file;
}

absl::Status ParseObject(const std::string& object, const std::vector<RawStorage>& storages = {}) {
  return ParseTorchCheckpoint(LegacyFile(object, storages)).status();
}

TEST(TorchCheckpointTest, HandMadeTensorViewsAreBoundsChecked) {
  const std::vector<RawStorage> six = {{"k", 6, 4}};
  EXPECT_TRUE(ParseObject(TensorPickle("FloatStorage", "k", 6, 0, {2, 3}, {3, 1}), six).ok());
  EXPECT_TRUE(ParseObject(TensorPickle("FloatStorage", "k", 6, 3, {3}, {1}), six).ok());
  EXPECT_TRUE(ParseObject(TensorPickle("FloatStorage", "k", 6, 5, {}, {}), six).ok());
  EXPECT_TRUE(ParseObject(TensorPickle("FloatStorage", "k", 6, 0, {100, 6}, {0, 1}), six).ok());
  EXPECT_TRUE(ParseObject(TensorPickle("FloatStorage", "k", 6, 1000, {0, 5}, {5, 1}), six).ok());
  struct Case {
    int64_t offset;
    std::vector<int64_t> shape, stride;
  };
  for (const Case& c : std::vector<Case>{{1, {2, 3}, {3, 1}},
                                         {0, {2, 3}, {4, 1}},
                                         {6, {}, {}},
                                         {0, {7}, {1}},
                                         {0, {2, 2}, {int64_t{1} << 62, 1}},
                                         {std::numeric_limits<int64_t>::max(), {1}, {1}},
                                         {1, {3, 2}, {std::numeric_limits<int64_t>::max(), 1}}}) {
    const absl::Status status =
        ParseObject(TensorPickle("FloatStorage", "k", 6, c.offset, c.shape, c.stride), six);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("reads past the end of storage 'k'"));
    EXPECT_THAT(status.message(), HasSubstr("at offset "));
  }
  // Negative strides and offsets are not torch's.
  EXPECT_EQ(ParseObject(TensorPickle("FloatStorage", "k", 6, 0, {2}, {-1}), six).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject(TensorPickle("FloatStorage", "k", 6, -1, {2}, {1}), six).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject(TensorPickle("FloatStorage", "k", 6, 0, {2, 3}, {1}), six).code(),
            absl::StatusCode::kDataLoss);
}

TEST(TorchCheckpointTest, HandMadeStorageListMistakes) {
  const std::string tensor = TensorPickle("FloatStorage", "k", 6, 0, {6}, {1});
  // Listed but never referenced: its element size is unknown.
  absl::Status status = ParseObject(tensor, {{"k", 6, 4}, {"other", 2, 4}});
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("'other' is listed but no persistent id"));
  // Referenced but not listed.
  status = ParseObject(tensor, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("not in the storage list"));
  // Count disagreeing with the persistent id; listed twice.
  EXPECT_EQ(ParseObject(tensor, {{"k", 5, 4}}).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject(tensor, {{"k", 6, 4}, {"k", 6, 4}}).code(), absl::StatusCode::kDataLoss);
  // The same key as two storage types.
  const std::string both = "(" + tensor + TensorPickle("HalfStorage", "k", 6, 0, {6}, {1}) + "l";
  EXPECT_EQ(ParseObject(both, {{"k", 6, 4}}).code(), absl::StatusCode::kDataLoss);
  // Trailing bytes after the last storage are ignored, like torch.load does.
  EXPECT_TRUE(ParseTorchCheckpoint(LegacyFile(tensor, {{"k", 6, 4}}) + "junk").ok());
}

TEST(TorchCheckpointTest, HandMadeStorageTypes) {
  // A complex storage inside an unknown optimizer object: skipped by its element size, recorded
  // nowhere; the other storage is still found at the right place.
  const std::string object = "(" + Global("torch.optim.sgd", "SGD") + "(" +
                             StoragePid("ComplexFloatStorage", "c", 2) + "tR" +
                             TensorPickle("LongStorage", "l", 1, 0, {1}, {1}) + "l";
  std::string file = LegacyFile(object, {{"c", 2, 8}, {"l", 1, 8}});
  absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->storages.count("c"), 0u);
  ASSERT_EQ(parsed->storages.count("l"), 1u);
  EXPECT_EQ(parsed->storages.at("l").end, file.size());
  EXPECT_EQ(parsed->storages.at("l").dtype, DType::kI64);
  const PickleValue& sgd = *parsed->root->items.at(0);
  EXPECT_EQ(sgd.kind, Kind::kObject);
  EXPECT_EQ(sgd.string, "torch.optim.sgd.SGD");
  ASSERT_EQ(sgd.items.size(), 1u);
  EXPECT_EQ(sgd.items[0]->string, "torch.ComplexFloatStorage");  // the storage placeholder
  EXPECT_EQ(sgd.items[0]->items.at(0)->string, "c");

  // A tensor on a complex storage, and an unknown storage class that must be skipped.
  absl::Status status =
      ParseObject(TensorPickle("ComplexFloatStorage", "c", 2, 0, {2}, {1}), {{"c", 2, 8}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  status = ParseObject("(" + StoragePid("Float8Storage", "f", 2) + "l", {{"f", 2, 1}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_THAT(status.message(), HasSubstr("'torch.Float8Storage'"));
  // _rebuild_tensor_v3: a dtype over an untyped (byte) storage; bounds in the tensor's elements.
  auto v3 = [](int64_t n) {
    return Global("torch._utils", "_rebuild_tensor_v3") + "(" + "(" + Str("storage") +
           Global("torch.storage", "UntypedStorage") + Str("u") + Str("cpu") + Int(8) + "NtQ" +
           Int(0) + Tuple({n}) + Tuple({1}) + "\x89}" + Global("torch", "float32") + "tR";
  };
  parsed = ParseTorchCheckpoint(LegacyFile(v3(2), {{"u", 8, 1}}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->root->tensor.dtype, DType::kF32);
  EXPECT_EQ(parsed->storages.at("u").dtype, DType::kU8);
  EXPECT_EQ(ParseObject(v3(3), {{"u", 8, 1}}).code(), absl::StatusCode::kDataLoss);
}

TEST(TorchCheckpointTest, HandMadeBombsAndBadPickles) {
  // Nesting: 99 levels are fine, 101 are not.
  EXPECT_TRUE(ParseObject(")" + std::string(98, '\x85')).ok());
  absl::Status status = ParseObject(")" + std::string(150, '\x85'));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_THAT(status.message(), HasSubstr("nested deeper than 100"));
  status = ParseObject(std::string(100000, ']') + std::string(99999, 'a'));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  // Shared subtrees are not copied: 2^60 paths through 61 nodes parse at once.
  std::string dag = ")";
  for (int i = 0; i < 60; ++i) dag += std::string("q\x00h\x00\x86", 5);
  absl::StatusOr<TorchCheckpoint> parsed = ParseTorchCheckpoint(LegacyFile(dag, {}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->root->items[0], parsed->root->items[1]);
  // A list inside itself.
  status = ParseObject(std::string("]q\x00h\x00", 5) + "a");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("cycle"));
  // Many MARKs, no STOP content.
  EXPECT_EQ(ParseObject(std::string(100000, '(')).code(), absl::StatusCode::kDataLoss);
  // An int outside int64, a negative LONG4 length, a string past the end.
  status = ParseObject(std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01", 11));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_THAT(status.message(), HasSubstr("outside int64"));
  EXPECT_TRUE(ParseObject(std::string("\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11)).ok());
  EXPECT_EQ(ParseObject("\x8b\xff\xff\xff\xff").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject("X" + U32(1u << 27) + "ab").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject("X" + U32(3) + "\xff\xfe\xfd").code(), absl::StatusCode::kDataLoss);
  // Memo and stack misuse.
  EXPECT_EQ(ParseObject(std::string("h\x05", 2)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject("a").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseObject("N]").code(), absl::StatusCode::kDataLoss);    // two values at STOP
  EXPECT_EQ(ParseObject(")NNs").code(), absl::StatusCode::kDataLoss);  // SETITEM on a tuple
  EXPECT_EQ(ParseObject("N)b").code(), absl::StatusCode::kDataLoss);   // BUILD on None
  // Outside the subset.
  status = ParseObject("P1\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_THAT(status.message(), HasSubstr("PERSID"));
  EXPECT_EQ(ParseObject(Global("os", "system") + "N" + "R").code(),
            absl::StatusCode::kDataLoss);  // REDUCE args must be a tuple
  // Calls of unknown globals are recorded, never executed.
  parsed = ParseTorchCheckpoint(LegacyFile(Global("os", "system") + Str("rm -rf /") + "\x85R", {}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->root->string, "os.system");
  EXPECT_EQ(parsed->root->items.at(0)->string, "rm -rf /");
  // A repeated dict key replaces the value in place.
  parsed = ParseTorchCheckpoint(
      LegacyFile("}(" + Str("a") + Int(1) + Str("b") + Int(2) + Str("a") + Int(3) + "u", {}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->root->entries.size(), 2u);
  EXPECT_EQ(parsed->root->Get("a")->integer, 3);
  EXPECT_EQ(parsed->root->entries[0].first->string, "a");
}

}  // namespace
}  // namespace factlens
