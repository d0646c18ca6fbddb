// Resolving model references (directories, HF cache repo ids) and indexing checkpoint files.
#include "analysis/model_files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/testing.h"

namespace factlens {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

void WriteFile(const fs::path& path, const std::string& contents) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << contents;
}

// Sets an environment variable for one test and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { old_.empty() ? unsetenv(name_) : setenv(name_, old_.c_str(), 1); }

 private:
  const char* name_;
  std::string old_;
};

TEST(ResolveModelDirectoryTest, ExistingDirectoryIsUsedAsIs) {
  const std::string dir = testing::SourcePath("models/gpt2-facts-tiny");
  absl::StatusOr<std::string> resolved = ResolveModelDirectory(dir);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, dir);
}

TEST(ResolveModelDirectoryTest, RepoIdResolvesThroughRefsInHfHome) {
  const testing::ScopedTempDir tmp;
  const fs::path home = tmp.path();
  const fs::path repo = home / "hub" / "models--acme--tiny-gpt2";
  WriteFile(repo / "refs" / "main", "0123abcd\n");
  WriteFile(repo / "refs" / "v2", "ffff0000");
  fs::create_directories(repo / "snapshots" / "0123abcd");
  fs::create_directories(repo / "snapshots" / "ffff0000");
  ScopedEnv hf_home("HF_HOME", home.string());
  ScopedEnv no_hub_cache("HF_HUB_CACHE", "");

  absl::StatusOr<std::string> main = ResolveModelDirectory("acme/tiny-gpt2");
  ASSERT_TRUE(main.ok()) << main.status();
  EXPECT_EQ(*main, (repo / "snapshots" / "0123abcd").string());
  absl::StatusOr<std::string> tag = ResolveModelDirectory("acme/tiny-gpt2@v2");
  ASSERT_TRUE(tag.ok()) << tag.status();
  EXPECT_EQ(*tag, (repo / "snapshots" / "ffff0000").string());
  absl::StatusOr<std::string> commit = ResolveModelDirectory("acme/tiny-gpt2@0123abcd");
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_EQ(*commit, (repo / "snapshots" / "0123abcd").string());
}

TEST(ResolveModelDirectoryTest, HubCacheVariableWinsAndSingleSnapshotNeedsNoRef) {
  const testing::ScopedTempDir tmp;
  const fs::path cache = tmp.path();
  const fs::path snapshot = cache / "models--gpt2" / "snapshots" / "abc";
  fs::create_directories(snapshot);
  ScopedEnv hub_cache("HF_HUB_CACHE", cache.string());
  absl::StatusOr<std::string> resolved = ResolveModelDirectory("gpt2");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, snapshot.string());
}

TEST(ResolveModelDirectoryTest, UnknownModelsAreNotFoundWithWhereItLooked) {
  const testing::ScopedTempDir cache;
  ScopedEnv hub_cache("HF_HUB_CACHE", cache.path());
  const absl::Status missing = ResolveModelDirectory("acme/missing").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("models--acme--missing"));
  for (const char* bad : {"a/b/c", "../x", "/nonexistent/dir", "x@../../etc", "a b"}) {
    EXPECT_EQ(ResolveModelDirectory(bad).status().code(), absl::StatusCode::kNotFound) << bad;
  }
  EXPECT_EQ(ResolveModelDirectory("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointTest, OpensSingleFileCheckpointAndFindsTensors) {
  absl::StatusOr<Checkpoint> checkpoint =
      Checkpoint::Open(testing::SourcePath("tests/data/hf-reference/gpt2-tiny"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<TensorLocation> wte = checkpoint->Find("transformer.wte.weight");
  ASSERT_TRUE(wte.ok()) << wte.status();
  EXPECT_EQ(wte->info.shape, (std::vector<int64_t>{512, 48}));
  EXPECT_EQ(wte->bytes().size(), 512u * 48u * 4u);
  EXPECT_EQ(checkpoint->Find("lm_head.weight").status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointTest, DirectoryWithoutSafetensorsIsNotFound) {
  const testing::ScopedTempDir empty;
  const absl::Status status = Checkpoint::Open(empty.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("model.safetensors"));
}

TEST(CheckpointTest, IndexNamingAMissingShardOrTensorIsAnError) {
  const testing::ScopedTempDir tmp;
  const fs::path dir = tmp.path();
  WriteFile(dir / "model.safetensors.index.json",
            R"({"weight_map":{"a":"model-00001-of-00001.safetensors"}})");
  EXPECT_EQ(Checkpoint::Open(dir.string()).status().code(), absl::StatusCode::kNotFound);
  // The shard exists but does not hold "a".
  std::string shard(8, '\0');
  const std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  shard[0] = static_cast<char>(header.size());
  WriteFile(dir / "model-00001-of-00001.safetensors", shard + header + std::string(4, '\0'));
  const absl::Status status = Checkpoint::Open(dir.string()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("'a'"));
}

}  // namespace
}  // namespace factlens
