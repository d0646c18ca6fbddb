// Shared helpers for factlens tests: data paths and tensor comparison.
#ifndef FACTLENS_TESTS_TESTING_H_
#define FACTLENS_TESTS_TESTING_H_

#include <ftw.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace factlens::testing {

// Absolute path of a file in the source tree, e.g. SourcePath("models/gpt2-facts-tiny").
inline std::string SourcePath(const std::string& relative) {
  return std::string(FACTLENS_SOURCE_DIR) + "/" + relative;
}

// A fresh, empty directory under $TMPDIR (or /tmp). Tests leave it behind for inspection.
inline std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/factlens-test-XXXXXX";
  return mkdtemp(pattern.data()) != nullptr ? pattern : std::string();
}

// Removes a directory tree. (Not std::filesystem::remove_all: in binaries that link libtorch the
// call binds to libtorch's own copy, built against another libstdc++, and crashes.)
inline void RemoveTree(const std::string& path) {
  nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

// A fresh temporary directory, removed with its contents when the object goes away (in every
// outcome of the test that owns it).
class ScopedTempDir {
 public:
  ScopedTempDir() : path_(MakeTempDir()) {}
  ~ScopedTempDir() {
    if (!path_.empty()) RemoveTree(path_);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_TESTING_H_
