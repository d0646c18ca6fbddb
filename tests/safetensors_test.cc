// The safetensors header and index parsers accept valid files and reject every kind of damage with
// an error, never a crash.
#include "analysis/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace factlens {
namespace {

using ::testing::HasSubstr;

// A safetensors file: 8-byte little-endian header length, the header, then `data_bytes` zero bytes.
std::string MakeFile(const std::string& header, size_t data_bytes) {
  std::string file(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) file[i] = static_cast<char>(n & 0xff);
  return file + header + std::string(data_bytes, '\0');
}

absl::Status ParseStatus(const std::string& header, size_t data_bytes) {
  return ParseSafetensorsHeader(MakeFile(header, data_bytes)).status();
}

TEST(SafetensorsHeaderTest, ParsesEntriesMetadataAndOffsets) {
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                             R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},)"
                             R"("idx":{"dtype":"I64","shape":[1],"data_offsets":[32,40]},)"
                             R"("empty":{"dtype":"F16","shape":[0,5],"data_offsets":[40,40]}})";
  absl::StatusOr<SafetensorsHeader> parsed = ParseSafetensorsHeader(MakeFile(header, 40));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->data_offset, 8 + header.size());
  EXPECT_EQ(parsed->metadata.at("format"), "pt");
  ASSERT_EQ(parsed->tensors.size(), 4u);
  const TensorInfo& a = parsed->tensors.at("a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.numel(), 6);
  EXPECT_EQ(parsed->tensors.at("b").dtype, DType::kBF16);
  EXPECT_EQ(parsed->tensors.at("b").begin, 24u);
  EXPECT_EQ(parsed->tensors.at("idx").dtype, DType::kI64);
  EXPECT_EQ(parsed->tensors.at("empty").numel(), 0);
}

TEST(SafetensorsHeaderTest, ScalarHasEmptyShapeAndOneElement) {
  absl::StatusOr<SafetensorsHeader> parsed = ParseSafetensorsHeader(
      MakeFile(R"({"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})", 8));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->tensors.at("s").numel(), 1);
}

TEST(SafetensorsHeaderTest, TruncatedFiles) {
  EXPECT_EQ(ParseSafetensorsHeader("").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseSafetensorsHeader("abc").status().code(), absl::StatusCode::kDataLoss);
  const std::string file =
      MakeFile(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  // Cut inside the header: the declared header length runs past the end.
  absl::Status cut_header = ParseSafetensorsHeader(file.substr(0, 20)).status();
  EXPECT_EQ(cut_header.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(cut_header.message()), HasSubstr("runs past the end of the file"));
  // Cut inside the data: the tensor's offsets run past the end.
  absl::Status cut_data = ParseSafetensorsHeader(file.substr(0, file.size() - 1)).status();
  EXPECT_EQ(cut_data.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(cut_data.message()), HasSubstr("'a'"));
}

TEST(SafetensorsHeaderTest, HeaderLengthBeyondLimitOrFile) {
  std::string file(8, '\xff');  // 2^64 - 1
  EXPECT_EQ(ParseSafetensorsHeader(file + "{}").status().code(), absl::StatusCode::kDataLoss);
  std::string just_over = MakeFile("{}", 0);
  just_over[0] = 3;  // declares 3 header bytes, has 2
  EXPECT_EQ(ParseSafetensorsHeader(just_over).status().code(), absl::StatusCode::kDataLoss);
}

// A header that is not JSON is a damaged file: DATA_LOSS, like every other damage.
TEST(SafetensorsHeaderTest, MalformedJsonIsDataLoss) {
  EXPECT_EQ(ParseStatus("{not json", 0).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus("[1,2]", 0).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4).code(),
            absl::StatusCode::kDataLoss);  // unterminated
}

TEST(SafetensorsHeaderTest, RejectsBadEntries) {
  struct Case {
    std::string header;
    std::string message;
  };
  const Case cases[] = {
      {R"({"a":5})", "not an object"},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "shape"},
      {R"({"a":{"dtype":"F32","shape":[1]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "data_offsets"},
      {R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", "unsupported dtype"},
      {R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "non-negative"},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "non-negative"},
      {R"({"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", "non-negative"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "reversed"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "non-negative"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "need 8"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,40]}})", "past the end"},
      {R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})",
       "larger than the file"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})",
       "overlap"},
      {R"({"__metadata__":{"format":1}})", "__metadata__"},
      {R"({"__metadata__":[]})", "__metadata__"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ParseStatus(c.header, 16);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << c.header << " -> " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.header;
  }
}

TEST(SafetensorsIndexTest, ParsesWeightMap) {
  absl::StatusOr<std::map<std::string, std::string>> index = ParseSafetensorsIndex(
      R"({"metadata":{"total_size":10},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      R"("b":"model-00002-of-00002.safetensors"}})");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->at("a"), "model-00001-of-00002.safetensors");
  EXPECT_EQ(index->at("b"), "model-00002-of-00002.safetensors");
}

TEST(SafetensorsIndexTest, RejectsMalformedIndexes) {
  for (const char* text :
       {"", "{", "[]", R"({"metadata":{}})", R"({"weight_map":[]})", R"({"weight_map":{}})",
        R"({"weight_map":{"a":1}})", R"({"weight_map":{"a":"../secret.safetensors"}})",
        R"({"weight_map":{"a":"/etc/passwd"}})", R"({"weight_map":{"a":".."}})",
        R"({"weight_map":{"a":""}})", R"({"weight_map":{"a":"dir\\x.safetensors"}})"}) {
    EXPECT_EQ(ParseSafetensorsIndex(text).status().code(), absl::StatusCode::kInvalidArgument)
        << text;
  }
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
}

}  // namespace
}  // namespace factlens
